"""Rank 0's loop: turn messages, server replies and signals into scheduler events, and carry
out the scheduler's actions.  All decisions live in ``hpcpilot.scheduler``; this module
only does I/O, in a fixed order per pass: messages, signals, server commands, decide, act.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcpilot.config import SiteConfig, resolve_path
from hpcpilot.errors import signal_error
from hpcpilot.eventservice import bundle
from hpcpilot.eventservice.book import (
    CloseEsJob,
    DealRanges,
    FetchRanges,
    MakeBundle,
    RangesReported,
    ReportRanges,
)
from hpcpilot.eventservice.eslife import es_job_dir
from hpcpilot.livestatus import LiveStatus
from hpcpilot.panda.gpumap import target_architecture
from hpcpilot.protocol import (
    Alive,
    AssignJob,
    CloneClaim,
    EventRanges,
    Heartbeat,
    JobDone,
    JobUpdate,
    KillJob,
    Message,
    NoMoreWork,
    RangeReport,
    Ready,
    Release,
    SetDebug,
    Signalled,
    Stop,
    Stopped,
    WorkerFailed,
    WorkRequest,
)
from hpcpilot.records import JobRecord, JobSpec, RangeOutcomes
from hpcpilot.runsummary import RunSummary
from hpcpilot.scheduler import (
    Abandon,
    Action,
    AskClone,
    Assign,
    CloneClaimed,
    Event,
    Fetch,
    Finished,
    JobEnded,
    JobProgress,
    Kill,
    RankAlive,
    RankDied,
    RankFailed,
    RankReady,
    RankStopped,
    Report,
    ReportReceived,
    Scheduler,
    SendNoMoreWork,
    ServerCommand,
    SetDebugMode,
    StopRank,
    StopRequested,
    TellClone,
    WorkRequested,
)
from hpcpilot.signals import SignalFlag
from hpcpilot.sourcecalls import SourceCalls
from hpcpilot.sources import Command, JobSource
from hpcpilot.states import JobState
from hpcpilot.transport import Backoff, Transport

if TYPE_CHECKING:  # h5py and numpy are imported by rank 0 only when it keeps a run record
    from hpcpilot.runrecord import RangeBatch

log = logging.getLogger(__name__)

RANGE_ROWS_BATCH = 5000
RANGE_ROWS_SECONDS = 1.0


_SIMPLE_EVENTS: dict[type, Callable[[Any], Event]] = {
    WorkRequest: lambda m: WorkRequested(m.rank),
    JobUpdate: lambda m: JobProgress(m.rank, JobRecord.from_summary(m.record)),
    Alive: lambda m: RankAlive(m.rank),
    JobDone: lambda m: JobEnded(m.rank, JobRecord.from_summary(m.record)),
    CloneClaim: lambda m: CloneClaimed(m.rank, m.panda_id, m.phase),
    Stopped: lambda m: RankStopped(m.rank),
}
"""Messages that become one scheduler event as they are."""


class Controller:
    """Rank 0: the only rank that talks to the job source."""

    def __init__(self, transport: Transport, source: JobSource, scheduler: Scheduler, workdir: Path,
                 signals: SignalFlag, recorder: Any = None, clock: Callable[[], float] = time.time,
                 single_rank: bool = False) -> None:
        self.transport, self.source, self.scheduler = transport, source, scheduler
        self.workdir, self.signals, self.recorder, self.clock = workdir, signals, recorder, clock
        self.followups: list[Event] = []
        self.started = clock()
        self.nodes: dict[int, dict[str, Any]] = {}
        self.node_names: set[str] = set()  # nodes whose map went to the source: one look-up per Ready, not a walk
        self.debug_tails: dict[int, str] = {}
        # Single-rank mode: the worker thread sits in mailbox 1 but is rank 0 of a 1-rank pilot.
        self.single_rank = single_rank
        self.n_ranks = 1 if single_rank else transport.size
        # Slow I/O runs beside the loop, so messages and the walltime guard are never kept waiting:
        # fetch threads ask the source for work, one thread does rank 0's stage-out (bundles, ES job logs).
        # As many fetch threads as fetches may be in flight, and no more than the source takes at once
        # (``concurrent_fetches``).
        fetches = scheduler.policy.limit_fetches(source.concurrent_fetches)
        self.fetcher = ThreadPoolExecutor(fetches, thread_name_prefix="fetch")
        self.stager = ThreadPoolExecutor(1, thread_name_prefix="stageout")
        self.in_flight: list[Future[Event]] = []
        self.calls = SourceCalls(source, scheduler.policy)
        self.summary = RunSummary(workdir, scheduler, self.calls, self.n_ranks, clock)
        # Range outcomes go to run.h5 in batches: one HDF5 append per report made rank 0 the bottleneck.
        # Kept as the reports came (when, outcomes, events of each): the JSON rows are made at the write.
        self.range_rows: dict[tuple[int, int], list[RangeBatch]] = {}
        self.range_rows_pending = 0
        self.range_rows_written = clock()
        self.output_dir = resolve_path(scheduler.config.stage.output_dir or "outputs", Path.cwd())
        self.live = LiveStatus(workdir, scheduler.config.site.name, self.n_ranks, self.started)
        self.memory_limits: dict[int, int] = {}  # PandaID -> memory limit (kB) of an assigned job, for the run record

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> list[JobRecord]:
        """Serve the ranks until every one has stopped; return every job's final record."""
        backoff = Backoff()
        next_status = 0.0
        while not self.scheduler.finished:
            events = self.followups + self.receive_all() + self.completed_io()
            self.followups = []
            events += self.check_signals()
            events += [self.command_event(c) for c in self.source.poll(self.clock())]
            for action in self.scheduler.handle(self.clock(), events):
                self.execute(action)
            self.write_range_rows()
            self.summary.write_if_due()
            if self.clock() >= next_status:
                log.info("status: %s", self.scheduler.status_line())
                self.write_status()
                next_status = self.clock() + self.scheduler.config.monitor.status_interval
            if events or self.followups:
                backoff.reset()
            else:
                backoff.wait()
        self.fetcher.shutdown(wait=True)
        self.stager.shutdown(wait=True)
        self.write_range_rows(now=True)
        self.source.close()
        self.summary.write()
        self.write_status(ended=True)
        self.release_ranks()
        return self.scheduler.done

    def release_ranks(self) -> None:
        """Rank 0 ends: let every worker rank leave.  A stopped rank waits for this word in its loop, where a
        launcher's SIGTERM finds the pilot's handler (hpcpilot.worker); one given up as lost gets it too, in
        case it still hears (the transport drops what is sent to a rank MPI reports dead)."""
        for rank in self.scheduler.ranks:
            self.transport.send(rank, Release())

    def write_status(self, ended: bool = False) -> None:
        """W/status.json and W/metrics.prom (livestatus); a full disk must not stop the pilot."""
        try:
            self.live.write(self.live.snapshot(self.scheduler, self.clock(), ended))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.workdir / "status.json", exc)

    def write_range_rows(self, now: bool = False) -> None:
        """Append buffered range outcomes to run.h5 about once a second (each keeps its arrival time)."""
        pending = self.range_rows_pending
        if not pending or (not now and pending < RANGE_ROWS_BATCH
                           and self.clock() - self.range_rows_written < RANGE_ROWS_SECONDS):
            return
        self.recorder.add_range_batches(self.range_rows)
        self.range_rows, self.range_rows_pending, self.range_rows_written = {}, 0, self.clock()

    def completed_io(self) -> list[Event]:
        """Answers of the fetch and stage-out threads that are ready (their functions never raise)."""
        ready = [f for f in self.in_flight if f.done()]
        self.in_flight = [f for f in self.in_flight if not f.done()]
        return [f.result() for f in ready]

    def in_background(self, pool: ThreadPoolExecutor, work: Callable[..., Event], *args: Any) -> None:
        self.in_flight.append(pool.submit(work, *args))

    def receive_all(self) -> list[Event]:
        events: list[Event] = []
        while (incoming := self.transport.receive()) is not None:
            events += self.to_events(incoming[1])
        return events + [self.rank_died(rank) for rank in self.transport.lost()]

    def rank_died(self, rank: int) -> RankDied:
        """A rank the MPI library declared dead (after its last messages were taken): lost, with its host."""
        host = self.nodes.get(rank, {}).get("node", "an unknown host")
        # A rank that left after its last job is gone too (it skips MPI_Finalize): the scheduler tells them apart.
        log.info("MPI reports rank %d on %s gone", rank, host)
        return RankDied(rank, f"rank {rank} on {host} died: MPI reports its process failed")

    def check_signals(self) -> list[Event]:
        signum = self.signals.signum
        if signum is None or self.summary.stop_signal is not None:
            return []
        self.summary.stop_signal = signum
        name = signal.Signals(signum).name
        log.warning("received %s: stopping every rank", name)
        self.summary.write()  # the batch system may follow with SIGKILL: the file must be current now
        return [StopRequested(int(signal_error(signum)), f"pilot received {name}")]

    @staticmethod
    def command_event(command: Command) -> Event:
        return ServerCommand(command.panda_id, command.name)

    def to_events(self, message: Message) -> list[Event]:
        """The scheduler events of one message (recording what the run record keeps on the way)."""
        simple = _SIMPLE_EVENTS.get(type(message))
        if simple is not None:
            return [simple(message)]
        handler = {Ready: self.on_ready, Heartbeat: self.on_heartbeat, WorkerFailed: self.on_worker_failed,
                   Signalled: self.on_signalled, RangeReport: self.on_range_report}.get(type(message))
        if handler is None:
            log.warning("unexpected message %s ignored", type(message).__name__)
            return []
        return handler(message)

    def on_ready(self, message: Ready) -> list[Event]:
        name = message.node.get("node")
        if name and name not in self.node_names:
            self.node_names.add(name)
            self.source.report_worker_node(message.node)  # once per node: its first rank to answer
        self.source.rank_ready(message.rank, message.node)
        self.nodes[message.rank] = message.node
        if self.recorder is not None:
            self.recorder.add_node(message.rank, message.node)
        architecture = target_architecture(message.node) if self.source.matches_architecture else None
        return [RankReady(message.rank, message.ok, message.problems, architecture)]

    def on_heartbeat(self, message: Heartbeat) -> list[Event]:
        if self.recorder is not None and message.samples:
            self.recorder.add_samples(message.rank, message.report.panda_id, message.samples)
        if self.recorder is not None and message.report.gpu is not None:
            self.recorder.add_gpu_samples(message.rank, message.report.panda_id,
                                          [(message.report.time, message.report.gpu)])
        if message.debug_tail:
            self.debug_tails[message.report.panda_id] = message.debug_tail
        return [ReportReceived(message.rank, message.report, message.job_metrics)]

    def on_worker_failed(self, message: WorkerFailed) -> list[Event]:
        log.error("rank %d on %s failed:\n%s", message.rank, message.host, message.traceback)
        last_line = message.traceback.strip().splitlines()[-1]
        return [RankFailed(message.rank, message.panda_id, message.error_code,
                           f"rank {message.rank} on {message.host}: {last_line}")]

    def on_signalled(self, message: Signalled) -> list[Event]:
        self.signals.handler(message.signum, None)
        return []

    def on_range_report(self, message: RangeReport) -> list[Event]:
        outcomes = RangeOutcomes.of(message.outcomes)  # columns as they come over MPI (the same object)
        if self.recorder is not None and outcomes:
            # a range's events, from its start/last event: asked now, the ledger forgets it at the report
            events = self.scheduler.range_events(message.panda_id, outcomes.ids)
            key = (self.rank_label(message.rank), message.panda_id)
            self.range_rows.setdefault(key, []).append((self.clock(), outcomes, events))
            self.range_rows_pending += len(events)
        return [RangesReported(message.rank, message.panda_id, outcomes, message.want)]

    # ---- actions --------------------------------------------------------------------------

    def execute(self, action: Action) -> None:
        if isinstance(action, Fetch):
            self.in_background(self.fetcher, self.calls.fetch, action.n, action.architecture)
        elif isinstance(action, Assign):
            log.info("job %d -> rank %d", action.job.panda_id, self.rank_label(action.rank),
                     extra={"PandaID": action.job.panda_id})
            self.memory_limits[action.job.panda_id] = action.limits.memory_kb  # for its run-record row
            self.transport.send(action.rank, AssignJob(action.job, action.limits, action.stage_in))
        elif isinstance(action, SendNoMoreWork):
            self.transport.send(action.rank, NoMoreWork())
        elif isinstance(action, Kill):
            log.warning("killing job %d on rank %d: %s", action.panda_id, self.rank_label(action.rank), action.diag,
                        extra={"PandaID": action.panda_id})
            self.transport.send(action.rank, KillJob(action.panda_id, action.code, action.diag))
        elif isinstance(action, StopRank):
            self.transport.send(action.rank, Stop(action.code, action.diag))
        elif isinstance(action, SetDebugMode):
            self.transport.send(action.rank, SetDebug(action.panda_id, action.on))
        elif isinstance(action, Report):
            self.report(action.record, action.final)
        elif isinstance(action, Abandon):
            self.followups.append(self.calls.abandon(action.code, action.diag))
        elif isinstance(action, Finished):
            log.info("every rank has stopped")
        elif isinstance(action, AskClone | TellClone):
            self.execute_clone(action)
        else:
            self.execute_es(action)

    def execute_es(self, action: Action) -> None:
        """The event-service actions: ranges in and out, bundles, the job's end."""
        if isinstance(action, FetchRanges):
            self.in_background(self.fetcher, self.calls.fetch_ranges, action.job, action.n)
        elif isinstance(action, DealRanges):  # the parsed ranges: EventRanges pickles them compactly
            self.transport.send(action.rank, EventRanges(action.panda_id, action.ranges, action.no_more))
        elif isinstance(action, MakeBundle):
            self.in_background(self.stager, bundle.bundle_staged, action, *self.es_stageout(action.job))
        elif isinstance(action, ReportRanges):
            self.calls.report_ranges(action)
        elif isinstance(action, CloseEsJob):
            self.in_background(self.stager, bundle.job_log_staged, action, *self.es_stageout(action.job))

    def es_stageout(self, job: JobSpec) -> tuple[Path, Path, SiteConfig]:
        """Where rank 0 stages an event-service job's bundles and log from and to, and how."""
        return es_job_dir(self.workdir, job.panda_id), self.output_dir, self.scheduler.config

    def execute_clone(self, action: AskClone | TellClone) -> None:
        if isinstance(action, AskClone):
            self.in_background(self.fetcher, self.calls.ask_clone, action)
        else:
            self.transport.send(action.rank, action.verdict)

    def rank_label(self, rank: int) -> int:
        return 0 if self.single_rank else rank

    def report(self, record: JobRecord, final: bool) -> None:
        record.rank = self.rank_label(record.rank)
        if not final and record.panda_id in self.debug_tails:
            record.stdout = self.debug_tails.pop(record.panda_id)
        if final:
            self.calls.report_clone_range(record)
        self.source.update_job(record, final)
        if final:  # a failed job is what an operator greps for: WARNING (pilot errors are ERROR)
            log.log(logging.WARNING if record.state == JobState.FAILED else logging.INFO, "job %d %s%s",
                    record.panda_id, record.state,
                    f" ({record.pilot_error_code}: {record.pilot_error_diag})" if record.pilot_error_code else "",
                    extra={"PandaID": record.panda_id})
            if self.recorder is not None:
                self.write_range_rows(now=True)
                limit = self.memory_limits.pop(record.panda_id, None)
                self.recorder.add_job(record.to_summary(), memory_limit_kb=limit)
            self.summary.stale = True
            self.summary.write_if_due()

