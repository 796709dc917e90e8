"""Rank 0's decisions as a pure state machine: events in, actions out, time passed in.

No MPI, HTTP or clock here: ``handle(now, events)`` is the only way to change scheduling
state, so every controller decision (who gets which job, when to fetch, when a job is
looping or over its memory, when a rank is lost, when the walltime guard fires) is tested
by feeding events and asserting actions.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from heapq import heappop, heappush

from hpcpilot.config import SiteConfig
from hpcpilot.credentials import CredentialGuard
from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice.book import (
    BundleStaged,
    CloseEsJob,
    DealRanges,
    EsBook,
    EsJobClosed,
    FetchRanges,
    MakeBundle,
    RangesFetched,
    RangesReported,
    ReportRanges,
)
from hpcpilot.monitor.metrics import Limits, check_report, limits_for_job
from hpcpilot.monitor.samples import MonitorReport
from hpcpilot.protocol import CloneVerdict, lost_after
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.states import JobState, RankState

# ---- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class RankReady:
    rank: int
    ok: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankAlive:
    """A rank's alive signal, sent every report interval whether or not it has work.

    Any event naming a rank refreshes its lost-rank clock; this one exists so that an idle rank has
    something to say.
    """

    rank: int


@dataclass(frozen=True)
class WorkRequested:
    rank: int


@dataclass(frozen=True)
class JobsFetched:
    """The source's answer to a Fetch: parsed jobs, and records of jobs that failed to parse."""

    jobs: tuple[JobSpec, ...]
    rejected: tuple[JobRecord, ...] = ()
    unavailable: bool = False
    """The source could not answer (server down): try again later, it is not empty."""
    reason: str = ""
    """Why the request failed, in one line ('' = it did not fail: the source asks to wait, e.g. for a
    Harvester feed).  Failed requests count towards ``getjob_failures``."""
    hopeless: bool = False
    """The failure will not heal by asking again (a server certificate that does not verify)."""
    asked: int | None = None
    """The ``n`` of the Fetch this answers (None: not said, the oldest request under way is taken as answered)."""


@dataclass(frozen=True)
class JobProgress:
    """A job changed state on its rank (starting, running)."""

    rank: int
    record: JobRecord


@dataclass(frozen=True)
class ReportReceived:
    rank: int
    report: MonitorReport
    job_metrics: str = ""


@dataclass(frozen=True)
class JobEnded:
    rank: int
    record: JobRecord


@dataclass(frozen=True)
class RankStopped:
    rank: int


@dataclass(frozen=True)
class RankFailed:
    """A worker raised unexpectedly; its job (if any) fails with ``code``."""

    rank: int
    panda_id: int | None
    code: int
    diag: str


@dataclass(frozen=True)
class RankDied:
    """The MPI library reports the rank's process dead (a fault-tolerant launch, ``mpirun --with-ft ulfm``):
    it is lost now, without waiting for its liveness signal to run out."""

    rank: int
    diag: str


@dataclass(frozen=True)
class StopRequested:
    """A signal or an operator: wind everything down with this code."""

    code: int
    diag: str


@dataclass(frozen=True)
class ServerCommand:
    panda_id: int
    name: str


@dataclass(frozen=True)
class CloneClaimed:
    """A clone job asks whether it may run its payload (phase runonce) or stage out (storeonce); hpcpilot.clones."""

    rank: int
    panda_id: int
    phase: str


@dataclass(frozen=True)
class CloneAnswered:
    """The source's answer to a clone's claim (``AskClone``), as the verdict the clone gets."""

    verdict: CloneVerdict


Event = (RankReady | RankAlive | WorkRequested | JobsFetched | JobProgress | ReportReceived | JobEnded | RankStopped
         | RankFailed | RankDied | StopRequested | ServerCommand | RangesFetched | RangesReported | BundleStaged
         | EsJobClosed | CloneClaimed | CloneAnswered)

# ---- actions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    n: int


@dataclass(frozen=True)
class Assign:
    rank: int
    job: JobSpec
    stage_in: bool = True


@dataclass(frozen=True)
class SendNoMoreWork:
    rank: int


@dataclass(frozen=True)
class Kill:
    rank: int
    panda_id: int
    code: int
    diag: str


@dataclass(frozen=True)
class StopRank:
    rank: int
    code: int
    diag: str


@dataclass(frozen=True)
class Report:
    """Send this record to the job source (a heartbeat, or the final update when ``final``)."""

    record: JobRecord
    final: bool


@dataclass(frozen=True)
class SetDebugMode:
    rank: int
    panda_id: int
    on: bool


