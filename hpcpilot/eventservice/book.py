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
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from hpcpilot.config import EventServiceConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice.messages import (
    MAX_RANGES_PER_FETCH,
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
from hpcpilot.eventservice.reported import REPORTED_WINDOW, ReportedRanges
from hpcpilot.eventservice.waiting import Waiting
from hpcpilot.monitor.metrics import Limits
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.states import EventRangeStatus, JobState

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


@dataclass
class EsBook:
    """One event-service job at rank 0.

    Cost: every request, outcome and pass is O(1) amortized in the ranks, the ranges dealt and the
    ranges ever leased (plus O(what it deals or answers)); memory is O(ranges in flight).  ``dealt``
    is indexed by rank (``by_rank``); a pass over the waiting ranks happens only when something that
    decides it changed (``_dirty``: a request, a lease, a stop; or the walltime guard's count of
    ranges that still fit, ``_fits_seen``); the events waiting for a bundle are a running total."""

    spec: JobSpec
    config: EventServiceConfig
    leader: int
    limits: Limits
    opened_at: float | None = None
    members: set[int] = field(default_factory=set)
    queue: deque[EventRange] = field(default_factory=deque)
    dealt: dict[str, tuple[int, EventRange]] = field(default_factory=dict)
    by_rank: dict[int, dict[str, None]] = field(default_factory=dict)
    """Rank -> the ids of the ranges dealt to it (emptied ranks leave)."""
    waiting: Waiting = field(default_factory=Waiting)
    to_bundle: list[EventRangeUpdate] = field(default_factory=list)
    bundle_events: int = 0
    """Events of the ranges in ``to_bundle``."""
    bundle_opened_at: float | None = None
    bundling: bool = False
    to_report: list[EventRangeUpdate] = field(default_factory=list)
    last_report: float = 0.0
    reported: ReportedRanges = field(default_factory=ReportedRanges)
    n_events: dict[str, int] = field(default_factory=dict)
    """Events of every range rank 0 holds (queued, dealt, waiting for its bundle or its report): a
    range leaves when its status is sent, so this is also the set of ranges in flight."""
    exhausted: bool = False
    fetching: bool = False
    fetch_retry_at: float = 0.0
    leasing_stopped: bool = False
    stop: tuple[int, str] | None = None
    wall_sum: float = 0.0
    wall_count: int = 0
    consumed: int = 0
    processed_events: int = 0  # events of ranges a rank finished, bundled yet or not: the live view's progress
    finished_ranges: int = 0
    finished_events: int = 0
    first_failure: tuple[int, str] | None = None
    member_records: list[JobRecord] = field(default_factory=list)
    killing: set[int] = field(default_factory=set)
    last_heartbeat: float = 0.0
    closing: bool = False
    _dirty: bool = False
    _fits_seen: int | None = None

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
            self.last_report = now

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
        for range_id in self.by_rank.pop(rank, {}):
            del self.dealt[range_id]
            self._queue_report(failed(range_id, code, diag))
        self.waiting.held_changed(rank, 0)

    def held_by(self, rank: int) -> int:
        return len(self.by_rank.get(rank, ()))

    def _deal_batch(self, rank: int, n: int) -> tuple[EventRange, ...]:
        """The next ``n`` queued ranges, dealt to the rank in one pass (``dealt`` and its index by rank)."""
        if n <= 0:
            return ()
        popleft = self.queue.popleft
        batch = tuple([popleft() for _ in range(n)])
        dealt, held = self.dealt, self.by_rank.setdefault(rank, {})
        for item in batch:
            dealt[item.event_range_id] = (rank, item)
            held[item.event_range_id] = None
        return batch

    # -- leasing ------------------------------------------------------------------------

    def on_fetched(self, now: float, event: RangesFetched, retry: float) -> None:
        self.fetching = False
        self._dirty = True
        for update in event.bad:
            if self._take_in(update.event_range_id, 1):
                self._queue_report(update)
        if event.unavailable:
            self.fetch_retry_at = now + retry
            return
        if not event.ranges and not event.bad:
            self.exhausted = True
        self._take_in_all(event.ranges)
        if self.leasing_stopped:
            self._fail_queue(*(self.stop or (int(ErrorCode.ESRECOVERABLE), "leasing stopped")))

    def _take_in(self, range_id: str, n_events: int) -> bool:
        """A range from the source is new unless rank 0 holds it (``n_events``) or sent it lately
        (``reported``): a range handed out again is then never dealt or reported twice."""
        if range_id in self.n_events or range_id in self.reported:
            log.warning("job %d: range %s handed out again by the source: ignored", self.panda_id, range_id)
            return False
        self.n_events[range_id] = n_events
        return True

    def _take_in_all(self, ranges: Iterable[EventRange]) -> None:
        """``_take_in`` for a whole lease, queueing the new ranges: one pass with no call per range."""
        held, reported, queue = self.n_events, self.reported, self.queue
        for item in ranges:
            range_id = item.event_range_id
            if range_id in held or range_id in reported:
                log.warning("job %d: range %s handed out again by the source: ignored", self.panda_id, range_id)
                continue
            held[range_id] = item.last_event - item.start_event + 1  # EventRange.n_events, without the call
            queue.append(item)

    def fetch_wanted(self, now: float, guard_at: float | None) -> int:
        """Ranges to lease now (0: none): keep ``prefetch_seconds`` of consumption queued."""
        if (not self.is_open or self.exhausted or self.leasing_stopped or self.fetching
                or now < self.fetch_retry_at or self.closing or not self.members):
            return 0  # (without members, ranges would only wait: lease again when a rank joins)
        per_request = max(1, self.config.ranges_per_request)
        target = 2 * per_request * max(1, len(self.members))
        rate = self.consumption_rate(now)
        if rate:
            target = max(target, math.ceil(rate * self.config.prefetch_seconds))
            if guard_at is not None:
                target = min(target, max(per_request, math.ceil(rate * max(0.0, guard_at - now))))
        target += self.waiting.total
        if len(self.queue) >= target / 2 + self.waiting.total and self.queue:
            return 0
        return min(MAX_RANGES_PER_FETCH, max(per_request, target - len(self.queue)))

    def consumption_rate(self, now: float) -> float:
        if self.opened_at is None or now - self.opened_at < 1.0 or not self.consumed:
            return 0.0
        return self.consumed / (now - self.opened_at)

    def mean_wall(self) -> float | None:
        return self.wall_sum / self.wall_count if self.wall_count else None

    # -- dealing ------------------------------------------------------------------------

    def on_report(self, now: float, event: RangesReported, guard_at: float | None) -> list[DealRanges]:
        if event.outcomes:
            self._record_outcomes(now, event.rank, event.outcomes)
        if event.want <= 0 or event.rank not in self.members:
            return []
        self.waiting.park(event.rank, event.want, self.held_by(event.rank))
        self._dirty = True
        return self.serve_waiting(guard_at, now)

    def serve_waiting(self, guard_at: float | None, now: float) -> list[DealRanges]:
        """Answer parked requests from the queue, oldest first; 'no more' once nothing more can come.

        O(1) when nothing that decides it changed since the last call (the scheduler calls this on
        every pass); otherwise O(ranks dealt to or answered)."""
        if not self.waiting:
            return []
        if self.leasing_stopped or self.closing or (self.exhausted and not self.queue):
            return self._answer_all()
        fits = self._fits(guard_at, now)
        if not self._dirty and fits == self._fits_seen:
            return []  # no request, range or stop since the last pass, and the guard allows as much
        self._dirty, self._fits_seen = False, fits
        if fits is not None and fits <= 0:
            if self.waiting.any_holding(0):
                # Not even one range fits before the guard on an idle rank: none will on any rank.  The
                # guard cuts the job with ranges left, so the job fails REACHEDMAXTIME like a normal one.
                return self.stop_leasing(int(ErrorCode.REACHEDMAXTIME),
                                         "no range can finish before the walltime guard", job_failure=True)
            return self._answer_all()
        actions = [] if fits is None else self._answer(self.waiting.holding_at_least(fits))
        while self.queue and self.waiting:
            rank, want = self.waiting.oldest()
            allowed = want if fits is None else min(want, fits - self.held_by(rank))
            batch = self._deal_batch(rank, min(allowed, len(self.queue)))
            actions.append(DealRanges(rank, self.panda_id, batch, no_more=False))
        if self.exhausted and not self.queue:
            actions += self._answer_all()
        return actions

    def _fits(self, guard_at: float | None, now: float) -> int | None:
        """Ranges one rank can still finish before the guard at the mean wall time (None: no limit)."""
        wall = self.mean_wall()
        if guard_at is None or wall is None or wall <= 0:
            return None
        return math.floor(max(0.0, guard_at - now) / wall)

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
        fits = self._fits(guard_at, now)
        return want if fits is None else max(0, min(want, fits - self.held_by(rank)))

    def _no_more_coming(self) -> bool:
        return self.exhausted or self.leasing_stopped or self.closing

    def _record_outcomes(self, now: float, rank: int, outcomes: Iterable[EventRangeUpdate]) -> None:
        """A report's outcomes in one pass: the hot path of a busy job (one call per
        report, not a chain of five calls per range).  The same rules: an outcome counts only from the
        rank the range is dealt to, and the range leaves ``dealt`` as it counts."""
        dealt, held = self.dealt, self.by_rank.get(rank, {})
        to_report, to_bundle, finished = self.to_report, self.to_bundle, EventRangeStatus.FINISHED
        settled = counted = finished_ranges = finished_events = processed = 0
        for outcome in outcomes:
            range_id = outcome.event_range_id
            entry = dealt.get(range_id)
            if entry is None or entry[0] != rank:
                log.warning("job %d: outcome for range %s from rank %d ignored (not dealt to it, or already in)",
                            self.panda_id, range_id, rank)
                continue
            del dealt[range_id]
            del held[range_id]
            item, counted = entry[1], counted + 1
            if outcome.wall_time > 0:
                self.wall_sum += outcome.wall_time
                self.wall_count += 1
            if outcome.status != finished:
                settled += 1
                to_report.append(outcome)
                if self.first_failure is None:
                    self.first_failure = (outcome.error_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE),
                                          outcome.error_diag)
                continue
            events = item.last_event - item.start_event + 1
            processed += events
            if outcome.output:
                if not to_bundle:
                    self.bundle_opened_at = now
                to_bundle.append(outcome)
                self.bundle_events += events
            else:
                settled, finished_ranges = settled + 1, finished_ranges + 1
                finished_events += self.n_events.get(range_id, 1)
                to_report.append(outcome)
        self.consumed += counted
        self.processed_events += processed
        self.finished_ranges += finished_ranges
        self.finished_events += finished_events
        self.reported.settled(settled)
        if counted:
            if not held:
                del self.by_rank[rank]
            self.waiting.held_changed(rank, len(held))

    def _queue_report(self, update: EventRangeUpdate) -> None:
        """Every caller hands a range it just took out of the queue, ``dealt`` or a fetch's new
        ranges, so no range comes here twice."""
        self.reported.settled()
        self._enqueue(update)

    def _enqueue(self, update: EventRangeUpdate) -> None:
        self.to_report.append(update)
        self._count(update)

    def _count(self, update: EventRangeUpdate) -> None:
        if update.status == EventRangeStatus.FINISHED:
            self.finished_ranges += 1
            self.finished_events += self.n_events.get(update.event_range_id, 1)
        elif self.first_failure is None:
            self.first_failure = (update.error_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE), update.error_diag)

    def _sent(self, updates: Iterable[EventRangeUpdate]) -> None:
        """These statuses go out now: the ranges leave rank 0 (their ids stay in ``reported`` a while)."""
        ids = [update.event_range_id for update in updates]
        pop = self.n_events.pop
        for range_id in ids:
            pop(range_id, None)
        self.reported.sent_all(ids)

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
            self._queue_report(failed(self.queue.popleft().event_range_id, code, f"not processed: {diag}"))

    # -- bundles and reports ---------------------------------------------------------------

    def due_bundle(self, now: float) -> MakeBundle | None:
        if self.bundling or not self.to_bundle:
            return None
        events = self.bundle_events
        age = now - (self.bundle_opened_at or now)
        if events < self.config.bundle_events and age < self.config.bundle_seconds and not self._draining():
            return None
        updates, self.to_bundle, self.bundle_events = tuple(self.to_bundle), [], 0
        self.bundling = True
        self.reported.settled(len(updates))
        return MakeBundle(self.spec, updates, events)

    def on_bundle(self, event: BundleStaged) -> ReportRanges | None:
        self.bundling = False
        if event.error is not None:
            code, diag = event.error
            for update in event.updates:  # settled already, when the bundle was made
                self._enqueue(failed(update.event_range_id, code, f"output not staged out: {diag}"))
            return None
        for update in event.updates:
            self._count(update)
        self._sent(event.updates)
        return ReportRanges(self.spec, event.updates, event.bundle)

    def due_report(self, now: float) -> ReportRanges | None:
        if not self.to_report:
            return None
        if now - self.last_report < self.config.report_interval and not self._draining():
            return None
        self.last_report = now
        updates, self.to_report = tuple(self.to_report), []
        self._sent(updates)
        return ReportRanges(self.spec, updates)

    def _draining(self) -> bool:
        """Nothing more will be processed: flush bundles and reports now."""
        return not self.members and (self._no_more_coming() or self.stop is not None)

    # -- the end ------------------------------------------------------------------------


    def is_done(self) -> bool:
        """Every range leased is reported, no rank works on the job, nothing is in flight."""
        return (self._draining() and not self.fetching and not self.queue and not self.dealt
                and not self.to_bundle and not self.bundling and not self.to_report and not self.closing)

    def final_record(self) -> JobRecord:
        """The job's final record: nEvents, CPU and memory of all its ranks, and its state."""
        record = JobRecord(self.panda_id, attempt_nr=self.spec.attempt_nr, rank=self.leader,
                           core_count=self.spec.core_count)
        _merge_members(record, self.member_records, self.leader)
        record.n_events = self.finished_events
        record.job_metrics = " ".join(filter(None, [record.job_metrics, f"nEvents={self.finished_events}"]))
        record.n_input_files = len(self.spec.inputs)
        if self.stop is not None:
            record.fail(*self.stop)
        elif self.finished_ranges:
            record.state = JobState.FINISHED
        elif self.first_failure is not None:
            record.fail(self.first_failure[0], f"no event range finished; first failure: {self.first_failure[1]}")
        else:
            record.fail(ErrorCode.ESNOEVENTS, "the job source gave no event ranges")
        return record

    def progress_record(self) -> JobRecord:
        """A heartbeat for the server while the job runs: running, with the events finished so far."""
        record = JobRecord(self.panda_id, state=JobState.RUNNING, attempt_nr=self.spec.attempt_nr,
                           rank=self.leader, core_count=self.spec.core_count)
        _merge_members(record, self.member_records, self.leader)
        record.n_events = self.finished_events
        return record

    def status(self) -> str:
        return (f"ES job {self.panda_id}: ranks={len(self.members)} queued={len(self.queue)} "
                f"dealt={len(self.dealt)} finished={self.finished_ranges} reported={len(self.reported)}")



