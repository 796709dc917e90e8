"""Rank 0's ledger of one event-service job: pure bookkeeping, time passed in.

Every range the source leased is in exactly one place: queued at rank 0, dealt to a rank,
finished and waiting for (or inside) an output bundle, waiting for the next status report,
or reported.  ``reported`` is the guard that makes every range reported exactly once: an
outcome for a range that is not dealt to the rank that sends it is ignored and logged.

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
from hpcpilot.monitor.metrics import Limits
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import OutputBundle
from hpcpilot.states import EventRangeStatus, JobState

log = logging.getLogger(__name__)

MAX_RANGES_PER_FETCH = 1000
"""nRanges asked in one getEventRanges call (the server caps a call at 100000 events)."""

# ---- events (into the scheduler) ------------------------------------------------------


@dataclass(frozen=True)
class RangesFetched:
    """The source's answer to FetchRanges: parsed ranges, unusable ones (already failed), outage."""

    panda_id: int
    ranges: tuple[EventRange, ...]
    bad: tuple[EventRangeUpdate, ...] = ()
    unavailable: bool = False


@dataclass(frozen=True)
class RangesReported:
    """A rank's range outcomes, and how many more ranges it wants."""

    rank: int
    panda_id: int
    outcomes: tuple[EventRangeUpdate, ...]
    want: int


@dataclass(frozen=True)
class BundleStaged:
    """A bundle was written and staged out (``bundle``), or could not be (``error``)."""

    panda_id: int
    updates: tuple[EventRangeUpdate, ...]
    bundle: OutputBundle | None
    error: tuple[int, str] | None = None


@dataclass(frozen=True)
class EsJobClosed:
    """The job's log was staged out; ``record`` is the final record to report."""

    record: JobRecord


# ---- actions (out of the scheduler) ------------------------------------------------------


@dataclass(frozen=True)
class FetchRanges:
    job: JobSpec
    n: int


@dataclass(frozen=True)
class DealRanges:
    rank: int
    panda_id: int
    ranges: tuple[EventRange, ...]
    no_more: bool


@dataclass(frozen=True)
class MakeBundle:
    """Zip these finished outputs, stage the zip out, answer with BundleStaged."""

    job: JobSpec
    updates: tuple[EventRangeUpdate, ...]
    num_events: int


@dataclass(frozen=True)
class ReportRanges:
    job: JobSpec
    updates: tuple[EventRangeUpdate, ...]
    bundle: OutputBundle | None = None


@dataclass(frozen=True)
class CloseEsJob:
    """Stage the job's log out and answer with EsJobClosed carrying ``record``."""

    job: JobSpec
    record: JobRecord


# ---- the ledger -------------------------------------------------------------------------


def failed(range_id: str, code: int, diag: str) -> EventRangeUpdate:
    return EventRangeUpdate(range_id, EventRangeStatus.FAILED, int(code), diag)