@dataclass(frozen=True)
class Abandon:
    """The pilot is stopping: fail the jobs the source already handed out that will never start."""

    code: int
    diag: str


@dataclass(frozen=True)
class Finished:
    """Every rank has stopped: the controller may write its summary and exit."""


@dataclass(frozen=True)
class AskClone:
    """Ask the source for the clone job's one event range (the fetch thread answers with CloneAnswered)."""

    job: JobSpec
    phase: str


@dataclass(frozen=True)
class TellClone:
    """Send the clone's verdict to the rank that runs it."""

    rank: int
    verdict: CloneVerdict


Action = (Fetch | Assign | SendNoMoreWork | Kill | StopRank | Report | SetDebugMode | Abandon | Finished | FetchRanges
          | DealRanges | MakeBundle | ReportRanges | CloseEsJob | AskClone | TellClone)

KILL_COMMANDS: dict[str, tuple[ErrorCode, str]] = {
    "tobekilled": (ErrorCode.PANDAKILL, "killed by the PanDA server"),
    "lostheartbeat": (ErrorCode.EXCEEDEDMAXWAITTIME, "no successful server update within the lost-heartbeat limit"),
}
"""Server commands that kill a job now, with the code and diagnostic it fails with."""

# ---- state --------------------------------------------------------------------------


@dataclass
class _Rank:
    state: RankState = RankState.STARTING
    panda_id: int | None = None


@dataclass
class _Job:
    spec: JobSpec
    rank: int
    limits: Limits
    record: JobRecord
    assigned_at: float
    payload_start: float | None = None
    last_heartbeat: float = 0.0
    killing: bool = False
    debug: bool = False
    beat_token: int = -1
    """Which heartbeat entry of ``Scheduler.due`` is this job's live one (older entries are skipped)."""


_BEAT, _WALLTIME = 0, 1
"""Kinds of ``Scheduler.due`` entries: a job's next heartbeat, and the end of its maxWalltime."""


@dataclass
class SchedulerPolicy:
    """The numbers the scheduler decides with (from the site config and the command line)."""

    deadline: float | None = None
    margin: float = 600.0
    max_jobs: int | None = None
    heartbeat: float = 1800.0
    debug_heartbeat: float = 300.0
    lost_after: float = 60.0
    jobs_per_fetch: int = 100
    fetches_in_flight: int = 4
    startup_timeout: float = 120.0
    fetch_retry: float = 30.0
    getjob_failures: int = 5

    @classmethod
    def from_config(cls, config: SiteConfig, deadline: float | None, max_jobs: int | None) -> SchedulerPolicy:
        return cls(deadline=deadline, margin=float(config.walltime.margin), max_jobs=max_jobs,
                   heartbeat=config.panda.heartbeat, debug_heartbeat=config.panda.debug_heartbeat,
                   lost_after=lost_after(config.monitor),
                   jobs_per_fetch=config.panda.jobs_per_fetch,
                   fetches_in_flight=config.panda.fetches_in_flight,
                   fetch_retry=min(30.0, max(1.0, config.panda.retry_max)),
                   getjob_failures=config.panda.getjob_failures)

    def limit_fetches(self, source_limit: int) -> int:
        """Fetches in flight at once: the policy's number, but no more than the job source can take in
        parallel (a Harvester access point has one request file); returns the number, for the thread pool."""
        self.fetches_in_flight = max(1, min(self.fetches_in_flight, source_limit))
        return self.fetches_in_flight


