"""``Scheduler``: rank 0's decisions as a pure state machine, events in, actions out, time passed in.

No MPI, HTTP or clock here: ``handle(now, events)`` is the only way to change scheduling state, so
every controller decision (who gets which job, when to fetch, when a job is looping or over its memory,
when a rank is lost, when the walltime guard fires) is tested by feeding events and asserting actions.

Each event type has one handler, listed in ``HANDLERS`` at the end of this module: read it as the
table of transitions.  What makes rank 0 O(1) per event lives in named structures beside it: the
``RankRegistry`` (states, idle and liveness orders), the ``JobTimers`` and their ``DueQueue``
(heartbeats, maxWalltime), the ``FetchGate`` (requests to the job source) and ``EsJobs`` (the
event-service jobs' range ledgers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice.book import EsBook
from hpcpilot.monitor.metrics import check_report, limits_for_job
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler.actions import (
    Abandon,
    Action,
    AskClone,
    Assign,
    Finished,
    Kill,
    Report,
    SendNoMoreWork,
    SetDebugMode,
    StopRank,
    TellClone,
)
from hpcpilot.scheduler.done import DoneRecords
from hpcpilot.scheduler.esjobs import EsJobs
from hpcpilot.scheduler.events import (
    BundleStaged,
    CloneAnswered,
    CloneClaimed,
    EsJobClosed,
    Event,
    JobEnded,
    JobProgress,
    JobsFetched,
    RangesFetched,
    RangesReported,
    RankAlive,
    RankDied,
    RankFailed,
    RankReady,
    RankStopped,
    ReportReceived,
    ServerCommand,
    StopRequested,
    WorkRequested,
)
from hpcpilot.scheduler.fetchgate import FetchGate
from hpcpilot.scheduler.jobs import JobTimers, RunningJob, merge_report
from hpcpilot.scheduler.policy import KILL_COMMANDS, SchedulerPolicy
from hpcpilot.scheduler.queue import JobQueue
from hpcpilot.scheduler.ranks import GONE, RankRegistry
from hpcpilot.states import JobState, RankState


class Scheduler:
    """Rank 0's scheduling state; change it only through ``handle``."""

    def __init__(self, worker_ranks: Sequence[int], config: SiteConfig, policy: SchedulerPolicy) -> None:
        self.config, self.policy = config, policy
        self.ranks = RankRegistry(worker_ranks)
        self.jobs: dict[int, RunningJob] = {}
        self.timers = JobTimers(policy, self.jobs)
        self.es_jobs = EsJobs(config, policy)
        self.gate = FetchGate(policy)
        self.pending = JobQueue()
        self.done = DoneRecords()
        self.stopping: tuple[int, str] | None = None
        self.finished = False
        self.now = 0.0
        self.started_at: float | None = None

    # -- the one entry point ----------------------------------------------------------

    def handle(self, now: float, events: Iterable[Event]) -> list[Action]:
        self.now = now
        if self.started_at is None:
            self.started_at = now
        actions: list[Action] = []
        for event in events:
            rank = getattr(event, "rank", None)  # events of one rank carry it; any of them is a sign of life
            if rank in self.ranks.slots:
                self.ranks.heard_from(rank, now)
            actions += HANDLERS[type(event)](self, event)
        actions += self._tick()
        return actions

    # -- rank events ------------------------------------------------------------------

    def _on_rank_ready(self, event: RankReady) -> list[Action]:
        self.ranks.answered.add(event.rank)
        self.ranks.set_group(event.rank, event.architecture)
        self.gate.groups.add(event.architecture)
        if not event.ok:  # it will never get work: let it leave (it waits for a word from rank 0)
            self.ranks.gone(event.rank, RankState.STOPPED)
            return [SendNoMoreWork(event.rank)]
        return []

    def _on_rank_alive(self, event: RankAlive) -> list[Action]:
        return []

    def _on_work_requested(self, event: WorkRequested) -> list[Action]:
        self.ranks.make_idle(event.rank)
        return []

    def _on_rank_stopped(self, event: RankStopped) -> list[Action]:
        if self.ranks[event.rank].state != RankState.LOST:
            self.ranks.gone(event.rank, RankState.STOPPED)
        return []

    def _on_rank_failed(self, event: RankFailed) -> list[Action]:
        if event.panda_id in self.es_jobs:
            record = JobRecord(event.panda_id, rank=event.rank)
            record.fail(event.code, event.diag)
            return self._leave_es(event.rank, record)
        if event.panda_id is None or event.panda_id not in self.jobs:
            return []
        record = self.jobs[event.panda_id].record
        record.fail(event.code, event.diag)
        return self._close_job(event.panda_id, record)

    def _on_rank_died(self, event: RankDied) -> list[Action]:
        """Lost the same way as a rank whose signal stopped; a rank that had already stopped (it left
        after its last job) or was lost is not lost again."""
        if self.ranks[event.rank].state in GONE:
            return []
        self.ranks.answered.add(event.rank)  # one that died before its start-up check is not waited for
        return self._rank_lost(event.rank, event.diag)

    def _rank_lost(self, number: int, diag: str) -> list[Action]:
        """Fail the lost rank's work with EXCEEDEDMAXWAITTIME and tell the rank to stop, in case it can
        still hear: a rank that is only stuck then kills its payload and leaves instead of living on."""
        panda_id, self.ranks[number].panda_id = self.ranks[number].panda_id, None
        self.ranks.gone(number, RankState.LOST)
        code = int(ErrorCode.EXCEEDEDMAXWAITTIME)
        actions: list[Action] = [StopRank(number, code, diag)]
        job = self.jobs.get(panda_id) if panda_id is not None else None
        if job is not None and job.rank == number:
            job.record.fail(code, diag)
            actions += self._close_job(job.spec.panda_id, job.record)
        book = self.es_jobs.get(panda_id)
        if book is not None:
            self.es_jobs.member_lost(book, number, code, diag, idle_ranks=bool(self.ranks.idle))
        return actions

    # -- job events -------------------------------------------------------------------

    def _on_jobs_fetched(self, event: JobsFetched) -> list[Action]:
        busy = bool(self.jobs or self.es_jobs.books or self.pending)
        self.gate.answered(event, self.now, busy)
        self.pending.extend(event.jobs, event.architecture)
        actions: list[Action] = []
        for record in event.rejected:
            self.done.append(record)
            actions.append(Report(record, final=True))
        if self.stopping is not None:  # the answer to a fetch under way when the stop began: never started
            actions += [Report(record, final=True) for record in self._drop_pending(*self.stopping)]
        return actions

    def _on_job_progress(self, event: JobProgress) -> list[Action]:
        book = self.es_jobs.get(event.record.panda_id)
        if book is not None:
            if event.record.state == JobState.RUNNING:
                book.open(self.now)  # inputs are staged: ranges may be leased and ranks may join
            return [Report(event.record, final=False)]
        job = self.jobs.get(event.record.panda_id)
        if job is None:
            return []
        job.record = event.record
        if event.record.state == JobState.RUNNING and job.payload_start is None:
            self.timers.payload_started(job, self.now)
        job.last_heartbeat = self.now  # its live heartbeat entry finds the new time when it comes due
        return [Report(event.record, final=False)]

    def _on_report_received(self, event: ReportReceived) -> list[Action]:
        if event.report.panda_id in self.es_jobs:
            return self.es_jobs.check_report(event, self.now)
        job = self.jobs.get(event.report.panda_id)
        if job is None or job.killing:
            return []
        merge_report(job.record, event.report)
        if event.job_metrics:
            job.record.job_metrics = event.job_metrics
        start = job.payload_start if job.payload_start is not None else job.assigned_at
        verdict = check_report(event.report, job.limits, start)
        if verdict is None:
            return []
        job.killing = True
        return [Kill(job.rank, job.spec.panda_id, int(verdict.code), verdict.diag)]

    def _on_job_ended(self, event: JobEnded) -> list[Action]:
        if event.record.panda_id in self.es_jobs:
            return self._leave_es(event.rank, event.record)
        return self._close_job(event.record.panda_id, event.record)

    def _on_server_command(self, event: ServerCommand) -> list[Action]:
        if event.panda_id in self.es_jobs:
            return self.es_jobs.command(event.panda_id, event.name)
        job = self.jobs.get(event.panda_id)
        if job is None:
            return []
        if event.name in KILL_COMMANDS and not job.killing:
            job.killing = True
            code, diag = KILL_COMMANDS[event.name]
            return [Kill(job.rank, job.spec.panda_id, int(code), diag)]
        if event.name in ("debug", "debugoff"):
            job.debug = event.name == "debug"
            self.timers.schedule_beat(job)  # the interval changed: the entry due at the old one is superseded
            return [SetDebugMode(job.rank, job.spec.panda_id, job.debug)]
        return []

    def _on_stop_requested(self, event: StopRequested) -> list[Action]:
        return self._begin_stop(event.code, event.diag)

    # -- clone jobs (hpcpilot.clones) ---------------------------------------------------

    def _on_clone_claimed(self, event: CloneClaimed) -> list[Action]:
        """Ask the source for the clone, unless the job is gone or being killed (the kill wakes its wait)."""
        job = self.jobs.get(event.panda_id)
        if job is None or job.killing:
            return []
        return [AskClone(job.spec, event.phase)]

    def _on_clone_answered(self, event: CloneAnswered) -> list[Action]:
        """The verdict goes to the rank the job runs on (the claim's rank may be a single-rank label)."""
        job = self.jobs.get(event.verdict.panda_id)
        if job is None or job.killing:
            return []
        return [TellClone(job.rank, event.verdict)]

    # -- event-service events ---------------------------------------------------------

    def _on_ranges_fetched(self, event: RangesFetched) -> list[Action]:
        return self.es_jobs.on_fetched(event, self.now, idle_ranks=bool(self.ranks.idle))

    def _on_ranges_reported(self, event: RangesReported) -> list[Action]:
        return self.es_jobs.on_reported(event, self.now)

    def _on_bundle_staged(self, event: BundleStaged) -> list[Action]:
        return self.es_jobs.on_bundle_staged(event)

    def _on_es_job_closed(self, event: EsJobClosed) -> list[Action]:
        record = self.es_jobs.closed(event)
        if record is None:
            return []
        self.done.append(record)
        return [Report(record, final=True)]

    def _join_es(self, rank: int, book: EsBook, stage_in: bool = False) -> Assign:
        book.join(rank)
        self.ranks.bind(rank, book.panda_id)
        return Assign(rank, book.spec, book.limits, stage_in=stage_in)

    def _leave_es(self, rank: int, record: JobRecord) -> list[Action]:
        self.es_jobs.books[record.panda_id].member_done(rank, record)
        self.ranks.release(rank, record.panda_id, stopping=self.stopping is not None)
        return []

    # -- time-driven decisions ----------------------------------------------------------

    def _tick(self) -> list[Action]:
        if self.finished:
            return []
        actions: list[Action] = []
        if self.stopping is None and self._walltime_reached():
            actions += self._begin_stop(int(ErrorCode.REACHEDMAXTIME),
                                        "the pilot's walltime limit (less the margin) was reached")
        actions += self._startup_timeout()
        actions += self._check_liveness()
        actions += self._no_rank_left()
        actions += self.timers.due_actions(self.now)
        actions += self.es_jobs.tick(self.now)
        if self.ranks.startup_complete():
            actions += self._assign()
        if self._all_stopped():
            self.finished = True
            actions.append(Finished())
        return actions

    def _check_liveness(self) -> list[Action]:
        """Declare lost the ranks whose signal stopped for longer than the limit (oldest first)."""
        actions: list[Action] = []
        for number, silent in self.ranks.silent_longer_than(self.policy.lost_after, self.now):
            actions += self._rank_lost(number, f"rank {number} stopped reporting for {silent:.0f} s")
        return actions

    def _startup_timeout(self) -> list[Action]:
        """Ranks that did not answer within the start-up timeout are lost; they are told to stop, so that
        one that comes up late leaves at once instead of waiting for work that never comes."""
        if self.started_at is None or self.now - self.started_at <= self.policy.startup_timeout:
            return []
        diag = f"did not answer its start-up check within {self.policy.startup_timeout:.0f} s"
        return [StopRank(number, int(ErrorCode.EXCEEDEDMAXWAITTIME), f"rank {number} {diag}")
                for number in self.ranks.give_up_unanswered()]

    def _no_rank_left(self) -> list[Action]:
        """Every worker rank is lost or stopped while work still waits for one: nothing can ever run it,
        so the pilot stops (queued jobs and ranges are failed at once instead of waiting for ever)."""
        if self.ranks.alive or self.stopping is not None:
            return []
        if not self.pending and self.es_jobs.wanting_ranks() is None:
            return []
        return self._begin_stop(int(ErrorCode.EXCEEDEDMAXWAITTIME), "no worker rank is left to run it")

    def _walltime_reached(self) -> bool:
        return self.policy.guard_reached(self.now)

    def _all_stopped(self) -> bool:
        if self.jobs or self.es_jobs.books or self.gate.in_flight:
            return False
        return not self.ranks.alive and self.ranks.startup_complete()  # every rank answered, stopped or was lost

    # -- handing out work ---------------------------------------------------------------

    def _mixed(self) -> bool:
        """Ranks of more than one architecture: each job goes to a rank of the one it was fetched for."""
        return len(self.gate.groups) > 1

    def _assign(self) -> list[Action]:
        if self._mixed():
            return self._assign_by_architecture()
        actions: list[Action] = []
        while self.ranks.idle and self.stopping is None:
            book = self.es_jobs.wanting_ranks()
            if book is not None:  # event-service jobs take every rank they can use
                actions.append(self._join_es(self.ranks.next_idle(), book))
                continue
            if self.es_jobs.staging() or not self.pending:
                break  # an ES job is staging in: its ranks wait for it to open
            job = self.pending.popleft()
            if not self.policy.can_finish(job, self.now):
                record = self._not_started(job, ErrorCode.REACHEDMAXTIME, self.policy.cannot_finish_diag(job, self.now))
                actions.append(Report(record, final=True))
                continue
            actions.append(self._start(self.ranks.next_idle(), job))
        may_lease, staging = self._may_lease(), self.es_jobs.staging()
        if may_lease and not staging:
            architecture = next(iter(self.gate.groups), None)
            actions += self.gate.requests(len(self.ranks.idle) - len(self.pending), self.now, architecture)
        return actions + self._release_if_done(may_lease, staging)

    def _release_if_done(self, may_lease: bool, staging: bool) -> list[Action]:
        """When stopping, idle ranks leave at once: a fetch under way (a server outage) must not keep them."""
        if self.stopping is not None or (not self.pending and not self.gate.in_flight and not may_lease
                                         and not staging):
            return self._release_idle()
        return []

    def _assign_by_architecture(self) -> list[Action]:
        """``_assign`` for ranks of several architectures: an event-service job takes any idle rank; a normal
        job only a rank of the architecture it was fetched for, oldest job first; then a fetch per architecture
        for its idle ranks that no queued job of theirs covers.  O(architectures) a pass; the queue is walked
        only when one of its jobs has an idle rank to go to."""
        actions: list[Action] = []
        while self.ranks.idle and self.stopping is None and (book := self.es_jobs.wanting_ranks()) is not None:
            actions.append(self._join_es(self.ranks.next_idle(), book))
        idle = self.ranks.idle_in
        if self.stopping is None and not self.es_jobs.staging() and any(
                idle.get(arch) for arch in self.pending.architectures()):
            actions += self._deal_by_architecture()
        may_lease, staging = self._may_lease(), self.es_jobs.staging()
        if may_lease and not staging:
            for architecture, ranks in list(idle.items()):
                if not ranks:
                    continue
                queued = self.pending.queued_for(architecture)
                actions += self.gate.requests(len(ranks) - queued, self.now, architecture)
                if architecture in self.gate.exhausted and not queued:
                    actions += [self._release(rank) for rank in list(ranks)]  # no job will come for them
        return actions + self._release_if_done(may_lease, staging)

    def _deal_by_architecture(self) -> list[Action]:
        """One walk of the queue: each job to the longest idle rank of its architecture, if there is one."""
        idle = Counter({arch: len(ranks) for arch, ranks in self.ranks.idle_in.items()})
        actions: list[Action] = []

        def take(job: JobSpec, architecture: str | None) -> bool:  # a job that cannot finish is taken to be failed
            return not self.policy.can_finish(job, self.now) or _claim(idle, architecture)

        for job, architecture in self.pending.take_where(take):
            if not self.policy.can_finish(job, self.now):
                record = self._not_started(job, ErrorCode.REACHEDMAXTIME, self.policy.cannot_finish_diag(job, self.now))
                actions.append(Report(record, final=True))
            else:
                actions.append(self._start(self.ranks.next_idle_in(architecture), job))
        return actions

    def _release_idle(self) -> list[Action]:
        """No work will come for the idle ranks: each is told so and waited for (its acknowledgement)."""
        return [self._release(self.ranks.next_idle()) for _ in range(len(self.ranks.idle))]

    def _release(self, rank: int) -> SendNoMoreWork:
        """Tell one rank (out of the idle ones) that no work will come, and wait for its acknowledgement."""
        self.ranks.take_idle(rank)
        self.ranks.set_state(rank, RankState.STOPPING)
        self.ranks.heard_from(rank, self.now)  # the wait for its acknowledgement starts now
        return SendNoMoreWork(rank)

    def _may_lease(self) -> bool:
        return self.gate.may_lease(winding_down=self.stopping is not None or self._walltime_reached())

    def _start(self, rank: int, job: JobSpec) -> Assign:
        if job.event_service:  # the first rank stages the inputs in; others join once it runs
            return self._join_es(rank, self.es_jobs.start(job, rank, self.now), stage_in=True)
        limits = limits_for_job(job.min_ram_count, job.core_count, job.looping_check, self.config.monitor,
                                self.config.gpu.memory_limit_mb)
        record = JobRecord(job.panda_id, attempt_nr=job.attempt_nr, rank=rank, core_count=job.core_count)
        self.jobs[job.panda_id] = new = RunningJob(job, rank, limits, record, assigned_at=self.now,
                                                   last_heartbeat=self.now)
        self.timers.schedule_beat(new)
        self.ranks.bind(rank, job.panda_id)
        return Assign(rank, job, limits)

    # -- ending -------------------------------------------------------------------------

    def _begin_stop(self, code: int, diag: str) -> list[Action]:
        if self.stopping is not None:
            return []
        self.stopping = (code, diag)
        actions: list[Action] = [Abandon(code, f"not started: {diag}")]
        actions += [Report(record, final=True) for record in self._drop_pending(code, diag)]
        for job in self.jobs.values():
            job.killing = True
            actions.append(StopRank(job.rank, code, diag))
        actions += self.es_jobs.stop_all(code, diag)
        return actions  # (ranks believed lost got their Stop when they were declared lost)

    def _drop_pending(self, code: int, diag: str) -> list[JobRecord]:
        records = []
        while self.pending:
            records.append(self._not_started(self.pending.popleft(), code, f"not started: {diag}"))
        return records

    def _not_started(self, job: JobSpec, code: int, diag: str) -> JobRecord:
        """The final record of a leased job that will never run."""
        record = JobRecord(job.panda_id, attempt_nr=job.attempt_nr)
        record.fail(code, diag)
        self.done.append(record)
        return record

    def _close_job(self, panda_id: int, record: JobRecord) -> list[Action]:
        job = self.jobs.pop(panda_id, None)
        if job is None:
            return []
        self.ranks.release(job.rank, panda_id, stopping=self.stopping is not None)
        record.rank = job.rank
        self.done.append(record)
        return [Report(record, final=True)]

    # -- views (read by the controller, the live status and tests) -----------------------

    @property
    def es(self) -> dict[int, EsBook]:
        """The event-service jobs' range ledgers, by PandaID."""
        return self.es_jobs.books

    @property
    def gave_up(self) -> str:
        """Why the pilot stopped asking its job source for work ('' = it did not give up)."""
        return self.gate.gave_up

    def range_events(self, panda_id: int, range_ids: Iterable[str]) -> list[int | None]:
        """Each range's number of events (from its start and last event), None where unknown."""
        book = self.es_jobs.get(panda_id)
        sizes = book.n_events if book is not None else {}
        return list(map(sizes.get, range_ids))  # (one C-level pass: this runs for every range reported)

    def status_line(self) -> str:
        busy, idle = self.ranks.counts[RankState.BUSY], self.ranks.counts[RankState.IDLE]
        failed = self.done.failed()
        left = "unlimited" if self.policy.deadline is None else f"{self.policy.deadline - self.now:.0f} s"
        es = "".join(f" | {book.status()}" for book in self.es_jobs)
        return (f"jobs running={len(self.jobs) + len(self.es_jobs)} done={len(self.done) - failed} failed={failed} "
                f"queued={len(self.pending)} | ranks busy={busy} idle={idle} | time left={left}{es}")


