"""Rank 0's scheduler at leadership scale: cost per event and per empty pass at 1k, 10k and 100k ranks.

The pure scheduler (``hpcpilot.scheduler``, no MPI, no HTTP) is fed simulated ranks, every one running a
job, and timed on:

* one event through ``Scheduler.handle``: a cycle of four calls with one event each (a monitoring report,
  the job's end, the rank's work request that makes a ``Fetch(1)``, the answer that assigns the new job);
* one empty pass (``handle(now, [])``, which the controller makes at least every 50 ms);
* the start-up: rounds of fetch answers until every rank runs a job, with the default fetch policy.

The "before" column runs the same on the scheduler before the change (``git show
BASELINE_COMMIT:hpcpilot/scheduler.py``, bench/_common.py, loaded as a module beside the current one), in
the same run; where that cannot be loaded it says why.
The 1k figure is the baseline of each column; the targets (issue 14) are 100k/1k <= 2 and <= 100 µs per
event at 100k.  A second table comes from ``bench/scale_es.py`` (the event-service ledger), if present.
Not a test: nothing is asserted.

    .venv/bin/python -m bench.bench_scale [--quick] [--ranks 1000 10000 100000] [--before COMMIT] [--no-before]
        [--no-es]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BASELINE_COMMIT, REPO, make_job, print_table
from hpcpilot import scheduler as current
from hpcpilot.config import load_config
from hpcpilot.monitor.samples import MonitorReport, TreeSample
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.states import JobState

CONFIG = load_config(environ={})
FULL_RANKS = (1_000, 10_000, 100_000)
QUICK_RANKS = (1_000, 10_000)
TARGET_RATIO = 2.0
TARGET_US_AT_100K = 100.0
WINDOW_SECONDS = 0.1  # each window is timed over at least this long (and at least MIN_CYCLES cycles) ...
WINDOWS = 5  # ... and a figure is the best window: other work on a shared machine only ever adds time
MIN_CYCLES = 3
STARTUP_BEFORE_MAX_RANKS = 10_000  # the old one-request-at-a-time start-up at 100k takes many minutes
QUIET = {"lost_after": 1e9, "heartbeat": 1e7, "debug_heartbeat": 1e7, "startup_timeout": 1e7}
"""Policy numbers under which nothing comes due while measuring: the steady state of a long run."""
TEMPLATE = JobSpec.from_wire(make_job(1, "true", ["o.txt"]))


def before_module(commit: str = BASELINE_COMMIT) -> tuple[ModuleType | None, str]:
    """The scheduler of ``commit`` as a module of its own (read-only ``git show``), or None and why not.
    Only a commit where the scheduler was one file (``hpcpilot/scheduler.py``, up to 9f240d3) can be loaded."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:hpcpilot/scheduler.py"], cwd=REPO,
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"git show {commit}:hpcpilot/scheduler.py failed: {type(exc).__name__}"
    module = ModuleType("hpcpilot._scheduler_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the class is made
    try:
        exec(compile(source, f"{commit}:hpcpilot/scheduler.py", "exec"), module.__dict__)
    except Exception as exc:  # the committed file may import names the tree no longer has
        return None, f"the committed scheduler does not import against this tree: {type(exc).__name__}: {exc}"
    return module, f"{commit}:hpcpilot/scheduler.py"


def job(panda_id: int) -> JobSpec:
    return dataclasses.replace(TEMPLATE, panda_id=panda_id)


def report(panda_id: int, t: float) -> MonitorReport:
    tree = TreeSample(t, 1000, 1000, 0, 1000, 1.0, 0.5, 1, 1, 0, 0, 0, 0)
    return MonitorReport(panda_id, t, tree, None, 1, 1.0, 0.0, 100000.0, None, True)


class Driver:
    """One scheduler module, driven the same way whatever its version (events are made from its classes)."""

    def __init__(self, module: ModuleType) -> None:
        self.m = module
        self.next_id = 1
        self.says_size = "asked" in {f.name for f in dataclasses.fields(module.JobsFetched)}

    def scheduler(self, n_ranks: int, **policy: Any) -> Any:
        return self.m.Scheduler(list(range(1, n_ranks + 1)), CONFIG, self.m.SchedulerPolicy(**{**QUIET, **policy}))

    def answers(self, actions: list[Any]) -> list[Any]:
        """Every Fetch answered in full, with new jobs."""
        out = []
        for fetch in (a for a in actions if isinstance(a, self.m.Fetch)):
            jobs = tuple(job(self.next_id + i) for i in range(fetch.n))
            self.next_id += fetch.n
            out.append(self.m.JobsFetched(jobs, asked=fetch.n) if self.says_size else self.m.JobsFetched(jobs))
        return out

    def start_up(self, s: Any, n_ranks: int) -> int:
        """Every rank answers and asks for work; fetches are answered in rounds until every rank is busy."""
        actions = s.handle(0.0, [self.m.RankReady(r, True) for r in s.ranks] +
                           [self.m.WorkRequested(r) for r in s.ranks])
        rounds = 0
        while len(s.jobs) < n_ranks:
            rounds += 1
            actions = s.handle(1.0, self.answers(actions))
        return rounds

    def cycle(self, s: Any, rank: int, t: float) -> int:
        """A report, the job's end, the work request and the fetch answer: four calls, one event each."""
        m = self.m
        panda_id = s.ranks[rank].panda_id
        s.handle(t, [m.ReportReceived(rank, report(panda_id, t))])
        s.handle(t, [m.JobEnded(rank, JobRecord(panda_id, JobState.FINISHED))])
        actions = s.handle(t, [m.WorkRequested(rank)])
        s.handle(t, self.answers(actions))
        return 4


class Subject:
    """One scheduler (a module's version at one size) with every rank busy, timed in windows."""

    def __init__(self, module: ModuleType, n_ranks: int) -> None:
        self.driver, self.n_ranks = Driver(module), n_ranks
        self.s = self.driver.scheduler(n_ranks, jobs_per_fetch=n_ranks)  # one request fills the start-up
        self.driver.start_up(self.s, n_ranks)
        self.t, self.calls = 2.0, 0
        self.best = {"event": float("inf"), "pass": float("inf")}

    def step(self, kind: str) -> int:
        """One cycle (four events) or one empty pass; how many units it did."""
        self.t += 0.001
        self.calls += 1
        if kind == "event":
            return self.driver.cycle(self.s, 1 + self.calls % self.n_ranks, self.t)
        self.s.handle(self.t, [])
        return 1

    def window(self, kind: str) -> None:
        """Time one window of ``kind``; keep the best µs per unit."""
        units, calls, start = 0, 0, time.perf_counter()
        while calls < MIN_CYCLES or time.perf_counter() - start < WINDOW_SECONDS:
            units += self.step(kind)
            calls += 1
        self.best[kind] = min(self.best[kind], (time.perf_counter() - start) / units * 1e6)


def measure_all(subjects: list[Subject]) -> None:
    """Windows taken in turn over every subject, so that load from other work falls on all sizes alike."""
    for _ in range(WINDOWS):
        for subject in subjects:
            subject.window("event")
            subject.window("pass")


def startup_rounds(module: ModuleType, n_ranks: int) -> tuple[int, float]:
    """Rounds of fetch answers to fill ``n_ranks`` idle ranks with the module's default fetch policy, and
    the seconds of scheduler time they took."""
    driver = Driver(module)
    s = driver.scheduler(n_ranks)
    start = time.perf_counter()
    rounds = driver.start_up(s, n_ranks)
    return rounds, time.perf_counter() - start


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


def cell(value: float | None) -> Any:
    return "-" if value is None else value


def scheduler_table(ranks: tuple[int, ...], before: ModuleType | None, before_note: str) -> None:
    subjects = {(version, n): Subject(module, n) for n in ranks
                for version, module in (("now", current), ("before", before)) if module is not None}
    gc.collect()
    measure_all(list(subjects.values()))
    after = {n: subjects["now", n].best for n in ranks}
    old = {n: subjects["before", n].best for n in ranks if ("before", n) in subjects}
    base = ranks[0]
    rows = []
    for n in ranks:
        a, b = after[n], old.get(n)
        rows.append([f"{n:,}", a["event"], ratio(a["event"], after[base]["event"]),
                     cell(b and b["event"]), ratio(b and b["event"], old.get(base, {}).get("event")),
                     a["pass"], ratio(a["pass"], after[base]["pass"]),
                     cell(b and b["pass"]), ratio(b and b["pass"], old.get(base, {}).get("pass")),
                     ratio(b and b["event"], a["event"])])
    print_table("Scheduler.handle with every rank busy (µs; ratio = this size / the first size)",
                [f"before: {before_note}", f"each figure: the best of {WINDOWS} windows of >= {WINDOW_SECONDS} s; "
                 "event = one of a report / job end / work request / fetch answer cycle",
                 f"targets: ratio <= {TARGET_RATIO} at the "
                 f"largest size, and <= {TARGET_US_AT_100K:.0f} µs per event at 100k"],
                ["ranks", "µs/event", "ratio", "before", "ratio", "µs/pass", "ratio", "before", "ratio",
                 "speed-up/event"], rows)
    top = ranks[-1]
    event_ratio = after[top]["event"] / after[base]["event"]
    pass_ratio = after[top]["pass"] / after[base]["pass"]
    print(f"  {top:,}/{base:,}: event {event_ratio:.2f}, pass {pass_ratio:.2f} (target <= {TARGET_RATIO}: "
          f"{'met' if max(event_ratio, pass_ratio) <= TARGET_RATIO else 'not met'})")
    if top >= 100_000:
        us = after[top]["event"]
        print(f"  µs per event at {top:,}: {us:.1f} (target <= {TARGET_US_AT_100K:.0f}: "
              f"{'met' if us <= TARGET_US_AT_100K else 'not met'})")


def startup_table(ranks: tuple[int, ...], before: ModuleType | None) -> None:
    rows = []
    for n in ranks:
        rounds, seconds = startup_rounds(current, n)
        if before is not None and n <= STARTUP_BEFORE_MAX_RANKS:
            old_rounds, old_seconds = startup_rounds(before, n)
            rows.append([f"{n:,}", rounds, seconds, old_rounds, old_seconds])
        else:
            rows.append([f"{n:,}", rounds, seconds, "-", "-"])
    policy = current.SchedulerPolicy()
    print_table("Start-up: rounds of fetch answers until every idle rank runs a job (default fetch policy)",
                [f"now: up to {policy.jobs_per_fetch} jobs per request, {policy.fetches_in_flight} requests in "
                 "flight; before: one request at a time", f"before is not run above {STARTUP_BEFORE_MAX_RANKS:,} "
                 "ranks (minutes)"],
                ["ranks", "rounds", "scheduler s", "before rounds", "before s"], rows)


def es_table(quick: bool) -> None:
    """The event-service ledger's rows, from ``bench/scale_es.py`` (written beside this one)."""
    # HOOK: bench/scale_es.py exposes ``rows(quick: bool) -> list[dict]``; printed as it comes.
    if importlib.util.find_spec("bench.scale_es") is None:
        print("\nES ledger at scale: bench/scale_es.py is not there yet (hook: rows(quick) -> list[dict])")
        return
    rows = importlib.import_module("bench.scale_es").rows(quick)
    if not rows:
        print("\nES ledger at scale: bench/scale_es.py returned no rows")
        return
    header = list(rows[0])
    print_table("ES ledger at scale (bench/scale_es.py)", [], header,
                [[row.get(key, "") for key in header] for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k ranks only")
    parser.add_argument("--ranks", type=int, nargs="+", help="rank counts (the first is the baseline)")
    parser.add_argument("--no-before", action="store_true", help="skip the committed scheduler's column")
    parser.add_argument("--before", default=BASELINE_COMMIT, metavar="COMMIT",
                        help=f"the commit whose one-file scheduler is the 'before' column ({BASELINE_COMMIT}; "
                             "9f240d3 is the last one before the scheduler became a package)")
    parser.add_argument("--no-es", action="store_true", help="skip the ES ledger table (bench/scale_es.py)")
    args = parser.parse_args()
    ranks = tuple(args.ranks) if args.ranks else QUICK_RANKS if args.quick else FULL_RANKS
    if any(n < 1 for n in ranks):
        parser.error("--ranks: every count must be at least 1")
    before, note = (None, "not run (--no-before)") if args.no_before else before_module(args.before)
    scheduler_table(ranks, before, note)
    startup_table(ranks, before)
    if not args.no_es:
        es_table(args.quick)


if __name__ == "__main__":
    main()