@dataclass
class Scheduler:
    """Rank 0's scheduling state; change it only through ``handle``."""

    worker_ranks: Sequence[int]
    config: SiteConfig
    policy: SchedulerPolicy
    ranks: dict[int, _Rank] = field(default_factory=dict)
    jobs: dict[int, _Job] = field(default_factory=dict)
    es: dict[int, EsBook] = field(default_factory=dict)
    pending: deque[JobSpec] = field(default_factory=deque)
    idle: OrderedDict[int, None] = field(default_factory=OrderedDict)
    """Idle ranks, first come first served; an OrderedDict so that a lost or stopped one leaves in O(1)."""
    done: list[JobRecord] = field(default_factory=list)
    leased: int = 0
    fetches: list[int] = field(default_factory=list)
    """The ``n`` of each Fetch under way (at most ``policy.fetches_in_flight``)."""
    outage_open: int = 0
    """Requests that were under way when the last counted fetch failure came: their failures are the same
    outage and do not count again towards ``getjob_failures``."""
    source_empty: bool = False
    stopping: tuple[int, str] | None = None
    finished: bool = False
    now: float = 0.0
    answered: set[int] = field(default_factory=set)
    fetch_retry_at: float = 0.0
    started_at: float | None = None
    fetch_failures: int = 0
    gave_up: str = ""
    """Why the pilot stopped asking its job source for work ('' = it did not give up)."""
    credentials: CredentialGuard | None = None
    """The proxy and token lifetimes rank 0 leases by (hpcpilot.credentials); None = no credentials to watch."""
    alive: OrderedDict[int, float] = field(default_factory=OrderedDict)
    """Ranks believed alive -> when rank 0 last heard from them, least recently heard first: a rank
    enters when it first speaks and leaves when it stops or is lost, so finding the silent ones costs
    O(1) per message and O(lost) per pass, never a scan over all ranks."""

    state_counts: Counter[RankState] = field(default_factory=Counter)
    """Ranks per state, kept by ``_set_state``: the status line and views read it instead of counting ranks."""
    due: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    """A heap of (when, seq, kind, PandaID, token): job heartbeats and maxWalltime ends, so a pass looks only
    at what is due.  Entries of closed jobs or superseded heartbeats stay until popped (or compacted)."""
    due_seq: int = 0
    done_failed: int = 0
    done_seen: int = 0
    """How many of ``done`` are failed, counted up to ``done[done_seen]`` (each record is looked at once)."""

    def __post_init__(self) -> None:
        self.ranks = {r: _Rank() for r in self.worker_ranks}
        self.state_counts = Counter({RankState.STARTING: len(self.ranks)})

    @property
    def fetching(self) -> bool:
        """A Fetch is under way."""
        return bool(self.fetches)

    # -- the one entry point ----------------------------------------------------------

    def handle(self, now: float, events: Iterable[Event]) -> list[Action]:
        self.now = now
        if self.started_at is None:
            self.started_at = now
        actions: list[Action] = []
        for event in events:
            actions += self._dispatch(event)
        actions += self._tick()
        return actions

    def _dispatch(self, event: Event) -> list[Action]:
        handler = getattr(self, f"_on_{type(event).__name__}")
        rank = getattr(event, "rank", None)
        if rank in self.ranks:
            self._heard_from(rank)
        return handler(event)

    # -- liveness -----------------------------------------------------------------------

    def _heard_from(self, number: int) -> None:
        """Any message from a rank is its sign of life; a rank already stopped or lost stays so."""
        if self.ranks[number].state in (RankState.STOPPED, RankState.LOST):
            return
        self.alive[number] = self.now
        self.alive.move_to_end(number)

    def _gone(self, number: int, state: RankState) -> None:
        """The rank will send nothing more that counts (stopped) or is given up (lost)."""
        self._set_state(number, state)
        self.alive.pop(number, None)

    def _set_state(self, number: int, state: RankState) -> None:
        """The one place a rank's state changes, so ``state_counts`` stays right without a scan."""
        rank = self.ranks[number]
        self.state_counts[rank.state] -= 1
        self.state_counts[state] += 1
        rank.state = state

    def _check_liveness(self) -> list[Action]:
        """Declare lost the ranks whose signal stopped for longer than the limit (oldest first)."""
        actions: list[Action] = []
        while self.alive:
            number, seen = next(iter(self.alive.items()))
            silent = self.now - seen
            if silent <= self.policy.lost_after:
                break
            actions += self._rank_lost(number, f"rank {number} stopped reporting for {silent:.0f} s")
        return actions

    def _rank_lost(self, number: int, diag: str) -> list[Action]:
        """Fail the lost rank's work with EXCEEDEDMAXWAITTIME and tell the rank to stop, in case it can
        still hear: a rank that is only stuck then kills its payload and leaves instead of living on."""
        rank = self.ranks[number]
        panda_id, rank.panda_id = rank.panda_id, None
        self._gone(number, RankState.LOST)
        self.idle.pop(number, None)
        code = int(ErrorCode.EXCEEDEDMAXWAITTIME)
        actions: list[Action] = [StopRank(number, code, diag)]
        job = self.jobs.get(panda_id) if panda_id is not None else None
        if job is not None and job.rank == number:
            job.record.fail(code, diag)
            actions += self._close_job(job.spec.panda_id, job.record)
        book = self.es.get(panda_id) if panda_id is not None else None
        if book is not None:
            book.member_gone(number, code, diag)
            if not book.members and not self.idle:  # idle ranks would join it in this pass
                book.drop_queue(code, "no rank of the job is left to process it")
        return actions

    # -- events -----------------------------------------------------------------------

    def _on_RankReady(self, event: RankReady) -> list[Action]:
        self.answered.add(event.rank)
        if not event.ok:  # it will never get work: let it leave (it waits for a word from rank 0)
            self._gone(event.rank, RankState.STOPPED)
            return [SendNoMoreWork(event.rank)]
        return []

    def _on_RankAlive(self, event: RankAlive) -> list[Action]:
        return []

    def _on_WorkRequested(self, event: WorkRequested) -> list[Action]:
        rank = self.ranks[event.rank]
        if rank.state in (RankState.LOST, RankState.STOPPED):
            return []
        self._set_state(event.rank, RankState.IDLE)
        rank.panda_id = None
        self.idle.setdefault(event.rank, None)
        return []

    def _on_JobsFetched(self, event: JobsFetched) -> list[Action]:
        self._fetch_answered(event.asked)
        self.pending.extend(event.jobs)
        self.leased += len(event.jobs) + len(event.rejected)
        if event.unavailable:
            self.fetch_retry_at = self.now + self.policy.fetch_retry
            if event.reason:
                self._count_fetch_failure()
                self._maybe_give_up(event)
        else:
            self.fetch_failures, self.outage_open = 0, 0
            if not event.jobs and not event.rejected:
                self.source_empty = True
        actions: list[Action] = []
        for record in event.rejected:
            self.done.append(record)
            actions.append(Report(record, final=True))
        if self.stopping is not None:  # the answer to a fetch under way when the stop began: never started
            actions += [Report(record, final=True) for record in self._drop_pending(*self.stopping)]
        return actions

    def _fetch_answered(self, asked: int | None) -> None:
        """Take the answered request off those under way (the oldest when the answer does not say its size)."""
        if asked is not None and asked in self.fetches:
            self.fetches.remove(asked)  # a handful at most: O(fetches_in_flight)
        elif self.fetches:
            self.fetches.pop(0)

    def _count_fetch_failure(self) -> None:
        """One outage counts once per request sent into it, not once per request that was already under way."""
        if self.outage_open > 0:
            self.outage_open -= 1
            return
        self.fetch_failures += 1
        self.outage_open = len(self.fetches)

    def _maybe_give_up(self, event: JobsFetched) -> None:
        """With nothing running, ``getjob_failures`` failed requests in a row (or one that will not heal)
        end the leasing, so an allocation does not idle to its walltime asking a dead server."""
        if self.jobs or self.es or self.pending:
            return
        if event.hopeless or self.fetch_failures >= self.policy.getjob_failures:
            self.source_empty = True
            self.gave_up = (f"gave up on the job source after {self.fetch_failures} failed request(s) in a row "
                            f"with nothing running: {event.reason or 'no answer'}")

    def _on_JobProgress(self, event: JobProgress) -> list[Action]:
        book = self.es.get(event.record.panda_id)
        if book is not None:
            if event.record.state == JobState.RUNNING:
                book.open(self.now)  # inputs are staged: ranges may be leased and ranks may join
            return [Report(event.record, final=False)]
        job = self.jobs.get(event.record.panda_id)
        if job is None:
            return []
        job.record = event.record
        if event.record.state == JobState.RUNNING and job.payload_start is None:
            job.payload_start = self.now
            if job.spec.max_walltime:
                self._push_due(job.payload_start + job.spec.max_walltime, _WALLTIME, job)
        job.last_heartbeat = self.now  # its live heartbeat entry finds the new time when it comes due
        return [Report(event.record, final=False)]

    def _on_ReportReceived(self, event: ReportReceived) -> list[Action]:
        if event.report.panda_id in self.es:
            return self._check_es_report(event)
        job = self.jobs.get(event.report.panda_id)
        if job is None or job.killing:
            return []
        _merge_report(job.record, event.report)
        if event.job_metrics:
            job.record.job_metrics = event.job_metrics
        start = job.payload_start if job.payload_start is not None else job.assigned_at
        verdict = check_report(event.report, job.limits, start)
        if verdict is None:
            return []
        job.killing = True
        return [Kill(job.rank, job.spec.panda_id, int(verdict.code), verdict.diag)]

    def _on_JobEnded(self, event: JobEnded) -> list[Action]:
        if event.record.panda_id in self.es:
            return self._leave_es(event.rank, event.record)
        return self._close_job(event.record.panda_id, event.record)

    def _on_RankStopped(self, event: RankStopped) -> list[Action]:
        rank = self.ranks[event.rank]
        if rank.state != RankState.LOST:
            self._gone(event.rank, RankState.STOPPED)
        self.idle.pop(event.rank, None)
        return []

    def _on_RankFailed(self, event: RankFailed) -> list[Action]:
        if event.panda_id in self.es:
            record = JobRecord(event.panda_id, rank=event.rank)
            record.fail(event.code, event.diag)
            return self._leave_es(event.rank, record)
        if event.panda_id is None or event.panda_id not in self.jobs:
            return []
        record = self.jobs[event.panda_id].record
        record.fail(event.code, event.diag)
        return self._close_job(event.panda_id, record)

    def _on_RankDied(self, event: RankDied) -> list[Action]:
        """Lost the same way as a rank whose signal stopped; a rank that had already stopped (it left
        after its last job) or was lost is not lost again."""
        if self.ranks[event.rank].state in (RankState.STOPPED, RankState.LOST):
            return []
        self.answered.add(event.rank)  # one that died before its start-up check is not waited for
        return self._rank_lost(event.rank, event.diag)

    def _on_StopRequested(self, event: StopRequested) -> list[Action]:
        return self._begin_stop(event.code, event.diag)

    def _on_ServerCommand(self, event: ServerCommand) -> list[Action]:
        if event.panda_id in self.es:
            return self._es_command(self.es[event.panda_id], event.name)
        job = self.jobs.get(event.panda_id)
        if job is None:
            return []
        if event.name in KILL_COMMANDS and not job.killing:
            job.killing = True
            code, diag = KILL_COMMANDS[event.name]
            return [Kill(job.rank, job.spec.panda_id, int(code), diag)]
        if event.name in ("debug", "debugoff"):
            job.debug = event.name == "debug"
            self._schedule_beat(job)  # the interval changed: the entry due at the old one is superseded
            return [SetDebugMode(job.rank, job.spec.panda_id, job.debug)]
        return []

    def _on_RangesFetched(self, event: RangesFetched) -> list[Action]:
        book = self.es.get(event.panda_id)
        if book is None:
            return []
        book.on_fetched(self.now, event, self.policy.fetch_retry)
        if not book.members and not self.idle:  # its ranks were lost while the fetch was under way
            book.drop_queue(int(ErrorCode.EXCEEDEDMAXWAITTIME), "no rank of the job is left to process it")
        return list(book.serve_waiting(self._guard_at(), self.now))

    def _on_RangesReported(self, event: RangesReported) -> list[Action]:
        book = self.es.get(event.panda_id)
        if book is None:
            return []
        return list(book.on_report(self.now, event, self._guard_at()))

    def _on_BundleStaged(self, event: BundleStaged) -> list[Action]:
        book = self.es.get(event.panda_id)
        report = book.on_bundle(event) if book is not None else None
        return [report] if report is not None else []

    def _on_EsJobClosed(self, event: EsJobClosed) -> list[Action]:
        book = self.es.pop(event.record.panda_id, None)
        if book is None:
            return []
        event.record.rank = book.leader
        self.done.append(event.record)
        return [Report(event.record, final=True)]

    # -- clone jobs (hpcpilot.clones) -----------------------------------------------------

    def _on_CloneClaimed(self, event: CloneClaimed) -> list[Action]:
        """Ask the source for the clone, unless the job is gone or being killed (the kill wakes its wait)."""
        job = self.jobs.get(event.panda_id)
        if job is None or job.killing:
            return []
        return [AskClone(job.spec, event.phase)]

    def _on_CloneAnswered(self, event: CloneAnswered) -> list[Action]:
        """The verdict goes to the rank the job runs on (the claim's rank may be a single-rank label)."""
        job = self.jobs.get(event.verdict.panda_id)
        if job is None or job.killing:
            return []
        return [TellClone(job.rank, event.verdict)]

    # -- event service ------------------------------------------------------------------

    def _guard_at(self) -> float | None:
        return None if self.policy.deadline is None else self.policy.deadline - self.policy.margin

    def _start_es(self, rank: int, job: JobSpec) -> Assign:
        """The first rank of an event-service job stages its inputs in; others join once it runs."""
        limits = limits_for_job(job.min_ram_count, job.core_count, job.looping_check, self.config.monitor)
        book = EsBook(job, self.config.eventservice, leader=rank, limits=limits, last_heartbeat=self.now)
        self.es[job.panda_id] = book
        return self._join_es(rank, book, stage_in=True)

    def _join_es(self, rank: int, book: EsBook, stage_in: bool = False) -> Assign:
        book.join(rank)
        self._set_state(rank, RankState.BUSY)
        self.ranks[rank].panda_id = book.panda_id
        return Assign(rank, book.spec, stage_in=stage_in)

    def _leave_es(self, rank: int, record: JobRecord) -> list[Action]:
        book = self.es[record.panda_id]
        book.member_done(rank, record)
        self._free_rank(rank, record.panda_id)
        return []

    def _free_rank(self, number: int, panda_id: int) -> None:
        rank = self.ranks[number]
        if rank.panda_id == panda_id:
            rank.panda_id = None
            if rank.state == RankState.BUSY:
                self._set_state(number, RankState.IDLE if self.stopping is None else RankState.STOPPING)

    def _check_es_report(self, event: ReportReceived) -> list[Action]:
        """Memory and looping are per rank in an ES job: only the offending rank's part is killed."""
        book = self.es[event.report.panda_id]
        if event.rank not in book.members or event.rank in book.killing:
            return []
        verdict = check_report(event.report, book.limits, book.opened_at or self.now)
        if verdict is None:
            return []
        book.killing.add(event.rank)
        return [Kill(event.rank, book.panda_id, int(verdict.code), verdict.diag)]

    def _es_command(self, book: EsBook, name: str) -> list[Action]:
        """tobekilled stops the job on every rank now; softkill lets the ranges in hand finish."""
        if name in KILL_COMMANDS:
            code, diag = KILL_COMMANDS[name]
            actions: list[Action] = list(book.stop_leasing(int(code), diag, job_failure=True))
            for rank in sorted(book.members - book.killing):
                book.killing.add(rank)
                actions.append(Kill(rank, book.panda_id, int(code), diag))
            return actions
        if name == "softkill":
            return list(book.stop_leasing(int(ErrorCode.ESRECOVERABLE), "soft kill by the PanDA server",
                                          job_failure=False))
        if name in ("debug", "debugoff"):
            return [SetDebugMode(rank, book.panda_id, name == "debug") for rank in sorted(book.members)]
        return []

    def _es_ranks_wanted(self) -> EsBook | None:
        """The oldest event-service job that can use another rank."""
        return next((book for book in self.es.values() if book.wants_ranks()), None)

    def _es_staging(self) -> bool:
        return any(not book.is_open and not book.leasing_stopped for book in self.es.values())

    def _tick_es(self) -> list[Action]:
        if not self.es:
            return []
        actions: list[Action] = []
        guard_at = self._guard_at()
        for book in list(self.es.values()):
            n = book.fetch_wanted(self.now, guard_at)
            if n:
                book.fetching = True
                actions.append(FetchRanges(book.spec, n))
            actions += book.serve_waiting(guard_at, self.now)
            for due in (book.due_bundle(self.now), book.due_report(self.now)):
                if due is not None:
                    actions.append(due)
            if self.now - book.last_heartbeat >= self.policy.heartbeat and not book.closing:
                book.last_heartbeat = self.now
                actions.append(Report(book.progress_record(), final=False))
            if book.is_done():
                book.closing = True
                actions.append(CloseEsJob(book.spec, book.final_record()))
        return actions

    # -- time-driven decisions --------------------------------------------------------

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
        actions += self._due_jobs()
        actions += self._tick_es()
        if self._startup_complete():
            actions += self._assign()
        if self._all_stopped():
            self.finished = True
            actions.append(Finished())
        return actions

    def _startup_complete(self) -> bool:
        """Every rank answered its start-up check (or was given up): only then is work leased."""
        return len(self.answered) >= len(self.ranks)

    def _startup_timeout(self) -> list[Action]:
        """Ranks that did not answer within the start-up timeout are lost; they are told to stop, so that
        one that comes up late leaves at once instead of waiting for work that never comes."""
        if (self._startup_complete() or self.started_at is None
                or self.now - self.started_at <= self.policy.startup_timeout):
            return []
        actions: list[Action] = []
        diag = f"did not answer its start-up check within {self.policy.startup_timeout:.0f} s"
        for number in self.ranks:
            if number not in self.answered:
                self.answered.add(number)
                self._gone(number, RankState.LOST)
                actions.append(StopRank(number, int(ErrorCode.EXCEEDEDMAXWAITTIME), f"rank {number} {diag}"))
        return actions

    def _no_rank_left(self) -> list[Action]:
        """Every worker rank is lost or stopped while work still waits for one: nothing can ever run it,
        so the pilot stops (queued jobs and ranges are failed at once instead of waiting for ever)."""
        if self.alive or self.stopping is not None:
            return []
        if not self.pending and not any(book.wants_ranks() for book in self.es.values()):
            return []
        return self._begin_stop(int(ErrorCode.EXCEEDEDMAXWAITTIME), "no worker rank is left to run it")

    def _walltime_reached(self) -> bool:
        return self.policy.deadline is not None and self.now >= self.policy.deadline - self.policy.margin

    def _due_jobs(self) -> list[Action]:
        """Heartbeats and maxWalltime kills whose time has come: O(due) per pass, never a walk over every job."""
        actions: list[Action] = []
        while self.due and self.due[0][0] <= self.now:
            _, _, kind, panda_id, token = heappop(self.due)
            job = self.jobs.get(panda_id)
            if job is None:
                continue  # closed since
            actions += self._beat_due(job, token) if kind == _BEAT else self._walltime_due(job)
        return actions

    def _walltime_due(self, job: _Job) -> list[Action]:
        """A maxWalltime entry came due: kill, or (at the limit exactly: only beyond it kills) look again later."""
        kill = self._job_walltime(job)
        if not kill and not job.killing and job.payload_start is not None:
            self._push_due(self._later(job.payload_start, job.spec.max_walltime), _WALLTIME, job)
        return kill

    def _beat_due(self, job: _Job, token: int) -> list[Action]:
        """A heartbeat entry came due: beat if the interval since the last update passed, else wait for it."""
        if token != job.beat_token:
            return []  # superseded (the debug interval changed)
        interval = self._beat_interval(job)
        if self.now - job.last_heartbeat < interval:  # a progress update came meanwhile
            self._schedule_beat(job, self._later(job.last_heartbeat, interval))
            return []
        job.last_heartbeat = self.now
        self._schedule_beat(job)
        return [Report(job.record, final=False)]

    def _beat_interval(self, job: _Job) -> float:
        return self.policy.debug_heartbeat if job.debug else self.policy.heartbeat

    def _later(self, start: float, interval: float) -> float:
        """``start + interval``, but after now: an entry re-queued in this pass must not come due again in it."""
        return max(start + interval, math.nextafter(self.now, math.inf))

    def _schedule_beat(self, job: _Job, when: float | None = None) -> None:
        """Make a new entry the job's live heartbeat one (the old one, if any, is skipped when popped); tokens
        are unique over the run, so an entry of an earlier job with the same PandaID is never taken for live."""
        job.beat_token = self.due_seq + 1
        self._push_due(job.last_heartbeat + self._beat_interval(job) if when is None else when, _BEAT, job)

    def _push_due(self, when: float, kind: int, job: _Job) -> None:
        """Queue a due time; drop dead entries once they outnumber the live ones (O(1) amortized)."""
        if len(self.due) > 4 * len(self.jobs) + 64:
            self.due = [e for e in self.due if self._due_live(e)]
            self.due.sort()  # a sorted list is a heap
        self.due_seq += 1
        heappush(self.due, (when, self.due_seq, kind, job.spec.panda_id, job.beat_token))

    def _due_live(self, entry: tuple[float, int, int, int, int]) -> bool:
        job = self.jobs.get(entry[3])
        if job is None:
            return False
        return entry[4] == job.beat_token if entry[2] == _BEAT else not job.killing

    def _job_walltime(self, job: _Job) -> list[Action]:
        limit = job.spec.max_walltime
        if job.killing or not limit or job.payload_start is None or self.now - job.payload_start <= limit:
            return []
        job.killing = True
        return [Kill(job.rank, job.spec.panda_id, int(ErrorCode.REACHEDMAXTIME),
                     f"job ran longer than its maxWalltime of {limit} s")]

    def _assign(self) -> list[Action]:
        actions: list[Action] = []
        while self.idle and self.stopping is None:
            book = self._es_ranks_wanted()
            if book is not None:  # event-service jobs take every rank they can use
                actions.append(self._join_es(self._next_idle(), book))
                continue
            if self._es_staging() or not self.pending:
                break  # an ES job is staging in: its ranks wait for it to open
            job = self.pending.popleft()
            if not self._can_finish(job):
                record = self._not_started(job, ErrorCode.REACHEDMAXTIME, self._cannot_finish_diag(job))
                actions.append(Report(record, final=True))
                continue
            rank = self._next_idle()
            actions.append(self._start_es(rank, job) if job.event_service else self._start(rank, job))
        actions += self._fetches()
        # When stopping, idle ranks leave at once: a fetch under way (a server outage) must not keep them.
        if self.stopping is not None or (not self.pending and not self.fetching and not self._may_lease()
                                         and not self._es_staging()):
            while self.idle:
                rank = self._next_idle()
                self._set_state(rank, RankState.STOPPING)
                self._heard_from(rank)  # the wait for its acknowledgement starts now
                actions.append(SendNoMoreWork(rank))
        return actions

    def _next_idle(self) -> int:
        return self.idle.popitem(last=False)[0]

    def _fetches(self) -> list[Action]:
        """Fetches for the idle ranks that no queued job or request under way covers, each up to
        ``jobs_per_fetch`` and up to ``fetches_in_flight`` at once; while the source is failing, one at a
        time, so an outage is probed by one request rather than met with a burst."""
        if not self._may_lease() or self._es_staging() or self.now < self.fetch_retry_at:
            return []
        room = 1 if self.fetch_failures else self.policy.fetches_in_flight
        wanted = len(self.idle) - len(self.pending) - sum(self.fetches)
        actions: list[Action] = []
        while wanted > 0 and len(self.fetches) < room:
            n = min(wanted, self.policy.jobs_per_fetch)
            if self.policy.max_jobs is not None:
                n = min(n, self.policy.max_jobs - self.leased - sum(self.fetches))
            if n <= 0:
                break
            self.fetches.append(n)
            wanted -= n
            actions.append(Fetch(n))
        return actions

    def _start(self, rank: int, job: JobSpec) -> Assign:
        limits = limits_for_job(job.min_ram_count, job.core_count, job.looping_check, self.config.monitor)
        record = JobRecord(job.panda_id, attempt_nr=job.attempt_nr, rank=rank, core_count=job.core_count)
        self.jobs[job.panda_id] = new = _Job(job, rank, limits, record, assigned_at=self.now, last_heartbeat=self.now)
        self._schedule_beat(new)
        self._set_state(rank, RankState.BUSY)
        self.ranks[rank].panda_id = job.panda_id
        return Assign(rank, job)

    def _can_finish(self, job: JobSpec) -> bool:
        if self.policy.deadline is None or not job.max_walltime or job.event_service:
            return True
        return self.now + job.max_walltime <= self.policy.deadline - self.policy.margin

    def _cannot_finish_diag(self, job: JobSpec) -> str:
        """Why a job was not started, with the numbers an operator checks: its need and the time left."""
        left = max(0.0, (self.policy.deadline or self.now) - self.policy.margin - self.now)
        return (f"not started: it needs up to {job.max_walltime} s (maxWalltime), {left:.0f} s left before the "
                "walltime guard")

    def _may_lease(self) -> bool:
        if self.stopping is not None or self.source_empty or self._walltime_reached() or self._credentials_end():
            return False
        return self.policy.max_jobs is None or self.leased < self.policy.max_jobs

    def _credentials_end(self) -> bool:
        """True (for good, saying why in ``gave_up``) once the credentials would end before another job could."""
        verdict = self.credentials.verdict(leased_before=self.leased > 0) if self.credentials else None
        if verdict is not None:
            self.source_empty, self.credentials = True, None
            self.gave_up = self.gave_up or f"credentials: {verdict.text()}"
        return verdict is not None

    def _begin_stop(self, code: int, diag: str) -> list[Action]:
        if self.stopping is not None:
            return []
        self.stopping = (code, diag)
        actions: list[Action] = [Abandon(code, f"not started: {diag}")]
        for record in self._drop_pending(code, diag):
            actions.append(Report(record, final=True))
        for job in self.jobs.values():
            job.killing = True
            actions.append(StopRank(job.rank, code, diag))
        for book in self.es.values():
            actions += book.stop_leasing(code, diag, job_failure=True)
            for rank in sorted(book.members - book.killing):
                book.killing.add(rank)
                actions.append(StopRank(rank, code, diag))
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
        self._free_rank(job.rank, panda_id)
        record.rank = job.rank
        self.done.append(record)
        return [Report(record, final=True)]

    def _all_stopped(self) -> bool:
        if self.jobs or self.es or self.fetching:
            return False
        return not self.alive and self._startup_complete()  # every rank answered, and stopped or was lost

    # -- views --------------------------------------------------------------------------

    def _failed_done(self) -> int:
        """Failed records in ``done``, looking only at those added since the last call."""
        for record in self.done[self.done_seen:]:
            self.done_failed += record.state == JobState.FAILED
        self.done_seen = len(self.done)
        return self.done_failed

    def status_line(self) -> str:
        busy, idle = self.state_counts[RankState.BUSY], self.state_counts[RankState.IDLE]
        failed = self._failed_done()
        left = "unlimited" if self.policy.deadline is None else f"{self.policy.deadline - self.now:.0f} s"
        es = "".join(f" | {book.status()}" for book in self.es.values())
        return (f"jobs running={len(self.jobs) + len(self.es)} done={len(self.done) - failed} failed={failed} "
                f"queued={len(self.pending)} | ranks busy={busy} idle={idle} | time left={left}{es}")


def _merge_report(record: JobRecord, report: MonitorReport) -> None:
    """Fold a monitoring report into the record that heartbeats carry."""
    tree = report.tree
    record.state = JobState.RUNNING
    record.cpu_consumption_time = max(record.cpu_consumption_time, round(tree.utime + tree.stime))
    record.max_pss = max(record.max_pss, tree.pss)
    record.max_rss = max(record.max_rss, tree.rss)
    record.max_vmem = max(record.max_vmem, tree.vmem)
    record.max_swap = max(record.max_swap, tree.swap)
