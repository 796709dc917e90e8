"""Rank 0's files at scale (issue 14): CPU per final job report, and the journal's size and speed.

(a) Rank-0 CPU (``time.process_time``: the controller's thread and the PanDA sender thread, which
both run in rank 0's process) per final job report when 100, 1,000 and 10,000 jobs have ended,
through the real ``Controller.report`` with a real ``PandaSource`` talking to ``hpcpilot serve`` on
loopback (the server is another process, so its CPU is not counted; each update is a real HTTP
round trip and a durable journal commit).  The jobs that ended before the window are in the
scheduler's ``done`` list (summary.json lists them all); the window's jobs are leased from the
server first (not timed), then reported final one after the other and the window waits for the
sender to deliver all of them.  The controller's clock advances ``--gap`` simulated seconds per
report (jobs ending at 1/gap per second) and ``monitor.status_interval`` is ``--interval``.  Every
window begins with a summary.json rewrite and is 2,000 reports long (all N when fewer): at least one
whole rewrite period at 10,000 jobs (where the 2 % share, not the interval, sets the period), so
the rewrite's cost is amortized as in a long run.  Baseline in the same run: the old behaviour,
summary.json rewritten after every final report.  Target: 10,000 / 100 <= 1.5 for the new behaviour.

(b) Journal: ``--ranges`` event ranges (1M; ``--quick`` 100k) leased 100 at a time (one
getEventRanges), reported in one updateEventRanges and acknowledged, as the sender does, one
transaction per loop pass (``Journal.group``); the file size (database + WAL) at the end, per range.
Then the rate, ranges/s with the pilot's durability (``synchronous=NORMAL`` and the journal's group fsync
of the WAL after each durable commit, outside its lock: "new") and as it was before (``synchronous=FULL``,
SQLite's fsync inside COMMIT: "FULL") against the same calls with ``PRAGMA synchronous=OFF``, at each
``--batchings`` (ranges per lease and per report: 10, 100, 1000, the sizes the pilot's leases take,
``eventservice.lease_size``) and three ways of calling: ``calls`` (one thread, one journal call each),
``group`` (one transaction per pass), ``threads`` (a fetch, the loop and a sender thread of rank 0,
sharing commits) and ``pilot`` (the same with the pilot's default 4 fetch and 4 sender threads); best of
``--reps``, new, FULL and OFF in turn.
Targets: <= 10 MB in all at 1M; new / OFF >= 0.8 (issue 26).  Not a test: nothing is asserted.

(c) Senders: 256 (``--quick`` 64) leased jobs' final updates queued at once through a real
``PandaSource`` against ``hpcpilot serve --fault slow --fault-delay 0.05`` (every call answered after
a fixed 50 ms, a WAN round trip plus server time), updates per second from the first queued to the
outbox drained, for each ``--senders`` count (``panda.senders``) in the same run; the first count (1:
one update per round trip, the old behaviour) is the baseline of the ratio.

    .venv/bin/python -m bench.bench_rank0_io [--quick] [--jobs 100 1000 10000] [--ranges N] [--reps 3]
        [--batchings 10 100 1000]
        [--skip cpu|journal|senders ...] [--senders 1 4 16] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BIN, make_job, median, print_table
from hpcpilot.config import SiteConfig, replace
from hpcpilot.config.schema import PandaConfig
from hpcpilot.controller import Controller
from hpcpilot.journal import Journal
from hpcpilot.panda.source import PandaSource
from hpcpilot.records import JobRecord
from hpcpilot.scheduler import Scheduler, SchedulerPolicy
from hpcpilot.signals import SignalFlag
from hpcpilot.states import JobState
from hpcpilot.transport import QueueHub

NODE = {"node": "bench01", "cpu": 2400, "mem": 4000, "disk": 10000}
RANGES_PER_CALL = 100
TARGET_RATIO = 1.5
TARGET_JOURNAL_MB_AT_1M = 10.0
TARGET_JOURNAL_RATIO = 0.8


# ---- (a) CPU per final report ---------------------------------------------------------------


class Server:
    """``hpcpilot serve`` on loopback with ``n`` jobs, for the life of a ``with`` block."""

    def __init__(self, tmp: Path, n: int, extra: Sequence[str] = ()) -> None:
        jobs = tmp / "jobs.json"
        jobs.write_text(json.dumps([make_job(i, "true", ["out.txt"]) for i in range(1, n + 1)]))
        argv = [str(BIN / "hpcpilot"), "serve", "--port", "0", "--state", str(tmp / "state.sqlite"),
                "--jobs", str(jobs), "--api", "v1", *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "serving PanDA test server on " not in line:
            self.proc.kill()
            raise SystemExit(f"bench_rank0_io: hpcpilot serve did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[-1].strip()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class SimClock:
    """The controller's clock: ``gap`` simulated seconds between final reports."""

    def __init__(self, gap: float) -> None:
        self.now, self.gap = 1.8e9, gap

    def __call__(self) -> float:
        return self.now


