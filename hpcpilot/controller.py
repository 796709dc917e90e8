"""Rank 0's loop: turn messages, server replies and signals into scheduler events, and carry
out the scheduler's actions.  All decisions live in ``hpcpilot.scheduler``; this module
only does I/O, in a fixed order per pass: messages, signals, server commands, decide, act.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcpilot import __version__, clones
from hpcpilot.config import resolve_path
from hpcpilot.errors import ErrorCode, PilotError, cutting_signal, pilot_exit_status, signal_error
from hpcpilot.eventservice import bundle
from hpcpilot.eventservice.book import (
    BundleStaged,
    CloseEsJob,
    DealRanges,
    EsJobClosed,
    FetchRanges,
    MakeBundle,
    RangesFetched,
    RangesReported,
    ReportRanges,
)
from hpcpilot.eventservice.eslife import es_job_dir
from hpcpilot.livestatus import LiveStatus
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
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec, panda_id_of, range_id_of
from hpcpilot.scheduler import (
    Abandon,
    Action,
    AskClone,
    Assign,
    CloneAnswered,
    CloneClaimed,
    Event,
    Fetch,
    Finished,
    JobEnded,
    JobProgress,
    JobsFetched,
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
from hpcpilot.slurm import warning_signum
from hpcpilot.sources import Command, Delivery, FetchOutcome, JobSource
from hpcpilot.states import EventRangeStatus, JobState
from hpcpilot.transport import Backoff, Transport

if TYPE_CHECKING:  # h5py and numpy are imported by rank 0 only when it keeps a run record
    from hpcpilot.runrecord import RangeBatch

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
SUMMARY_MAX_SHARE = 0.02
"""summary.json is rewritten whole (every job), so between rewrites rank 0 waits at least the rewrite's
cost / this share as well as monitor.status_interval: its share of rank 0's time stays under 2 % and its
cost per final report stays flat however many jobs the file lists."""
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
        self.stop_signal: int | None = None
        self.nodes: dict[int, dict[str, Any]] = {}
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
        self.range_counts: defaultdict[int, Counter[str]] = defaultdict(Counter)
        # Range outcomes go to run.h5 in batches: one HDF5 append per report made rank 0 the bottleneck.
        # Kept as the reports came (when, outcomes, events of each): the JSON rows are made at the write.
        self.range_rows: dict[tuple[int, int], list[RangeBatch]] = {}
        self.range_rows_pending = 0
        self.range_rows_written = clock()
        self.output_dir = resolve_path(scheduler.config.stage.output_dir or "outputs", Path.cwd())
        self.live = LiveStatus(workdir, scheduler.config.site.name, self.n_ranks, self.started)
        # clone job -> (its spec, the event range it was given): reported with the job's outcome (ask_clone)
        self.clone_ranges: dict[int, tuple[JobSpec, tuple[str, ...]]] = {}
        self.summary_due, self.summary_stale = 0.0, False  # summary.json: next rewrite allowed at; a job ended
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
            self.write_summary_if_due()
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
        self.write_summary()
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
        if signum is None or self.stop_signal is not None:
            return []
        self.stop_signal = signum
        name = signal.Signals(signum).name
        log.warning("received %s: stopping every rank", name)
        self.write_summary()  # the batch system may follow with SIGKILL: the file must be current now
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
        if name and name not in {node.get("node") for node in self.nodes.values()}:
            self.source.report_worker_node(message.node)  # once per node: its first rank to answer
        self.nodes[message.rank] = message.node
        if self.recorder is not None:
            self.recorder.add_node(message.rank, message.node)
        return [RankReady(message.rank, message.ok, message.problems)]

    def on_heartbeat(self, message: Heartbeat) -> list[Event]:
        if self.recorder is not None and message.samples:
            self.recorder.add_samples(message.rank, message.report.panda_id, message.samples)
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
        if self.recorder is not None and message.outcomes:
            # a range's events, from its start/last event: asked now, the ledger forgets it at the report
            events = self.scheduler.range_events(message.panda_id, [o.event_range_id for o in message.outcomes])
            key = (self.rank_label(message.rank), message.panda_id)
            self.range_rows.setdefault(key, []).append((self.clock(), message.outcomes, events))
            self.range_rows_pending += len(events)
        return [RangesReported(message.rank, message.panda_id, message.outcomes, message.want)]

    # ---- actions --------------------------------------------------------------------------

    def execute(self, action: Action) -> None:
        if isinstance(action, Fetch):
            self.in_background(self.fetcher, self.fetch, action.n)
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
            self.followups.append(self.abandon(action.code, action.diag))
        elif isinstance(action, Finished):
            log.info("every rank has stopped")
        elif isinstance(action, AskClone | TellClone):
            self.execute_clone(action)
        else:
            self.execute_es(action)

    def execute_es(self, action: Action) -> None:
        """The event-service actions: ranges in and out, bundles, the job's end."""
        if isinstance(action, FetchRanges):
            self.in_background(self.fetcher, self.fetch_ranges, action.job, action.n)
        elif isinstance(action, DealRanges):  # the parsed ranges: EventRanges pickles them compactly
            self.transport.send(action.rank, EventRanges(action.panda_id, action.ranges, action.no_more))
        elif isinstance(action, MakeBundle):
            self.in_background(self.stager, self.make_bundle, action)
        elif isinstance(action, ReportRanges):
            self.report_ranges(action)
        elif isinstance(action, CloseEsJob):
            self.in_background(self.stager, self.close_es_job, action)

    def abandon(self, code: int, diag: str) -> JobsFetched:
        records = []
        for wire in self.source.abandon():
            record = JobRecord(panda_id_of(wire))
            record.fail(code, diag)
            records.append(record)
        return JobsFetched((), tuple(records))

    def fetch(self, n: int) -> JobsFetched:
        """Lease jobs (fetch thread); it always answers, whatever the source raised."""
        try:
            outcome = self.source.fetch_jobs(n)
        except Exception as exc:  # a source bug must not end every rank: it is a failed request
            log.error("cannot fetch jobs: %s: %s", type(exc).__name__, exc)
            return JobsFetched((), (), True, f"{type(exc).__name__}: {exc}"[:300], asked=n)
        jobs, rejected = [], []
        wires = outcome.leased
        for wire in wires:
            try:
                jobs.append(JobSpec.from_wire(wire))
            except PilotError as exc:
                panda_id = panda_id_of(wire)
                log.error("job %s rejected: %s", panda_id, exc.diag)
                record = JobRecord(panda_id)
                record.fail(exc.code, exc.diag)
                rejected.append(record)
        if wires:
            log.info("leased %d job(s)", len(wires))
        unavailable = outcome.unavailable
        if unavailable:
            log.warning("job source unavailable; asking again later")
        reason = outcome.error if unavailable else ""
        return JobsFetched(tuple(jobs), tuple(rejected), unavailable, reason, outcome.hopeless, asked=n)

    def fetch_ranges(self, job: JobSpec, n: int) -> RangesFetched:
        """Lease ranges (fetch thread); a range that does not parse is failed fatal, never dealt."""
        try:
            outcome = self.source.fetch_event_ranges(job, n)
        except PilotError as exc:
            log.error("cannot fetch event ranges of job %d: %s", job.panda_id, exc)
            outcome = FetchOutcome()
        except Exception as exc:  # the fetch thread must always answer, or the job would wait for ever
            log.error("fetching event ranges of job %d failed: %s", job.panda_id, exc)
            return RangesFetched(job.panda_id, (), (), unavailable=True)
        ranges, bad = [], []
        wires = outcome.leased
        for wire in wires:
            try:
                ranges.append(EventRange.from_wire(wire))
            except PilotError as exc:
                range_id = range_id_of(wire)
                log.error("job %d: unusable event range: %s", job.panda_id, exc.diag)
                if range_id:
                    bad.append(EventRangeUpdate(range_id, EventRangeStatus.FATAL, int(exc.code), exc.diag))
        unavailable = outcome.unavailable
        if wires:
            log.debug("job %d: leased %d event range(s)", job.panda_id, len(wires))
        return RangesFetched(job.panda_id, tuple(ranges), tuple(bad), unavailable)

    def make_bundle(self, action: MakeBundle) -> BundleStaged:
        job = action.job
        try:
            staged = bundle.stage_bundle(job, action.updates, action.num_events,
                                         es_job_dir(self.workdir, job.panda_id), self.output_dir,
                                         self.scheduler.config)
        except PilotError as exc:
            log.error("job %d: bundle of %d range(s) not staged out: %s", job.panda_id, len(action.updates),
                      exc.diag)
            return BundleStaged(job.panda_id, action.updates, None, (int(exc.code), exc.diag))
        except Exception as exc:  # the ranges must come back failed, not vanish with the thread
            log.error("job %d: bundle failed: %s", job.panda_id, exc)
            return BundleStaged(job.panda_id, action.updates, None, (int(ErrorCode.STAGEOUTFAILED), str(exc)))
        log.info("job %d: bundle %s (%d events, %d bytes) staged out", job.panda_id, staged.lfn, staged.num_events,
                 staged.fsize)
        return BundleStaged(job.panda_id, action.updates, staged)

    def report_ranges(self, action: ReportRanges) -> None:
        self.source.update_event_ranges(action.job, action.updates, action.bundle)
        by_status = Counter(u.status for u in action.updates)  # str() once per status, not once per range
        self.range_counts[action.job.panda_id].update({str(status): n for status, n in by_status.items()})

    def close_es_job(self, action: CloseEsJob) -> EsJobClosed:
        """Stage the job's log out (stage-out thread); the final report follows as EsJobClosed."""
        try:
            bundle.stage_job_log(action.job, action.record, es_job_dir(self.workdir, action.job.panda_id),
                                 self.output_dir, self.scheduler.config)
        except Exception as exc:  # the job must still get its final report
            log.error("job %d: log stage-out failed: %s", action.job.panda_id, exc)
        return EsJobClosed(action.record)

    # ---- clone jobs (hpcpilot.clones) ----------------------------------------------------

    def execute_clone(self, action: AskClone | TellClone) -> None:
        if isinstance(action, AskClone):
            self.in_background(self.fetcher, self.ask_clone, action)
        else:
            self.transport.send(action.rank, action.verdict)

    def ask_clone(self, action: AskClone) -> CloneAnswered:
        """Ask the source for the clone's one event range (fetch thread; always answers).

        A Harvester access point does not coordinate clones (its range files serve event-service jobs of
        this worker only, and Harvester hands a job set's clones to workers without sharing their event
        table): it says so with ``coordinates_clones = False`` and every clone goes on -- a duplicate run
        costs CPU, a wrong "another clone won" would lose the job.  An outage is retried
        ``clones.CLONE_TRIES`` times before the clone is given up with a retryable code.
        """
        job = action.job
        if not self.source.coordinates_clones:
            return CloneAnswered(clones.verdict_of(job.panda_id, action.phase, [job.panda_id]))
        why = "no answer"
        for attempt in range(clones.CLONE_TRIES):
            if attempt:
                time.sleep(self.scheduler.policy.fetch_retry)  # the pause between two failed getJob requests
            try:
                outcome = self.source.fetch_event_ranges(job, 1)
            except Exception as exc:  # the fetch thread must always answer, or the clone would wait for ever
                why = f"{type(exc).__name__}: {exc}"
                continue
            wires = outcome.leased
            if wires or not outcome.unavailable:
                if wires:
                    self.clone_ranges[job.panda_id] = (job, tuple(filter(None, map(range_id_of, wires))))
                log.info("job %d: clone %s", job.panda_id, "goes on" if wires else "lost to another clone",
                         extra={"PandaID": job.panda_id})
                return CloneAnswered(clones.verdict_of(job.panda_id, action.phase, list(wires)))
            why = outcome.error or why
        return CloneAnswered(clones.verdict_of(job.panda_id, action.phase, None, why))

    def report_clone_range(self, record: JobRecord) -> None:
        """The range a clone took ends with the clone (before its final update: the server takes range
        updates only from an active job), so the journal closes its lease and the server knows which clone
        ran; a failed clone's range goes back, for a retry of the job to take."""
        taken = self.clone_ranges.pop(record.panda_id, None)
        if taken is None:
            return
        job, range_ids = taken
        status = EventRangeStatus.FINISHED if record.state == JobState.FINISHED else EventRangeStatus.FAILED
        self.source.update_event_ranges(job, [EventRangeUpdate(rid, status, record.pilot_error_code,
                                                               record.pilot_error_diag) for rid in range_ids])

    def rank_label(self, rank: int) -> int:
        return 0 if self.single_rank else rank

    def report(self, record: JobRecord, final: bool) -> None:
        record.rank = self.rank_label(record.rank)
        if not final and record.panda_id in self.debug_tails:
            record.stdout = self.debug_tails.pop(record.panda_id)
        if final:
            self.report_clone_range(record)
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
            self.summary_stale = True
            self.write_summary_if_due()

    # ---- summary --------------------------------------------------------------------------

    def delivery(self) -> Delivery:
        """What the source acknowledged and what is owed.  A source without acknowledgements (a Harvester
        access point: a report is delivered once its file is written) counts what was reported."""
        report = self.source.delivery()
        if report is not None:
            return report
        return Delivery({pid: dict(counts) for pid, counts in self.range_counts.items()},
                        {r.panda_id: "acknowledged" for r in self.scheduler.done})

    def write_summary_if_due(self) -> None:
        """Rewrite summary.json if a job ended since the last rewrite and the next one is allowed
        (``SUMMARY_MAX_SHARE``); ``run`` writes it at its end and ``check_signals`` on a signal."""
        if self.summary_stale and self.clock() >= self.summary_due:
            self.write_summary()

    def write_summary(self) -> None:
        """summary.json: every job this pilot ran, with PanDA field names, the rank and whether the
        source has acknowledged its final update; event ranges as acknowledged, rejected and owed."""
        began = time.perf_counter()
        done = self.scheduler.done
        delivery = self.delivery()
        summary = {
            "pilot": {"version": __version__, "site": self.scheduler.config.site.name,
                      "ranks": self.n_ranks, "start": self.started, "end": self.clock(),
                      "signal": signal.Signals(self.stop_signal).name if self.stop_signal else None,
                      "owed": delivery.owed, "journal": delivery.journal or None,
                      "gave_up": self.scheduler.gave_up or None},
            "jobs": [{**record.to_summary(), "delivery": delivery.jobs.get(record.panda_id, "owed")}
                     for record in done],
            "event_ranges": {str(panda_id): counts for panda_id, counts in delivery.ranges.items()},
        }
        tmp = self.workdir / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str))
        os.replace(tmp, self.workdir / SUMMARY_FILE)
        cost = time.perf_counter() - began
        self.summary_stale = False
        self.summary_due = self.clock() + max(self.scheduler.config.monitor.status_interval,
                                              cost / SUMMARY_MAX_SHARE)

    def human_summary(self) -> str:
        done = self.scheduler.done
        failed = [r for r in done if r.state == JobState.FAILED]
        codes = Counter(r.pilot_error_code for r in failed)
        by_code = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
        elapsed = self.clock() - self.started
        line = (f"hpcpilot: {len(done)} job(s), {len(done) - len(failed)} finished, {len(failed)} failed"
                f"{f' ({by_code})' if by_code else ''} in {elapsed:.0f} s on {self.n_ranks} rank(s); "
                f"summary: {self.workdir / SUMMARY_FILE}")
        delivery = self.delivery()
        if delivery.owed:
            line += (f"\nhpcpilot: {delivery.owed} update(s) NOT acknowledged by the server, kept in "
                     f"{delivery.journal}; deliver them with `hpcpilot deliver --workdir {self.workdir}` "
                     "(or start the next pilot on this work directory)")
        if self.scheduler.gave_up:
            line += f"\nhpcpilot: {self.scheduler.gave_up}"
        return line

    def exit_status(self) -> int:
        """The process exit status (hpcpilot.errors: owed 3, a signal that cut the run short 128+n, gave up 4,
        else 0 - also after the warning signal's orderly wind-down)."""
        cut = cutting_signal(self.signals.received, warning_signum(self.scheduler.config))
        return pilot_exit_status(cut, self.delivery().owed, bool(self.scheduler.gave_up))

