"""Rank 0's ledger of one event-service job: pure bookkeeping, time passed in.

Every range the source leased is in exactly one place: queued at rank 0, dealt to a rank,
finished and waiting for (or inside) an output bundle, waiting for the next status report,
or reported.  Every range is reported exactly once because each status comes from one of those
places as the range leaves it: an outcome for a range that is not dealt to the rank that sends it is
ignored and logged, and a range the source hands out again while rank 0 holds it, or soon after its
status was sent, is ignored too (``ReportedRanges`` says why a bounded record is enough).  Memory is
proportional to the ranges in flight, not to every range the job leased.

The book decides
* how many ranges to lease ahead (prefetch sized from the measured consumption rate, capped
  by what can still finish before the walltime guard),
* how many ranges a rank may get (walltime-aware: never more than the time left allows at
  the mean wall time a range has been taking on this job),
* when finished outputs go into a bundle and when statuses are reported,
* the job's final record (nEvents, CPU and memory of all its ranks).

``EsBook`` coordinates; each part keeps one structure or rule: ``holdings`` (what each rank holds),
``waiting`` (ranks waiting for ranges), ``register`` (the ranges taken in: held, or settled in
``reported``), ``outbox`` (statuses on their way to the server), ``tally`` (the running totals),
``pacing`` (how many to lease and to deal), ``esrecord`` (the job's records), ``messages`` (what
goes in and out).  The messages are importable from here as before.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from hpcpilot.config import EventServiceConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice import esrecord, pacing
from hpcpilot.eventservice.holdings import Holdings
from hpcpilot.eventservice.messages import (
    BundleStaged,
    CloseEsJob,
    DealRanges,
    EsJobClosed,
    FetchRanges,
    MakeBundle,
    RangesFetched,
    RangesReported,
    ReportRanges,
    failed,
)
from hpcpilot.eventservice.outbox import Outbox
from hpcpilot.eventservice.register import RangeRegister
from hpcpilot.eventservice.reported import REPORTED_WINDOW, ReportedRanges
from hpcpilot.eventservice.tally import Tally
from hpcpilot.eventservice.waiting import PassGate, Waiting
from hpcpilot.monitor.metrics import Limits
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec, RangeOutcomes
from hpcpilot.records.outcomes import OutcomeQueue

# What the scheduler, the controller, the workers, the tests and the benches import from here (the
# messages are at home in ``messages``, the window in ``reported``).
__all__ = [
    "REPORTED_WINDOW",
    "BundleStaged",
    "CloseEsJob",
    "DealRanges",
    "EsBook",
    "EsJobClosed",
    "FetchRanges",
    "MakeBundle",
    "RangesFetched",
    "RangesReported",
    "ReportRanges",
    "failed",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _KeptBy(Generic[T]):
    """An attribute of ``EsBook`` whose value one of its parts keeps, under the name the scheduler, the
    live view and the tests know: read and written through, so the fact has one place."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, book: None, owner: type | None = None) -> _KeptBy[T]: ...

    @overload
    def __get__(self, book: object, owner: type | None = None) -> T: ...

    def __get__(self, book: object, owner: type | None = None) -> Any:
        if book is None:
            return self
        return getattr(getattr(book, self.part), self.name)

    def __set__(self, book: object, value: T) -> None:
        setattr(getattr(book, self.part), self.name, value)