def config_for(url: str, interval: float) -> SiteConfig:
    config = replace(SiteConfig(), "monitor", status_interval=interval)
    config = replace(config, "panda", server=url, api="v1", jobs_per_fetch=1000, heartbeat=1800.0,
                     retry_initial=0.05, retry_max=0.5)
    return replace(config, "site", queue="BENCH_QUEUE", prod_source_label="managed", resource_type="SCORE")


def ended_record(panda_id: int) -> JobRecord:
    """A finished job's record as a worker sends it: times, events, an output and a log file."""
    record = JobRecord(panda_id=panda_id, state=JobState.FINISHED, attempt_nr=1, n_events=100,
                       start_time="2026-12-01 10:00:00", end_time="2026-12-01 10:20:00", rank=panda_id % 8 + 1)
    record.output_report = {"out.txt": {"fsize": 1234, "adler32": "0a0b0c0d"},
                            f"log.{panda_id}.tgz": {"fsize": 4321, "adler32": "01020304"}}
    return record


def report_window(workdir: Path, url: str, ended_before: int, window: list[int], timing: tuple[float, float],
                  old: bool) -> float:
    """CPU seconds per final report for ``window`` jobs reported after ``ended_before`` had ended;
    ``timing`` is (simulated seconds between reports, status_interval)."""
    gap, interval = timing
    config = config_for(url, interval)
    source = PandaSource(config, workdir, NODE, fetch_deadline=30.0, close_deadline=60.0)
    leased = 0
    while leased < len(window):  # lease the window's jobs from the server (not measured)
        got = source.fetch_jobs(len(window) - leased)
        if not got.leased:
            raise SystemExit(f"bench_rank0_io: the server ran out of jobs ({got.error})")
        leased += len(got.leased)
    clock = SimClock(gap)
    scheduler = Scheduler([1], config, SchedulerPolicy.from_config(config, None, None))
    controller = Controller(QueueHub(2).transport(0), source, scheduler, workdir, SignalFlag(), clock=clock)
    scheduler.done.extend(ended_record(100_000_000 + i) for i in range(ended_before))
    if old:  # the baseline: summary.json rebuilt and rewritten after every final report
        controller.summary.write_if_due = controller.summary.write  # type: ignore[method-assign]
    start = time.process_time()
    for panda_id in window:
        record = ended_record(panda_id)
        scheduler.done.append(record)
        controller.report(record, True)
        clock.now += gap
    if not source.flush(120.0):
        raise SystemExit("bench_rank0_io: the sender did not deliver the window's updates within 120 s")
    cpu = time.process_time() - start
    source.close()
    return cpu / len(window)


def cpu_table(tmp: Path, sizes: Sequence[int], windows: tuple[int, int], timing: tuple[float, float],
              reps: int) -> None:
    """Medians of ``reps`` rounds; each round measures every N and both behaviours, so a neighbour's load
    on the shared cores falls on all of them alike."""
    new_window, old_window = windows
    total = reps * sum(min(new_window, n) + min(old_window, n) for n in sizes)
    next_id = iter(range(1, total + 1))
    rows, samples = [], defaultdict(list)
    with Server(tmp, total) as server:
        for round_ in range(reps):
            for n in sizes:
                for old, window in ((True, min(old_window, n)), (False, min(new_window, n))):
                    ids = [next(next_id) for _ in range(window)]
                    workdir = tmp / f"work-{n}-{'old' if old else 'new'}-{round_}"
                    samples[(n, old)].append(report_window(workdir, server.url, n - window, ids, timing, old))
    per = {key: median(values) for key, values in samples.items()}
    base_new, base_old = per[(sizes[0], False)], per[(sizes[0], True)]
    for n in sizes:
        rows.append([n, per[(n, True)] * 1e3, per[(n, True)] / base_old, per[(n, False)] * 1e3,
                     per[(n, False)] / base_new, per[(n, True)] / per[(n, False)]])
    print_table("(a) rank-0 CPU per final job report (real PandaSource, hpcpilot serve on loopback)",
                [f"window: {old_window} (old) / {new_window} (new) final reports ending at job N; median of {reps}; "
                 f"{timing[0] * 1e3:.0f} ms simulated between reports, status_interval {timing[1]:g} s; "
                 "process_time incl. the sender thread",
                 f"target: new N={sizes[-1]} / N={sizes[0]} <= {TARGET_RATIO}"],
                ["jobs N", "old ms", f"old /{sizes[0]}", "new ms", f"new /{sizes[0]}", "old / new"], rows)


