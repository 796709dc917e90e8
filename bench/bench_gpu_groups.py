"""Rank 0's scheduler with ranks of two GPU architectures against ranks of one: cost per event and per pass.

With GPU ranks and CPU ranks in one pilot (issue 25), rank 0 fetches per architecture and gives each job to a
rank of the architecture it was fetched for.  This times the pure scheduler (no MPI, no HTTP) at 1k and 10k
ranks, every rank running a job, on one event cycle (a monitoring report, the job's end, the rank's work request
that makes a ``Fetch(1, arch)``, the answer that assigns the next job) and on one empty pass, with one
architecture (every rank alike, the baseline) and with two (odd ranks GPU, even ranks CPU), side by side in
the same run: each figure is the best of 5 windows of at least 0.1 s, the windows taken in turn.
Not a test: nothing is asserted.

    .venv/bin/python -m bench.bench_gpu_groups [--ranks 1000 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import make_job
from hpcpilot.config import load_config
from hpcpilot.monitor.samples import MonitorReport, TreeSample
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler import (
    Fetch,
    JobEnded,
    JobsFetched,
    RankReady,
    ReportReceived,
    Scheduler,
    SchedulerPolicy,
    WorkRequested,
)
from hpcpilot.states import JobState

GPU, CPU = '{"gpus": [{"vendor": "NVIDIA"}]}', '{"gpus": []}'
CONFIG = load_config(environ={})


class Run:
    """A scheduler whose every rank runs a job, and the next PandaID to hand out."""

    def __init__(self, n_ranks: int, mixed: bool) -> None:
        self.s = Scheduler(list(range(1, n_ranks + 1)), CONFIG, SchedulerPolicy())
        self.next_id = 1
        archs = {r: (GPU if r % 2 else CPU) if mixed else GPU for r in self.s.ranks}
        actions = self.s.handle(0.0, [RankReady(r, True, (), a) for r, a in archs.items()] +
                                [WorkRequested(r) for r in archs])
        while not all(slot.panda_id for slot in self.s.ranks.values()):
            actions = self.s.handle(1.0, self.answers(actions))
        self.rank, self.t = 1, 2.0

    def answers(self, actions: list) -> list:
        out = []
        for fetch in (a for a in actions if isinstance(a, Fetch)):
            jobs = tuple(JobSpec.from_wire(make_job(self.next_id + i, "true")) for i in range(fetch.n))
            self.next_id += fetch.n
            out.append(JobsFetched(jobs, asked=fetch.n, architecture=fetch.architecture))
        return out

    def step(self, kind: str) -> None:
        s, rank, t = self.s, self.rank, self.t
        if kind == "pass":
            s.handle(t, [])
        else:
            panda_id = s.ranks[rank].panda_id
            tree = TreeSample(t, 1000, 1000, 0, 2000, 1.0, 0.1, 1, 1, 0, 0, 0, 0)
            s.handle(t, [ReportReceived(rank, MonitorReport(panda_id, t, tree, None, 0, 1.0, 0.0, 1e9, t, True))])
            s.handle(t, [JobEnded(rank, JobRecord(panda_id, state=JobState.FINISHED))])
            s.handle(t, self.answers(s.handle(t, [WorkRequested(rank)])))
            self.rank = rank % len(s.ranks) + 1
        self.t += 1e-3


def best(run: Run, kind: str, windows: list[float]) -> None:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.1:
        run.step(kind)
        n += 1
    per = (time.perf_counter() - start) / n * (1 if kind == "pass" else 0.25)  # four calls a cycle
    windows.append(per * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    runs = {(n, mixed): Run(n, mixed) for n in args.ranks for mixed in (False, True)}
    figures: dict[tuple[int, bool, str], list[float]] = {}
    for _ in range(5):
        for (n, mixed), run in runs.items():
            for kind in ("event", "pass"):
                best(run, kind, figures.setdefault((n, mixed, kind), []))
    print("| ranks | µs/event one arch | two | ratio | µs/pass one arch | two | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.ranks:
        e1, e2 = min(figures[n, False, "event"]), min(figures[n, True, "event"])
        p1, p2 = min(figures[n, False, "pass"]), min(figures[n, True, "pass"])
        print(f"| {n:,} | {e1:.1f} | {e2:.1f} | {e2 / e1:.2f} | {p1:.2f} | {p2:.2f} | {p2 / p1:.2f} |")


if __name__ == "__main__":
    main()
