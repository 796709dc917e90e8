"""Rank 0's event-service ledger at scale: one ES job on the pure Scheduler, simulated ranks, no MPI.

Everything goes through ``Scheduler.handle`` as the controller calls it, with the walltime guard on
(``policy.deadline`` set: every request goes through the guard's allowance), and a simulated controller
that answers FetchRanges and MakeBundle the way the real one does.  Measured (issue 14):

* report: µs per RangesReported (a rank's outcome for one range and its request for one more, dealt at
  once from the queue) with every rank holding ranges, at 1k, 10k and 100k ranks; and at 1k ranks after
  10k / 1M ranges went through the job (history must not cost);
* dry pass: µs per ``handle(now, [])`` with every rank waiting and the queue dry (a lease under way),
  and the ledger's part of that pass alone (the calls the scheduler's ES tick makes on the book);
* memory: MB (tracemalloc) still allocated after R ranges were leased, dealt, finished, bundled and
  reported with 1k ranks (10k and 1M ranges), and its growth from the smallest R per million ranges
  (``mb_per_1M``); the target is a 1M-range job within 100 MB of rank 0.

Each time is the best of WINDOWS windows of at least WINDOW_SECONDS (other work on a shared machine only
ever adds time).  Baseline: the smallest size of the same row, same run (``ratio_to_1k``).  Not a test:
nothing is asserted.  ``rows(quick)`` is what ``bench/bench_scale.py`` prints.

    .venv/bin/python -m bench.scale_es [--quick]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import make_job, print_table
from hpcpilot.config import load_config
from hpcpilot.eventservice.book import (
    BundleStaged,
    DealRanges,
    EsBook,
    FetchRanges,
    MakeBundle,
    RangesFetched,
    RangesReported,
    ReportRanges,
)
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.scheduler import JobProgress, JobsFetched, RankReady, Scheduler, SchedulerPolicy, WorkRequested
from hpcpilot.sources import OutputBundle
from hpcpilot.states import EventRangeStatus, JobState

PANDA_ID = 50
PER_REQUEST = 2
WALL = 60.0  # a range takes a minute: the guard's allowance changes once a minute of simulated time
STEP = 1e-4  # simulated seconds between two calls
POLICY = dict(deadline=1e7, margin=10.0, lost_after=1e12, heartbeat=1e12, debug_heartbeat=1e12,
              startup_timeout=1e12)
"""Guard on, far away; nothing else comes due while measuring (the steady state of a long run)."""
FULL_RANKS = (1_000, 10_000, 100_000)
QUICK_RANKS = (1_000, 10_000)
FULL_RANGES = (10_000, 1_000_000)
QUICK_RANGES = (10_000, 100_000)
MEMORY_RANKS = 1_000
WINDOW_SECONDS = 0.1
WINDOWS = 5
MAX_CALLS = 20_000  # per window (the queue is refilled for that many before each window)
TARGET_RATIO = 2.0
TARGET_MB_PER_JOB = 100.0
NO_EXTRA: MappingProxyType[str, Any] = MappingProxyType({})


class EsSim:
    """One ES job on a Scheduler with ``ranks`` simulated ranks and a simulated controller."""

    def __init__(self, ranks: int) -> None:
        config = load_config(None, {"eventservice": {"ranges_per_request": PER_REQUEST}}, environ={})
        self.s = Scheduler(list(range(1, ranks + 1)), config, SchedulerPolicy(**POLICY))  # type: ignore[arg-type]
        self.ranks = ranks
        self.t = 0.0
        self.next_range = 0
        self.held: dict[int, deque[str]] = {r: deque() for r in range(1, ranks + 1)}
        self.inbox: list[Any] = []  # the controller's answers, delivered with the next call
        self.sent = 0  # range statuses reported to the source
        self.asked = 0  # ranges the book asked for and was not given yet
        self._open()

    @property
    def book(self) -> EsBook:
        return self.s.es[PANDA_ID]

    def call(self, events: Sequence[Any]) -> None:
        self.t += STEP
        events, self.inbox = [*events, *self.inbox], []
        for action in self.s.handle(self.t, events):
            if isinstance(action, DealRanges):
                self.held[action.rank].extend(r.event_range_id for r in action.ranges)
            elif isinstance(action, MakeBundle):
                zipped = OutputBundle("z.zip", 10, "00000001", action.num_events, -1, 1000)
                self.inbox.append(BundleStaged(PANDA_ID, action.updates, zipped))
            elif isinstance(action, ReportRanges):
                self.sent += len(action.updates)
            elif isinstance(action, FetchRanges):
                self.asked += action.n  # answered by the caller (``lease``) when the measurement needs it

    def lease(self, n: int) -> RangesFetched:
        first, self.next_range, self.asked = self.next_range, self.next_range + n, 0
        return RangesFetched(PANDA_ID, tuple(EventRange(f"7-{PANDA_ID}-1-{i}-1", i, i, "E", "G", "s", NO_EXTRA)
                                             for i in range(first, first + n)))

    def _open(self) -> None:
        """Every rank ready; the job staged in by rank 1, open, and joined by every rank."""
        ranks = range(1, self.ranks + 1)
        self.call([RankReady(r, True) for r in ranks] + [WorkRequested(r) for r in ranks])
        self.call([JobsFetched((JobSpec.from_wire(make_job(PANDA_ID, "x", eventService="True")),))])
        self.call([JobProgress(1, JobRecord(PANDA_ID, state=JobState.RUNNING, rank=1))])
        if len(self.book.members) != self.ranks:
            raise SystemExit(f"scale_es: {len(self.book.members)} of {self.ranks} ranks joined the ES job")

    def deal_everyone(self, spare: int = 0) -> None:
        """Every rank asks for PER_REQUEST ranges and gets them; ``spare`` more stay queued."""
        ranks = range(1, self.ranks + 1)
        self.call([RangesReported(r, PANDA_ID, (), PER_REQUEST) for r in ranks]
                  + [self.lease(PER_REQUEST * self.ranks + spare)])

    def report(self, rank: int, want: int = 1) -> None:
        """The rank finished its oldest range (with an output) and asks for ``want`` more."""
        done = EventRangeUpdate(self.held[rank].popleft(), EventRangeStatus.FINISHED, output="/o/x",
                                wall_time=WALL)
        self.call([RangesReported(rank, PANDA_ID, (done,), want)])


def best_us(step: Callable[[int], None], prepare: Callable[[], None] = lambda: None) -> float:
    """µs per ``step(i)``: the best of WINDOWS windows, ``prepare()`` run (untimed) before each."""
    best, calls = float("inf"), 0
    for _ in range(WINDOWS):
        prepare()
        first, start = calls, time.perf_counter()
        while calls - first < 3 or (time.perf_counter() - start < WINDOW_SECONDS and calls - first < MAX_CALLS):
            step(calls)
            calls += 1
        best = min(best, (time.perf_counter() - start) / (calls - first))
    return best * 1e6


def report_us(sim: EsSim) -> float:
    """µs per range report through handle, every rank holding ranges, the queue never dry."""
    def refill() -> None:
        if len(sim.book.queue) < MAX_CALLS:
            sim.call([sim.lease(MAX_CALLS)])

    return best_us(lambda i: sim.report(1 + i % sim.ranks), refill)


def dry_pass_us(ranks: int) -> tuple[float, float]:
    """µs per empty handle and per ledger pass, every rank waiting, the queue dry, a lease under way."""
    sim = EsSim(ranks)
    sim.deal_everyone()
    sim.call([RangesReported(1, PANDA_ID, (EventRangeUpdate(sim.held[1].popleft(), EventRangeStatus.FINISHED,
                                                            wall_time=WALL),), 0)])  # the guard has a mean wall
    sim.call([RangesReported(r, PANDA_ID, (), PER_REQUEST) for r in range(1, ranks + 1)])
    book = sim.book
    if len(book.waiting) != ranks or book.queue or not book.fetching:
        raise SystemExit(f"scale_es: dry-pass set-up failed ({len(book.waiting)} waiting, {len(book.queue)} queued)")
    guard_at = sim.s.policy.deadline - sim.s.policy.margin  # type: ignore[operator]

    def ledger_pass(_i: int) -> None:  # what the scheduler's ES tick asks the book on every pass
        sim.t += STEP
        book.fetch_wanted(sim.t, guard_at)
        book.serve_waiting(guard_at, sim.t)
        book.due_bundle(sim.t)
        book.due_report(sim.t)
        book.is_done()

    return best_us(lambda _i: sim.call([])), best_us(ledger_pass)


def memory(n_ranges: int) -> tuple[float, float, float]:
    """MB still allocated after ``n_ranges`` went through the job with MEMORY_RANKS ranks, the peak MB
    above the start, and then µs per range report at that point (tracemalloc off)."""
    gc.collect()
    tracemalloc.start()
    sim = EsSim(MEMORY_RANKS)
    sim.deal_everyone()
    base = tracemalloc.get_traced_memory()[0]
    batch = 100  # ranks reporting in one call (the controller hands the scheduler what came in)
    tick = batch * PER_REQUEST * WALL / MEMORY_RANKS  # simulated seconds for that many ranges at WALL each
    rank = 0
    while sim.sent < n_ranges:
        events: list[Any] = [sim.lease(sim.asked)] if sim.asked else []
        for _ in range(batch):
            rank = rank % MEMORY_RANKS + 1
            done = tuple(EventRangeUpdate(rid, EventRangeStatus.FINISHED, output="/o/x", wall_time=WALL)
                         for rid in sim.held[rank])
            sim.held[rank].clear()
            events.append(RangesReported(rank, PANDA_ID, done, PER_REQUEST))
        sim.t += tick  # the prefetch sizes itself from this rate; bundles and reports come due
        sim.call(events)
    gc.collect()
    now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (now - base) / 1e6, (peak - base) / 1e6, report_us(sim)


def _row(what: str, scale: str, us: float | str, base: float | None, value: float | None = None,
         mb: float | str = "-", per_million: float | str = "-", target: str = "") -> dict[str, Any]:
    measured = value if value is not None else us
    ratio = f"{measured / base:.2f}" if isinstance(measured, float) and base else "-"
    return {"what": what, "scale": scale, "us": us, "ratio_to_1k": ratio, "mb": mb, "mb_per_1M": per_million,
            "target": target}


def rows(quick: bool) -> list[dict[str, Any]]:
    """The table's rows: report and dry-pass cost by ranks, memory and report cost by ranges leased."""
    ranks, ranges = (QUICK_RANKS, QUICK_RANGES) if quick else (FULL_RANKS, FULL_RANGES)
    target = f"{ranks[-1] // 1000}k/{ranks[0] // 1000}k <= {TARGET_RATIO:g}"
    out: list[dict[str, Any]] = []
    reports, handles, ledgers = {}, {}, {}
    for n in ranks:  # one simulation alive at a time
        sim = EsSim(n)
        sim.deal_everyone(spare=MAX_CALLS)
        reports[n] = report_us(sim)
        del sim
        handles[n], ledgers[n] = dry_pass_us(n)
        gc.collect()
    for n in ranks:
        out.append(_row("ES range report, guard on (handle)", f"{n:,} ranks", reports[n], reports[ranks[0]],
                        target=target))
    for n in ranks:
        out.append(_row("ES dry pass, all ranks waiting (handle)", f"{n:,} ranks", handles[n], handles[ranks[0]],
                        target=target))
    for n in ranks:
        out.append(_row("ES dry pass, ledger part only", f"{n:,} ranks", ledgers[n], ledgers[ranks[0]],
                        target=target))
    measured = {n: memory(n) for n in ranges}
    first = measured[ranges[0]]
    for n in ranges:
        mb, peak, _us = measured[n]
        growth = "-" if n == ranges[0] else round((mb - first[0]) * 1e6 / (n - ranges[0]), 2)
        out.append(_row("ES memory after R ranges reported", f"{MEMORY_RANKS // 1000}k ranks, {n:,} ranges",
                        "-", first[0], value=mb, mb=round(mb, 2), per_million=growth,
                        target=f"<= {TARGET_MB_PER_JOB:g} MB per 1M-range job (peak {peak:.1f} MB)"))
    for n in ranges:
        out.append(_row("ES range report after R ranges (handle)", f"{MEMORY_RANKS // 1000}k ranks, {n:,} ranges",
                        measured[n][2], first[2], target=f"{ranges[-1]:,}/{ranges[0]:,} <= {TARGET_RATIO:g}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k ranks, 10k and 100k ranges")
    args = parser.parse_args()
    table = rows(args.quick)
    header = list(table[0])
    print_table("ES ledger at scale (Scheduler.handle, walltime guard on; ratio = this size / the smallest)",
                [f"each time: the best of {WINDOWS} windows of >= {WINDOW_SECONDS} s",
                 "memory: tracemalloc, retained after the ranges were reported; mb_per_1M = its growth from the "
                 "smallest R, per million ranges"],
                header, [[row[key] for key in header] for row in table])


if __name__ == "__main__":
    main()