# ---- (b) journal size and durability cost ---------------------------------------------------


def range_dicts(panda_id: int, first: int, n: int) -> list[dict[str, Any]]:
    """getEventRanges answers: id, events, input file, GUID, scope (about 200 bytes as JSON)."""
    return [{"eventRangeID": f"4000{panda_id}-{panda_id}-1-{i}-1", "startEvent": i * 10 + 1,
             "lastEvent": i * 10 + 10, "LFN": "EVNT.12345678._000001.pool.root.1",
             "GUID": "A1B2C3D4-0000-4000-8000-000000000001", "scope": "mc23_13p6TeV"}
            for i in range(first, first + n)]


def _report(ids: Sequence[str]) -> list[dict[str, Any]]:
    return [{"eventRangeID": rid, "eventStatus": "finished"} for rid in ids]


def churn_calls(journal: Journal, n_ranges: int, per_call: int) -> None:
    """One thread, one journal call each, as before issue 26: lease (durable), report, take, acknowledge."""
    for first in range(0, n_ranges, per_call):
        ranges = range_dicts(1, first, per_call)
        journal.record_range_leases(1, ranges)
        ids = [r["eventRangeID"] for r in ranges]
        journal.enqueue_range_update(1, _report(ids), 0, ids)
        journal.acknowledge(journal.next_pending())


def churn_group(journal: Journal, n_ranges: int, per_call: int) -> None:
    """One thread, one transaction per loop pass (``Journal.group``): the pass's lease, its report and the
    acknowledgement of the previous pass's update; the update is then taken for sending (committed)."""
    sending = None
    for first in range(0, n_ranges, per_call):
        ranges = range_dicts(1, first, per_call)
        ids = [r["eventRangeID"] for r in ranges]
        with journal.group():
            if sending is not None:
                journal.acknowledge(sending)
            journal.record_range_leases(1, ranges)
            journal.enqueue_range_update(1, _report(ids), 0, ids)
        sending = journal.next_pending()
    journal.acknowledge(sending)


def churn_threads(journal: Journal, n_ranges: int, per_call: int) -> None:
    """Rank 0's three journal users on their own threads, as the pilot runs them: the fetch thread leases
    (durable before it hands them on), the loop thread reports what it got, one sender takes each update
    and acknowledges it.  Commits are shared: a lease's commit carries the reports and acknowledgements
    written since the last one."""
    leased: queue.Queue[list[str] | None] = queue.Queue(maxsize=4)
    reported: queue.Queue[int | None] = queue.Queue()

    def fetch() -> None:
        for first in range(0, n_ranges, per_call):
            ranges = range_dicts(1, first, per_call)
            journal.record_range_leases(1, ranges)
            leased.put([r["eventRangeID"] for r in ranges])
        leased.put(None)

    def send() -> None:
        while reported.get() is not None:
            journal.acknowledge(journal.next_pending())

    threads = [threading.Thread(target=fetch), threading.Thread(target=send)]
    for thread in threads:
        thread.start()
    while (ids := leased.get()) is not None:
        journal.enqueue_range_update(1, _report(ids), 0, ids)
        reported.put(1)
    reported.put(None)
    for thread in threads:
        thread.join()


PILOT_FETCHES = PandaConfig().fetches_in_flight
PILOT_SENDERS = PandaConfig().senders


def churn_pilot(journal: Journal, n_ranges: int, per_call: int) -> None:
    """As ``churn_threads`` with the pilot's default thread counts: ``panda.fetches_in_flight`` fetch threads
    (each leasing for its own job) and ``panda.senders`` senders, each taking its own shard's updates
    (``next_pending(shard)``, the journal opened with that many shards).  Leases made while an fsync runs
    share the next one."""
    leased: queue.Queue[tuple[int, list[str]] | None] = queue.Queue(maxsize=2 * PILOT_FETCHES)
    reported: list[queue.Queue[int | None]] = [queue.Queue() for _ in range(PILOT_SENDERS)]

    def fetch(k: int) -> None:
        for first in range(k * per_call, n_ranges, PILOT_FETCHES * per_call):
            ranges = range_dicts(k + 1, first, per_call)
            journal.record_range_leases(k + 1, ranges)
            leased.put((k + 1, [r["eventRangeID"] for r in ranges]))
        leased.put(None)

    def send(shard: int) -> None:
        while reported[shard].get() is not None:
            journal.acknowledge(journal.next_pending(shard))

    threads = ([threading.Thread(target=fetch, args=(k,)) for k in range(PILOT_FETCHES)]
               + [threading.Thread(target=send, args=(k,)) for k in range(PILOT_SENDERS)])
    for thread in threads:
        thread.start()
    ended = 0
    while ended < PILOT_FETCHES:
        item = leased.get()
        if item is None:
            ended += 1
            continue
        panda_id, ids = item
        journal.enqueue_range_update(panda_id, _report(ids), 0, ids)
        reported[journal.shard_of(panda_id)].put(1)
    for box in reported:
        box.put(None)
    for thread in threads:
        thread.join()