@dataclass
class EsBook:
    """One event-service job at rank 0.

    Cost: every request, outcome and pass is O(1) amortized in the ranks, the ranges dealt and the
    ranges ever leased (plus O(what it deals or answers)); memory is O(ranges in flight).  ``dealt``
    is indexed by rank (``holdings``); a pass over the waiting ranks happens only when something that
    decides it changed (``PassGate``: a request, a lease, a stop; or the walltime guard's count of
    ranges that still fit); the events waiting for a bundle are a running total (``outbox``)."""

    spec: JobSpec
    config: EventServiceConfig
    leader: int
    limits: Limits
    opened_at: float | None = None
    members: set[int] = field(default_factory=set)
    queue: deque[EventRange] = field(default_factory=deque)
    holdings: Holdings = field(default_factory=Holdings)
    waiting: Waiting = field(default_factory=Waiting)
    register: RangeRegister = field(default_factory=RangeRegister)
    tally: Tally = field(default_factory=Tally)
    outbox: Outbox = field(init=False)
    exhausted: bool = False
    fetching: bool = False
    fetch_retry_at: float = 0.0
    leasing_stopped: bool = False
    stop: tuple[int, str] | None = None
    member_records: list[JobRecord] = field(default_factory=list)
    killing: set[int] = field(default_factory=set)
    last_heartbeat: float = 0.0
    closing: bool = False
    _pass_gate: PassGate = field(default_factory=PassGate)

    # The parts' facts, under the names the scheduler, the controller, the live view and the tests use.
    n_events = _KeptBy[dict[str, int]]("register")
    """Events of every range rank 0 holds (queued, dealt, waiting for its bundle or its report): a
    range leaves when its status is sent, so this is also the set of ranges in flight."""
    reported = _KeptBy[ReportedRanges]("register")
    dealt = _KeptBy[dict[str, tuple[int, EventRange]]]("holdings")
    by_rank = _KeptBy[dict[int, dict[str, None]]]("holdings")
    to_bundle = _KeptBy[list[EventRangeUpdate]]("outbox")
    bundle_events = _KeptBy[int]("outbox")
    bundle_opened_at = _KeptBy[float | None]("outbox")
    bundling = _KeptBy[bool]("outbox")
    to_report = _KeptBy[OutcomeQueue]("outbox")
    last_report = _KeptBy[float]("outbox")
    wall_sum = _KeptBy[float]("tally")
    wall_count = _KeptBy[int]("tally")
    consumed = _KeptBy[int]("tally")
    processed_events = _KeptBy[int]("tally")
    finished_ranges = _KeptBy[int]("tally")
    finished_events = _KeptBy[int]("tally")
    first_failure = _KeptBy[tuple[int, str] | None]("tally")

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.tally, self.register)

    @property
    def panda_id(self) -> int:
        return self.spec.panda_id

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def wants_ranks(self) -> bool:
        """New ranks may join: the job is set up and ranges may still come."""
        return self.is_open and not self.closing and not self.leasing_stopped and not (
            self.exhausted and not self.queue)

    # -- ranks ------------------------------------------------------------------------

    def open(self, now: float) -> None:
        if self.opened_at is None:
            self.opened_at = now
            self.outbox.last_report = now

    def join(self, rank: int) -> None:
        self.members.add(rank)

    def member_done(self, rank: int, record: JobRecord) -> None:
        """The rank's part of the job ended: fail what it still held (it said nothing about them)."""
        self.member_records.append(record)
        code = record.pilot_error_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE)
        self.member_lost(rank, code, f"rank {rank} ended the job without reporting the range")
        if rank == self.leader and not self.is_open:
            self.leasing_stopped = True  # set-up failed: the job fails with the leader's error
            self.stop = (record.pilot_error_code or int(ErrorCode.SETUPFAILURE),
                         record.pilot_error_diag or "event-service set-up failed")

    def member_lost(self, rank: int, code: int, diag: str) -> None:
        """The rank is out of the job: what it still held is failed with ``code``."""
        self.members.discard(rank)
        self.killing.discard(rank)
        self.waiting.take(rank)
        self.fail_held(rank, code, diag)

    def member_gone(self, rank: int, code: int, diag: str) -> None:
        """The rank was lost: what it held is failed; a leader lost before the set-up ended ends the job
        (no other rank may join a job that was never set up)."""
        self.member_lost(rank, code, diag)
        if rank == self.leader and not self.is_open:
            self.leasing_stopped = True
            if self.stop is None:
                self.stop = (code, diag)

    def fail_held(self, rank: int, code: int, diag: str) -> None:
        """O(held): the rank's own index, not a scan of every dealt range."""
        for range_id in self.holdings.release(rank):
            self.outbox.report(failed(range_id, code, diag))
        self.waiting.held_changed(rank, 0)

    def held_by(self, rank: int) -> int:
        return self.holdings.held_by(rank)

    def _deal_batch(self, rank: int, n: int) -> tuple[EventRange, ...]:
        """The next ``n`` queued ranges, dealt to the rank in one pass."""
        if n <= 0:
            return ()
        popleft = self.queue.popleft
        batch = tuple([popleft() for _ in range(n)])
        self.holdings.deal(rank, batch)
        return batch

    # -- leasing ------------------------------------------------------------------------

    def on_fetched(self, now: float, event: RangesFetched, retry: float) -> None:
        self.fetching = False
        self._pass_gate.touch()
        for update in event.bad:  # already failed: new ones are reported as they are
            if self.register.take_in(update.event_range_id, 1):
                self.outbox.report(update)
            else:
                self._handed_out_again([update.event_range_id])
        if event.unavailable:
            self.fetch_retry_at = now + retry
            return
        if not event.ranges and not event.bad:
            self.exhausted = True
        self._take_in_all(event.ranges)
        if self.leasing_stopped:
            self._fail_queue(*(self.stop or (int(ErrorCode.ESRECOVERABLE), "leasing stopped")))

    def _take_in_all(self, ranges: Iterable[EventRange]) -> None:
        """A lease's new ranges, queued; one handed out again while rank 0 holds it, or soon after its
        status was sent, is ignored: it is never dealt or reported twice."""
        new, refused = self.register.take_in_all(ranges)
        self.queue.extend(new)
        self._handed_out_again(refused)

    def _handed_out_again(self, range_ids: Iterable[str]) -> None:
        for range_id in range_ids:
            log.warning("job %d: range %s handed out again by the source: ignored", self.panda_id, range_id)

    def fetch_wanted(self, now: float, guard_at: float | None) -> int:
        """Ranges to lease now (0: none): keep ``prefetch_seconds`` of consumption queued."""
        if (not self.is_open or self.exhausted or self.leasing_stopped or self.fetching
                or now < self.fetch_retry_at or self.closing or not self.members):
            return 0  # (without members, ranges would only wait: lease again when a rank joins)
        return pacing.lease_size(self.config, members=len(self.members), queued=len(self.queue),
                                 wanted=self.waiting.total, rate=self.consumption_rate(now),
                                 guard_at=guard_at, now=now)

    def consumption_rate(self, now: float) -> float:
        return pacing.consumption_rate(self.tally.consumed, self.opened_at, now)

    def mean_wall(self) -> float | None:
        return self.tally.mean_wall()

    # -- dealing ------------------------------------------------------------------------

    def on_report(self, now: float, event: RangesReported, guard_at: float | None) -> list[DealRanges]:
        if event.outcomes:
            self._record_outcomes(now, event.rank, event.outcomes)
        if event.want <= 0 or event.rank not in self.members:
            return []
        self.waiting.park(event.rank, event.want, self.holdings.held_by(event.rank))
        self._pass_gate.touch()
        return self.serve_waiting(guard_at, now)

    def serve_waiting(self, guard_at: float | None, now: float) -> list[DealRanges]:
        """Answer parked requests from the queue, oldest first; 'no more' once nothing more can come.

        O(1) when nothing that decides it changed since the last call (the scheduler calls this on
        every pass); otherwise O(ranks dealt to or answered)."""
        if not self.waiting:
            return []
        if self.leasing_stopped or self.closing or (self.exhausted and not self.queue):
            return self._answer_all()
        fits = pacing.ranges_that_fit(guard_at, now, self.tally.mean_wall())
        if not self._pass_gate.open(fits):
            return []  # no request, range or stop since the last pass, and the guard allows as much
        if fits is not None and fits <= 0:
            if self.waiting.any_holding(0):
                # Not even one range fits before the guard on an idle rank: none will on any rank.  The
                # guard cuts the job with ranges left, so the job fails REACHEDMAXTIME like a normal one.
                return self.stop_leasing(int(ErrorCode.REACHEDMAXTIME),
                                         "no range can finish before the walltime guard", job_failure=True)
            return self._answer_all()
        actions = [] if fits is None else self._answer(self.waiting.holding_at_least(fits))
        held_by = self.holdings.held_by
        while self.queue and self.waiting:
            rank, want = self.waiting.oldest()
            batch = self._deal_batch(rank, min(pacing.allowance(want, fits, held_by(rank)), len(self.queue)))
            actions.append(DealRanges(rank, self.panda_id, batch, no_more=False))
        if self.exhausted and not self.queue:
            actions += self._answer_all()
        return actions

    def _answer(self, ranks: Iterable[int]) -> list[DealRanges]:
        """'No more' to these waiting ranks."""
        answers = [DealRanges(rank, self.panda_id, (), no_more=True) for rank in ranks]
        for answer in answers:
            self.waiting.take(answer.rank)
        return answers

    def _answer_all(self) -> list[DealRanges]:
        return self._answer(list(self.waiting))

    def allowance(self, rank: int, want: int, guard_at: float | None, now: float) -> int:
        """How many of ``want`` ranges this rank may get so that all it holds can finish in time."""
        if self.leasing_stopped or self.closing:
            return 0
        fits = pacing.ranges_that_fit(guard_at, now, self.tally.mean_wall())
        return pacing.allowance(want, fits, self.held_by(rank))

    def _record_outcomes(self, now: float, rank: int, outcomes: Iterable[EventRangeUpdate]) -> None:
        """A report's outcomes at once: the hot path of a busy job (one pass to take the ranges back, one to
        count them; no chain of calls per range).  An outcome counts only from the rank the range is dealt
        to, and the range leaves ``dealt`` as it counts."""
        batch = RangeOutcomes.of(outcomes)
        ranges = self.holdings.take_back_all(rank, batch.ids)
        if ranges is not None:  # the usual report: every range dealt to this rank, once
            self.outbox.record_batch(now, batch, ranges)
            took = bool(ranges)
        else:
            taken, strays = self.holdings.take_back(rank, batch)
            for range_id in strays:
                log.warning("job %d: outcome for range %s from rank %d ignored (not dealt to it, or already in)",
                            self.panda_id, range_id, rank)
            self.outbox.record(now, taken)
            took = bool(taken)
        if took:
            self.waiting.held_changed(rank, self.holdings.held_by(rank))

    # -- stopping ------------------------------------------------------------------------

    def stop_leasing(self, code: int, diag: str, job_failure: bool) -> list[DealRanges]:
        """No more ranges for this job: queued ones are failed (the server hands them out again)."""
        self.leasing_stopped = True
        if job_failure and self.stop is None:
            self.stop = (code, diag)
        self._fail_queue(code, diag)
        return self._answer_all()

    def drop_queue(self, code: int, diag: str) -> None:
        """Fail the queued ranges now (no rank is left to take them); leasing goes on when one joins."""
        if self.queue:
            log.warning("job %d: %d queued range(s) failed: %s", self.panda_id, len(self.queue), diag)
        self._fail_queue(code, diag)

    def _fail_queue(self, code: int, diag: str) -> None:
        while self.queue:
            self.outbox.report(failed(self.queue.popleft().event_range_id, code, f"not processed: {diag}"))

    # -- bundles and reports ---------------------------------------------------------------

    def due_bundle(self, now: float) -> MakeBundle | None:
        taken = self.outbox.take_bundle(now, self.config, self._draining)
        return None if taken is None else MakeBundle(self.spec, *taken)

    def on_bundle(self, event: BundleStaged) -> ReportRanges | None:
        staged = self.outbox.bundle_back(event.updates, event.error)
        return ReportRanges(self.spec, event.updates, event.bundle) if staged else None

    def due_report(self, now: float) -> ReportRanges | None:
        updates = self.outbox.take_report(now, self.config.report_interval, self._draining)
        return None if updates is None else ReportRanges(self.spec, updates)

    def _draining(self) -> bool:
        """Nothing more will be processed: flush bundles and reports now."""
        return not self.members and (self.exhausted or self.leasing_stopped or self.closing or self.stop is not None)

    # -- the end ------------------------------------------------------------------------

    def is_done(self) -> bool:
        """Every range leased is reported, no rank works on the job, nothing is in flight."""
        return (self._draining() and not self.fetching and not self.queue and not self.holdings.dealt
                and self.outbox.is_empty() and not self.closing)

    def final_record(self) -> JobRecord:
        """The job's final record: nEvents, CPU and memory of all its ranks, and its state."""
        return esrecord.final_record(self.spec, self.leader, self.member_records, self.tally, self.stop)

    def progress_record(self) -> JobRecord:
        """A heartbeat for the server while the job runs: running, with the events finished so far."""
        return esrecord.progress_record(self.spec, self.leader, self.member_records, self.tally.finished_events)

    def status(self) -> str:
        return (f"ES job {self.panda_id}: ranks={len(self.members)} queued={len(self.queue)} "
                f"dealt={len(self.dealt)} finished={self.finished_ranges} reported={len(self.reported)}")