HANDLERS: dict[type, Callable[[Scheduler, Any], list[Action]]] = {
    RankReady: Scheduler._on_rank_ready,
    RankAlive: Scheduler._on_rank_alive,
    WorkRequested: Scheduler._on_work_requested,
    RankStopped: Scheduler._on_rank_stopped,
    RankFailed: Scheduler._on_rank_failed,
    RankDied: Scheduler._on_rank_died,
    JobsFetched: Scheduler._on_jobs_fetched,
    JobProgress: Scheduler._on_job_progress,
    ReportReceived: Scheduler._on_report_received,
    JobEnded: Scheduler._on_job_ended,
    ServerCommand: Scheduler._on_server_command,
    StopRequested: Scheduler._on_stop_requested,
    CloneClaimed: Scheduler._on_clone_claimed,
    CloneAnswered: Scheduler._on_clone_answered,
    RangesFetched: Scheduler._on_ranges_fetched,
    RangesReported: Scheduler._on_ranges_reported,
    BundleStaged: Scheduler._on_bundle_staged,
    EsJobClosed: Scheduler._on_es_job_closed,
}
"""Each event type and the one handler that takes it: the scheduler's transitions, as a table."""


def _claim(idle: Counter[str | None], architecture: str | None) -> bool:
    """Claim one of the idle ranks counted for ``architecture``; False when none is left."""
    if idle[architecture] <= 0:
        return False
    idle[architecture] -= 1
    return True
