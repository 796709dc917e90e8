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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcpilot import __version__
from hpcpilot.errors import PilotError, signal_error
from hpcpilot.protocol import (
    Alive,
    AssignJob,
    Heartbeat,
    JobDone,
    JobUpdate,
    KillJob,
    Message,
    NoMoreWork,
    Ready,
    SetDebug,
    Signalled,
    Stop,
    Stopped,
    WorkerFailed,
    WorkRequest,
)
from hpcpilot.records import JobRecord, JobSpec, panda_id_of
from hpcpilot.scheduler import (
    Abandon,
    Action,
    Assign,
    Event,
    Fetch,
    Finished,
    JobEnded,
    JobProgress,
    JobsFetched,
    Kill,
    RankAlive,
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
    WorkRequested,
)
from hpcpilot.sources import Command, JobSource
from hpcpilot.states import JobState
from hpcpilot.transport import Backoff, Transport

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


class SignalFlag:
    """The first signal the pilot received (set from a signal handler, read by the loops)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, _frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGSEGV, signal.SIGXCPU, signal.SIGUSR1,
                    signal.SIGBUS, signal.SIGINT):
            signal.signal(sig, self.handler)


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

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> list[JobRecord]:
        """Serve the ranks until every one has stopped; return every job's final record."""
        backoff = Backoff()
        next_status = 0.0
        while not self.scheduler.finished:
            events = self.followups + self.receive_all()
            self.followups = []
            events += self.check_signals()
            events += [self.command_event(c) for c in self.source.poll(self.clock())]
            for action in self.scheduler.handle(self.clock(), events):
                self.execute(action)
            if self.clock() >= next_status:
                log.info("status: %s", self.scheduler.status_line())
                next_status = self.clock() + self.scheduler.config.monitor.status_interval
            if events or self.followups:
                backoff.reset()
            else:
                backoff.wait()
        self.source.close()
        self.write_summary()
        return self.scheduler.done

    def receive_all(self) -> list[Event]:
        events: list[Event] = []
        while (incoming := self.transport.receive()) is not None:
            events += self.to_events(incoming[1])
        return events

    def check_signals(self) -> list[Event]:
        signum = self.signals.signum
        if signum is None or self.stop_signal is not None:
            return []
        self.stop_signal = signum
        name = signal.Signals(signum).name
        log.warning("received %s: stopping every rank", name)
        return [StopRequested(int(signal_error(signum)), f"pilot received {name}")]

    @staticmethod
    def command_event(command: Command) -> Event:
        return ServerCommand(command.panda_id, command.name)

    def to_events(self, message: Message) -> list[Event]:  # noqa: C901 - one branch per message type
        if isinstance(message, Ready):
            self.nodes[message.rank] = message.node
            if self.recorder is not None:
                self.recorder.add_node(message.rank, message.node)
            return [RankReady(message.rank, message.ok, message.problems)]
        if isinstance(message, WorkRequest):
            return [WorkRequested(message.rank)]
        if isinstance(message, JobUpdate):
            return [JobProgress(message.rank, JobRecord.from_summary(message.record))]
        if isinstance(message, Heartbeat):
            if self.recorder is not None and message.samples:
                self.recorder.add_samples(message.rank, message.report.panda_id, message.samples)
            if message.debug_tail:
                self.debug_tails[message.report.panda_id] = message.debug_tail
            return [ReportReceived(message.rank, message.report, message.job_metrics)]
        if isinstance(message, Alive):
            return [RankAlive(message.rank)]
        if isinstance(message, JobDone):
            return [JobEnded(message.rank, JobRecord.from_summary(message.record))]
        if isinstance(message, Stopped):
            return [RankStopped(message.rank)]
        if isinstance(message, WorkerFailed):
            log.error("rank %d on %s failed:\n%s", message.rank, message.host, message.traceback)
            return [RankFailed(message.rank, message.panda_id, message.error_code,
                               f"rank {message.rank} on {message.host}: {message.traceback.strip().splitlines()[-1]}")]
        if isinstance(message, Signalled):
            self.signals.handler(message.signum, None)
            return []
        log.warning("unexpected message %s ignored", type(message).__name__)
        return []

    # ---- actions --------------------------------------------------------------------------

    def execute(self, action: Action) -> None:
        if isinstance(action, Fetch):
            self.followups.append(self.fetch(action.n))
        elif isinstance(action, Assign):
            log.info("job %d -> rank %d", action.job.panda_id, self.rank_label(action.rank))
            self.transport.send(action.rank, AssignJob(action.job.to_wire()))
        elif isinstance(action, SendNoMoreWork):
            self.transport.send(action.rank, NoMoreWork())
        elif isinstance(action, Kill):
            log.warning("killing job %d on rank %d: %s", action.panda_id, self.rank_label(action.rank), action.diag)
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

    def abandon(self, code: int, diag: str) -> JobsFetched:
        records = []
        for wire in self.source.abandon():
            record = JobRecord(panda_id_of(wire))
            record.fail(code, diag)
            records.append(record)
        return JobsFetched((), tuple(records))

    def fetch(self, n: int) -> JobsFetched:
        try:
            wires = self.source.fetch_jobs(n)
        except PilotError as exc:
            log.error("cannot fetch jobs: %s", exc)
            wires = []
        jobs, rejected = [], []
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
        # A PanDA source says why a fetch came back empty: a negative status is an outage, not the end.
        unavailable = not wires and getattr(self.source, "fetch_status", 0) < 0
        if unavailable:
            log.warning("job source unavailable; asking again later")
        return JobsFetched(tuple(jobs), tuple(rejected), unavailable)

    def rank_label(self, rank: int) -> int:
        return 0 if self.single_rank else rank

    def report(self, record: JobRecord, final: bool) -> None:
        record.rank = self.rank_label(record.rank)
        if not final and record.panda_id in self.debug_tails:
            record.stdout = self.debug_tails.pop(record.panda_id)
        self.source.update_job(record, final)
        if final:
            log.info("job %d %s%s", record.panda_id, record.state,
                     f" ({record.pilot_error_code}: {record.pilot_error_diag})" if record.pilot_error_code else "")
            if self.recorder is not None:
                self.recorder.add_job(record.to_summary())
            self.write_summary()

    # ---- summary --------------------------------------------------------------------------

    def write_summary(self) -> None:
        """summary.json: every job this pilot ran, with PanDA field names and the rank."""
        done = self.scheduler.done
        summary = {
            "pilot": {"version": __version__, "site": self.scheduler.config.site.name,
                      "ranks": self.n_ranks, "start": self.started, "end": self.clock(),
                      "signal": signal.Signals(self.stop_signal).name if self.stop_signal else None},
            "jobs": [record.to_summary() for record in done],
        }
        tmp = self.workdir / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str))
        os.replace(tmp, self.workdir / SUMMARY_FILE)

    def human_summary(self) -> str:
        done = self.scheduler.done
        failed = [r for r in done if r.state == JobState.FAILED]
        codes = Counter(r.pilot_error_code for r in failed)
        by_code = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
        elapsed = self.clock() - self.started
        return (f"hpcpilot: {len(done)} job(s), {len(done) - len(failed)} finished, {len(failed)} failed"
                f"{f' ({by_code})' if by_code else ''} in {elapsed:.0f} s on {self.n_ranks} rank(s); "
                f"summary: {self.workdir / SUMMARY_FILE}")