CHURNS: dict[str, Callable[[Journal, int, int], None]] = {
    "calls": churn_calls, "group": churn_group, "threads": churn_threads, "pilot": churn_pilot}


SYNCS = ("new", "FULL", "OFF")
"""new: the pilot's journal (NORMAL, the WAL fsync'd after COMMIT outside the lock, shared by the threads);
FULL: the journal before it (SQLite fsyncs the WAL inside COMMIT, under the lock); OFF: no fsync at all."""


def _no_wait(ticket: int) -> None:
    """The baselines' stand-in for the wait for the journal's own WAL fsync (FULL syncs in COMMIT, OFF never)."""


def churn(path: Path, n_ranges: int, sync: str, mode: str = "group",
          per_call: int = RANGES_PER_CALL) -> tuple[float, int]:
    """(ranges/s, bytes of database + WAL) after ``n_ranges`` leased, reported and acknowledged."""
    journal = Journal(path, shards=PILOT_SENDERS if mode == "pilot" else 1)
    if sync != "new":
        journal._db.execute(f"PRAGMA synchronous={sync}")
        journal._sync.wait = _no_wait  # type: ignore[method-assign]
    start = time.perf_counter()
    CHURNS[mode](journal, n_ranges, per_call)
    journal.commit()
    elapsed = time.perf_counter() - start
    assert journal.pending_count() == 0 and not journal.in_flight("range")
    size = sum(os.path.getsize(f"{path}{suffix}") for suffix in ("", "-wal") if os.path.exists(f"{path}{suffix}"))
    journal.close()
    return n_ranges / elapsed, size


def journal_table(tmp: Path, n_ranges: int, batchings: Sequence[int], reps: int) -> None:
    """The size at ``n_ranges`` (one group per pass, 100 a call), then each way of calling at each batching:
    the pilot's journal (new), FULL in COMMIT (before) and OFF, in turn, best of ``reps``."""
    labels = {"new": "new (NORMAL + group fsync, as the pilot runs)", "FULL": "FULL (before: fsync in COMMIT)",
              "OFF": "OFF (same SQL, no fsync)"}
    rows = []
    for sync in SYNCS:
        rate, size = churn(tmp / f"journal-{sync}.sqlite", n_ranges, sync)
        rows.append([labels[sync], n_ranges, size / 1e6, size / n_ranges, rate])
    print_table("(b) journal size: ranges leased 100 per call, reported and acknowledged, one group per pass",
                [f"target: <= {TARGET_JOURNAL_MB_AT_1M:.0f} MB in all at 1,000,000 ranges; "
                 f"new / OFF ranges/s = {rows[0][4] / rows[2][4]:.2f}, FULL / OFF = {rows[1][4] / rows[2][4]:.2f}"],
                ["synchronous", "ranges", "file MB", "B/range", "ranges/s"], rows)
    rows = []
    for per_call in batchings:
        n = min(n_ranges, 2000 * per_call)  # 2,000 passes at most: each row a few seconds
        for mode in CHURNS:
            best = dict.fromkeys(SYNCS, 0.0)
            for rep in range(reps):
                for sync in SYNCS:
                    path = tmp / f"rate-{mode}-{per_call}-{rep}-{sync}.sqlite"
                    best[sync] = max(best[sync], churn(path, n, sync, mode, per_call)[0])
            rows.append([per_call, mode, n, best["new"], best["FULL"], best["OFF"], best["new"] / best["OFF"],
                         best["FULL"] / best["OFF"]])
    print_table("(b) journal rate: new and FULL (before) against OFF (same calls, same batching), best of each",
                [f"best of {reps} runs, the three in turn; calls: one thread, a commit per durable call; group: "
                 "one transaction per pass; threads: fetch, loop and sender threads sharing commits; pilot: 4 fetch "
                 "threads (a job each), the loop, 4 senders (a shard each)",
                 f"target: new / OFF >= {TARGET_JOURNAL_RATIO} at every batching"],
                ["ranges/call", "how", "ranges", "new/s", "FULL/s", "OFF/s", "new / OFF", "FULL / OFF"], rows)