def _merge_members(record: JobRecord, members: Iterable[JobRecord], leader: int) -> None:
    """CPU time adds up over ranks (the whole seconds PanDA gets are those of the precise sum, not a sum of
    rounded parts: 64 ranks of 0.4 s are 26 s, not 0); memory peaks are per rank, so the job reports the largest."""
    members = list(members)
    for member in members:
        record.cpu_consumption_time += member.cpu_consumption_time
        record.cpu_seconds += member.cpu_seconds
        for attr in ("max_pss", "max_rss", "max_vmem", "max_swap", "avg_pss", "avg_rss", "avg_vmem", "avg_swap"):
            setattr(record, attr, max(getattr(record, attr), getattr(member, attr)))
        for attr in ("tot_rchar", "tot_wchar", "tot_rbytes", "tot_wbytes"):
            setattr(record, attr, getattr(record, attr) + getattr(member, attr))
    if record.cpu_seconds > 0:
        record.cpu_consumption_time = round(record.cpu_seconds)
    starts = [m.start_time for m in members if m.start_time]
    ends = [m.end_time for m in members if m.end_time]
    record.start_time = min(starts) if starts else ""
    record.end_time = max(ends) if ends else ""
    lead = next((m for m in members if m.rank == leader), members[0] if members else None)
    if lead is not None:
        record.node, record.site_name, record.pilot_timing = lead.node, lead.site_name, lead.pilot_timing
        record.job_metrics = " ".join(f for f in lead.job_metrics.split() if not f.startswith("nEvents="))