@dataclass
class EsBook:
    """One event-service job at rank 0."""

    spec: JobSpec
    config: EventServiceConfig
    leader: int
    limits: Limits
    opened_at: float | None = None
    members: set[int] = field(default_factory=set)
    queue: deque[EventRange] = field(default_factory=deque)
    dealt: dict[str, tuple[int, EventRange]] = field(default_factory=dict)
    waiting: dict[int, int] = field(default_factory=dict)
    to_bundle: list[EventRangeUpdate] = field(default_factory=list)
    bundle_opened_at: float | None = None
    bundling: bool = False
    to_report: list[EventRangeUpdate] = field(default_factory=list)
    last_report: float = 0.0
    reported: set[str] = field(default_factory=set)
    n_events: dict[str, int] = field(default_factory=dict)
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
        self.waiting.pop(rank, None)
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
        for range_id in [rid for rid, (owner, _r) in self.dealt.items() if owner == rank]:
            del self.dealt[range_id]
            self._queue_report(failed(range_id, code, diag))

    def held_by(self, rank: int) -> int:
        return sum(1 for owner, _r in self.dealt.values() if owner == rank)

    # -- leasing ------------------------------------------------------------------------

    def on_fetched(self, now: float, event: RangesFetched, retry: float) -> None:
        self.fetching = False
        for update in event.bad:
            self._queue_report(update)
        if event.unavailable:
            self.fetch_retry_at = now + retry
            return
        if not event.ranges and not event.bad:
            self.exhausted = True
        fresh = [r for r in event.ranges if r.event_range_id not in self.reported
                 and r.event_range_id not in self.dealt]
        self.queue.extend(fresh)
        for item in fresh:
            self.n_events[item.event_range_id] = item.n_events
        if self.leasing_stopped:
            self._fail_queue(*(self.stop or (int(ErrorCode.ESRECOVERABLE), "leasing stopped")))

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
        target += sum(self.waiting.values())
        if len(self.queue) >= target / 2 + sum(self.waiting.values()) and self.queue:
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
        for outcome in event.outcomes:
            self._record_outcome(now, event.rank, outcome)
        if event.want <= 0 or event.rank not in self.members:
            return []
        self.waiting[event.rank] = event.want
        return self.serve_waiting(guard_at, now)

    def serve_waiting(self, guard_at: float | None, now: float) -> list[DealRanges]:
        """Answer parked requests from the queue; 'no more' once nothing more can come."""
        actions: list[DealRanges] = []
        for rank, want in list(self.waiting.items()):
            if not self.queue and self._no_more_coming():
                del self.waiting[rank]
                actions.append(DealRanges(rank, self.panda_id, (), no_more=True))
                continue
            allowed = self.allowance(rank, want, guard_at, now)
            if allowed == 0 and self.held_by(rank) == 0 and not self.leasing_stopped:
                # Not even one range fits before the guard on an idle rank: none will on any rank.  The
                # guard cuts the job with ranges left, so the job fails REACHEDMAXTIME like a normal one.
                actions += self.stop_leasing(int(ErrorCode.REACHEDMAXTIME),
                                             "no range can finish before the walltime guard", job_failure=True)
                break
            if allowed == 0:
                del self.waiting[rank]
                actions.append(DealRanges(rank, self.panda_id, (), no_more=True))
                continue
            if not self.queue:
                continue
            batch = tuple(self.queue.popleft() for _ in range(min(allowed, len(self.queue))))
            for item in batch:
                self.dealt[item.event_range_id] = (rank, item)
            del self.waiting[rank]
            actions.append(DealRanges(rank, self.panda_id, batch, no_more=False))
        return actions

    def allowance(self, rank: int, want: int, guard_at: float | None, now: float) -> int:
        """How many of ``want`` ranges this rank may get so that all it holds can finish in time."""
        if self.leasing_stopped or self.closing:
            return 0
        wall = self.mean_wall()
        if guard_at is None or wall is None or wall <= 0:
            return want
        fits = math.floor(max(0.0, guard_at - now) / wall) - self.held_by(rank)
        return max(0, min(want, fits))

    def _no_more_coming(self) -> bool:
        return self.exhausted or self.leasing_stopped or self.closing

    def _record_outcome(self, now: float, rank: int, outcome: EventRangeUpdate) -> None:
        held = self.dealt.get(outcome.event_range_id)
        if held is None or held[0] != rank:
            log.warning("job %d: outcome for range %s from rank %d ignored (not dealt to it, or already in)",
                        self.panda_id, outcome.event_range_id, rank)
            return
        del self.dealt[outcome.event_range_id]
        self.consumed += 1
        if outcome.status == EventRangeStatus.FINISHED:
            self.processed_events += self.n_events.get(outcome.event_range_id, 1)
        if outcome.wall_time > 0:
            self.wall_sum += outcome.wall_time
            self.wall_count += 1
        if outcome.status == EventRangeStatus.FINISHED and outcome.output:
            if not self.to_bundle:
                self.bundle_opened_at = now
            self.to_bundle.append(outcome)
        else:
            self._queue_report(outcome)

    def _queue_report(self, update: EventRangeUpdate) -> None:
        if update.event_range_id in self.reported:
            return
        self.reported.add(update.event_range_id)
        self.to_report.append(update)
        self._count(update)

    def _count(self, update: EventRangeUpdate) -> None:
        if update.status == EventRangeStatus.FINISHED:
            self.finished_ranges += 1
            self.finished_events += self.n_events.get(update.event_range_id, 1)
        elif self.first_failure is None:
            self.first_failure = (update.error_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE), update.error_diag)

    # -- stopping ------------------------------------------------------------------------

    def stop_leasing(self, code: int, diag: str, job_failure: bool) -> list[DealRanges]:
        """No more ranges for this job: queued ones are failed (the server hands them out again)."""
        self.leasing_stopped = True
        if job_failure and self.stop is None:
            self.stop = (code, diag)
        self._fail_queue(code, diag)
        answers = [DealRanges(rank, self.panda_id, (), no_more=True) for rank in self.waiting]
        self.waiting.clear()
        return answers

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
        events = sum(self.n_events.get(u.event_range_id, 1) for u in self.to_bundle)
        age = now - (self.bundle_opened_at or now)
        if events < self.config.bundle_events and age < self.config.bundle_seconds and not self._draining():
            return None
        updates, self.to_bundle = tuple(self.to_bundle), []
        self.bundling = True
        for update in updates:
            self.reported.add(update.event_range_id)
        return MakeBundle(self.spec, updates, events)

    def on_bundle(self, event: BundleStaged) -> ReportRanges | None:
        self.bundling = False
        if event.error is not None:
            code, diag = event.error
            for update in event.updates:
                self.reported.discard(update.event_range_id)
                self._queue_report(failed(update.event_range_id, code, f"output not staged out: {diag}"))
            return None
        for update in event.updates:
            self._count(update)
        return ReportRanges(self.spec, event.updates, event.bundle)

    def due_report(self, now: float) -> ReportRanges | None:
        if not self.to_report:
            return None
        if now - self.last_report < self.config.report_interval and not self._draining():
            return None
        self.last_report = now
        updates, self.to_report = tuple(self.to_report), []
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
    """CPU time adds up over ranks; memory peaks are per rank, so the job reports the largest."""
    members = list(members)
    for member in members:
        record.cpu_consumption_time += member.cpu_consumption_time
        for attr in ("max_pss", "max_rss", "max_vmem", "max_swap", "avg_pss", "avg_rss", "avg_vmem", "avg_swap"):
            setattr(record, attr, max(getattr(record, attr), getattr(member, attr)))
        for attr in ("tot_rchar", "tot_wchar", "tot_rbytes", "tot_wbytes"):
            setattr(record, attr, getattr(record, attr) + getattr(member, attr))
    starts = [m.start_time for m in members if m.start_time]
    ends = [m.end_time for m in members if m.end_time]
    record.start_time = min(starts) if starts else ""
    record.end_time = max(ends) if ends else ""
    lead = next((m for m in members if m.rank == leader), members[0] if members else None)
    if lead is not None:
        record.node, record.site_name, record.pilot_timing = lead.node, lead.site_name, lead.pilot_timing
        record.job_metrics = " ".join(f for f in lead.job_metrics.split() if not f.startswith("nEvents="))