# ---- (c) senders: final updates per second with several updates in flight --------------------


def deliver_finals(workdir: Path, url: str, n_jobs: int, senders: int) -> float:
    """Final updates per second for ``n_jobs`` leased jobs reported at once, ``senders`` sender threads;
    the clock runs from the first update queued to the outbox drained."""
    config = replace(config_for(url, 5.0), "panda", senders=senders)
    source = PandaSource(config, workdir, NODE, fetch_deadline=30.0, close_deadline=60.0)
    leased: list[int] = []
    while len(leased) < n_jobs:  # not measured
        got = source.fetch_jobs(n_jobs - len(leased))
        if not got.leased:
            raise SystemExit(f"bench_rank0_io: the server ran out of jobs ({got.error})")
        leased += [int(job["PandaID"]) for job in got.leased]
    start = time.perf_counter()
    for panda_id in leased:
        source.update_job(ended_record(panda_id), final=True)
    if not source.flush(300.0):
        raise SystemExit(f"bench_rank0_io: {senders} sender(s) did not deliver {n_jobs} updates within 300 s")
    elapsed = time.perf_counter() - start
    source.close()
    return n_jobs / elapsed


def senders_table(tmp: Path, counts: Sequence[int], n_jobs: int, delay: float, reps: int) -> None:
    """Every sender count against the same server in each round (1 sender, the old behaviour, first)."""
    base = tmp / "senders"
    base.mkdir()
    samples: dict[int, list[float]] = defaultdict(list)
    with Server(base, n_jobs * len(counts) * reps, ["--fault", "slow", "--fault-delay", str(delay)]) as server:
        for round_ in range(reps):
            for k in counts:
                samples[k].append(deliver_finals(base / f"work-{k}-{round_}", server.url, n_jobs, k))
    rate = {k: median(v) for k, v in samples.items()}
    rows = [[k, rate[k], 1.0 / rate[k] * 1e3, rate[k] / rate[counts[0]], rate[k] * delay] for k in counts]
    print_table("(c) final updates per second, hpcpilot serve answering every call after a fixed delay",
                [f"{n_jobs} final updates queued at once; server delay {delay * 1e3:.0f} ms per call; median of "
                 f"{reps}; baseline: {counts[0]} sender (one update per round trip)",
                 f"the ideal for k senders is k / delay = k x {1 / delay:.0f}/s"],
                ["senders", "updates/s", "ms/update", f"x {counts[0]} sender", "in flight (rate x delay)"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, a short baseline window, 100,000 ranges")
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000, 10000], help="jobs ended (N)")
    parser.add_argument("--ranges", type=int, help="ranges through the journal (default 1M, --quick 100k)")
    parser.add_argument("--batchings", type=int, nargs="+", default=[10, 100, 1000],
                        help="(b) ranges per lease and per report")
    parser.add_argument("--gap", type=float, default=0.01, help="simulated seconds between final reports")
    parser.add_argument("--interval", type=float, default=5.0, help="monitor.status_interval (s)")
    parser.add_argument("--reps", type=int, help="rounds of (a), medians printed (default 3, --quick 1)")
    parser.add_argument("--skip", choices=("cpu", "journal", "senders"), action="append", default=[],
                        help="leave a part out (repeatable)")
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 4, 16],
                        help="(c) sender counts (panda.senders); the first is the baseline")
    parser.add_argument("--delay", type=float, default=0.05, help="(c) server delay per call (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the per-job INFO lines are formatted only if shown
    new_window, old_window = 2000, (10 if args.quick else 30)
    with tempfile.TemporaryDirectory(prefix="bench-rank0-io-") as tmp:
        parts: list[Callable[[], None]] = []
        if "cpu" not in args.skip:
            parts.append(lambda: cpu_table(Path(tmp), sorted(args.jobs), (new_window, old_window),
                                           (args.gap, args.interval), args.reps or (1 if args.quick else 3)))
        if "journal" not in args.skip:
            parts.append(lambda: journal_table(Path(tmp), args.ranges or (100_000 if args.quick else 1_000_000),
                                               args.batchings, args.reps or (1 if args.quick else 3)))
        if "senders" not in args.skip:
            parts.append(lambda: senders_table(Path(tmp), args.senders, 64 if args.quick else 256, args.delay,
                                               args.reps or (1 if args.quick else 3)))
        for part in parts:
            part()
    return 0


if __name__ == "__main__":
    sys.exit(main())
