"""The worker side: ask rank 0 for work, run each job's life, report, obey kill and stop.

The loop runs in the rank's main thread (the only thread that touches the transport, as
mpi4py wants); each job runs in a thread of its own so the loop stays responsive to rank 0
while a payload runs.  The job thread never sends: it hands messages to a queue that the
loop forwards.  The job thread is also the one that starts the job's payloads and waits for
them: their parent-death signal (``hpcpilot.payload``) is tied to it, and it never ends before
its payload is stopped and reaped.

Liveness: the loop sends ``Alive`` every ``monitor.report_interval`` whatever the rank is doing
(idle and waiting for work, staging in, running a job or an event-service part), and rank 0
declares the rank lost only when that signal stops.  The other way round, a rank that got a
signal and hears nothing from rank 0 for the same limit stops its job and leaves by itself.

A rank that stopped stays in its loop until rank 0 ends (``Release``): MPICH's Hydra forwards SIGTERM to
every rank, and one already in MPI_Finalize (where Python has put SIGTERM back to its default action)
dies of it, upon which Hydra SIGKILLs every rank, rank 0 before its final updates.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode, signal_error
from hpcpilot.gpu.local import LocalRank
from hpcpilot.gpu.model import NODE_GPUS_KEY, RANK_GPUS_KEY
from hpcpilot.gpu.rank import SINGLE, rank_gpus
from hpcpilot.gpu.visible import visible_gpus
from hpcpilot.monitor import diskscan
from hpcpilot.monitor.metrics import Limits
from hpcpilot.node import node_info
from hpcpilot.payload import owner_id, reap_stale_cgroups
from hpcpilot.protocol import (
    Alive,
    AssignJob,
    CloneVerdict,
    EventRanges,
    JobDone,
    KillJob,
    Message,
    NoMoreWork,
    Ready,
    Release,
    SetDebug,
    Signalled,
    Stop,
    Stopped,
    WorkerFailed,
    WorkRequest,
    lost_after,
)
from hpcpilot.rankguard import RankGuard
from hpcpilot.records import JobSpec
from hpcpilot.transport import CONTROLLER, Backoff, Transport

if TYPE_CHECKING:  # imported for real in start_job: RangeLink only for event-service jobs, JobControl at the first job
    from hpcpilot.eventservice.link import RangeLink
    from hpcpilot.joblife import JobControl

log = logging.getLogger(__name__)

RELEASE_POLL = 0.5
"""Longest sleep (s) of a stopped rank waiting for rank 0's Release: it may wait for hours on a node
shared with payloads (two looks a second cost nothing), and a Release seen late delays the end by as much."""


def startup_problems(config: SiteConfig, jobs_dir: Path) -> list[str]:
    """What would stop this rank from running a job: checked before rank 0 leases anything."""
    problems = []
    try:
        jobs_dir.mkdir(parents=True, exist_ok=True)
        probe = jobs_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return [f"workdir {jobs_dir} is not writable: {exc.strerror}"]
    free_mb = diskscan.free_space_mb(jobs_dir)
    if free_mb < config.monitor.free_space_start_mb:
        problems.append(f"{free_mb:.0f} MB free at {jobs_dir}, {config.monitor.free_space_start_mb} MB needed")
    return problems


@dataclass
class _RunningJob:
    panda_id: int
    control: JobControl
    thread: threading.Thread
    result: list[Any] = field(default_factory=list)
    link: RangeLink | None = None


class Worker:
    """One rank's worker loop."""

    def __init__(self, transport: Transport, config: SiteConfig, jobs_dir: Path, pilot_dir: Path,
                 stop_event: threading.Event | None = None, rank_label: int | None = None,
                 signals: Any = None, local: LocalRank | None = None) -> None:
        self.transport, self.config = transport, config
        self.rank = transport.rank
        # In single-rank mode the worker is a thread of rank 0: its jobs are reported as rank 0's.
        self.rank_label = transport.rank if rank_label is None else rank_label
        self.signals = signals
        self.signal_sent = False
        self.signalled_at: float | None = None
        self.silence_limit = lost_after(config.monitor)
        self.host = socket.gethostname().split(".")[0]
        self.jobs_dir, self.pilot_dir = jobs_dir, pilot_dir
        self.outbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.running: _RunningJob | None = None
        self.leaving = False
        self.rank0_done = False  # Release received, or rank 0 gone: a stopped rank has nobody to wait for
        # Rank 0 leads an orderly end: it sent Stop, or anything after this rank's signal.  Then a stopped rank
        # waits for its Release however long rank 0's last words take (a rank that left would sit in
        # MPI_Finalize, where the batch system's SIGTERM kills it and the launcher kills rank 0 with it).
        self.rank0_answered = False
        self.stop_event = stop_event or threading.Event()
        self.node = node_info(jobs_dir)
        # The GPUs this rank's payloads get (hpcpilot.gpu): in the node info rank 0 reads, and in every payload's
        # environment.  ``local`` None: one process, the worker a thread of rank 0, every GPU its own.
        node_gpus, self.gpus = rank_gpus(config.gpu, local or SINGLE, None if local is None else transport.rank)
        self.node[NODE_GPUS_KEY], self.node[RANK_GPUS_KEY] = node_gpus.to_dict(), self.gpus.to_dict()
        self.payload_gpus = tuple(visible_gpus(self.node) or ())  # what its payloads' GPU use is measured on
        self.guard: RankGuard | None = None
        self.guard_tried = False

    def run(self) -> None:
        """Check, then ask for jobs until rank 0 says there is no more work or stop."""
        if self.config.monitor.use_cgroup:  # what dead ranks of an earlier pilot left in this workdir
            reap_stale_cgroups(self.pilot_dir)
        try:
            self.serve()
        finally:
            if self.guard is not None:
                self.guard.close()

    def start_guard(self) -> None:
        """Start the guard that kills this rank's payloads if the rank dies (see hpcpilot.rankguard), once,
        before the rank's first payload.  Not at the rank's start: the guard is a second interpreter
        per rank (about 50 ms of CPU with its last sweep), which a rank that never runs a job (an empty
        queue, a rank refused by its checks) would pay for nothing, and every rank's start-up with it.
        Until a job starts there is no payload to kill."""
        if not self.guard_tried:
            self.guard_tried = True
            self.guard = RankGuard.start(owner_id(), self.pilot_dir)

    def serve(self) -> None:
        problems = startup_problems(self.config, self.jobs_dir)
        self.send(Ready(self.rank, self.host, not problems, tuple(problems), self.node))
        if problems:
            log.error("rank %d cannot run jobs: %s", self.rank, "; ".join(problems))
        else:
            self.send(WorkRequest(self.rank))
        backoff = Backoff()
        next_alive = time.monotonic() + self.config.monitor.report_interval
        while True:
            busy = self.forward_outbox()
            busy = self.pump_ranges() or busy
            self.check_signal()
            if time.monotonic() >= next_alive:  # idle or busy: rank 0 must hear from every rank
                self.send(Alive(self.rank))
                next_alive = time.monotonic() + self.config.monitor.report_interval
            incoming = self.transport.receive()
            if incoming is not None:
                self.heard_from_rank0()
                self.handle(incoming[1])
                busy = True
            if self.running is not None and not self.running.thread.is_alive():
                self.finish_job()
                busy = True
            self.check_rank0_silence()
            self.check_rank0_died()
            if self.leaving and self.running is None:
                self.forward_outbox()
                self.send(Stopped(self.rank))
                if not self.rank0_done:
                    self.await_release()
                return
            if busy:
                backoff.reset()
            else:
                backoff.wait(self.stop_event)

    def check_signal(self) -> None:
        """A signal on a worker rank winds the whole pilot down: rank 0 decides, in order."""
        if self.signals is not None and self.signals.signum is not None and not self.signal_sent:
            self.signal_sent = True
            self.signalled_at = time.monotonic()
            signum = self.signals.signum
            log.warning("received signal %d: asking rank 0 to stop every rank", signum)
            if self.running is not None:  # a batch system signals the payload too: the job carries our code
                diag = f"pilot received {signal.Signals(signum).name}"
                self.running.control.request_kill(int(signal_error(signum)), diag)
            self.send(Signalled(self.rank, signum))

    def check_rank0_silence(self) -> None:
        """After a signal, rank 0 answers with Stop or NoMoreWork at once; if it stays silent as long as
        rank 0 waits before declaring a rank lost, it is gone or stuck: leave, so the pilot ends."""
        if (self.signalled_at is None or self.leaving
                or time.monotonic() - self.signalled_at <= self.silence_limit):
            return
        assert self.signals is not None and self.signals.signum is not None
        log.error("rank 0 did not answer the signal within %.0f s: this rank stops on its own", self.silence_limit)
        self.leaving = self.rank0_done = True
        if self.running is not None:
            name = signal.Signals(self.signals.signum).name
            self.running.control.request_kill(int(signal_error(self.signals.signum)), f"pilot received {name}")

    def check_rank0_died(self) -> None:
        """Under a fault-tolerant launch the MPI library may report rank 0 dead: nobody is left to report
        to, so the rank stops its job and leaves at once (the journal on the work directory holds the rest)."""
        if CONTROLLER not in self.transport.lost() or self.leaving:
            return
        log.error("rank 0 died (MPI reports its process failed): this rank stops its job and leaves")
        self.leaving = self.rank0_done = True
        if self.running is not None:
            self.running.control.request_kill(int(ErrorCode.EXCEEDEDMAXWAITTIME), "rank 0 of the pilot died")

    def await_release(self) -> None:
        """Stay, stopped, until rank 0 ends, so that a signal from the launcher finds this rank in its loop
        (module docstring).  Late messages for a job that ended here are dropped; a signal is passed on to
        rank 0 as in the loop.  Bounded if rank 0 is gone: MPI reports it dead (fault-tolerant launch;
        without fault tolerance the launcher ends every rank with it), or it leaves a signal unanswered
        for the silence limit; in one process, the controller's end sets ``stop_event``."""
        backoff = Backoff(maximum=RELEASE_POLL)
        while not self.stop_event.is_set():
            self.check_signal()
            incoming = self.transport.receive()
            if incoming is not None:
                self.heard_from_rank0()
                if isinstance(incoming[1], Release):
                    return
                log.debug("%s after this rank stopped: dropped", type(incoming[1]).__name__)
                backoff.reset()
                continue
            if CONTROLLER in self.transport.lost():
                log.error("rank 0 died (MPI reports its process failed): this rank leaves")
                return
            if (self.signalled_at is not None and not self.rank0_answered
                    and time.monotonic() - self.signalled_at > self.silence_limit):
                log.error("rank 0 did not answer the signal within %.0f s: this rank leaves", self.silence_limit)
                return
            backoff.wait(self.stop_event)

    def heard_from_rank0(self) -> None:
        """Any message from rank 0 after this rank's signal is its answer: it is alive and winding down."""
        if self.signalled_at is not None:
            self.rank0_answered = True

    def send(self, message: Message) -> None:
        self.transport.send(CONTROLLER, message)

    def pump_ranges(self, final: bool = False) -> bool:
        """Send the event-service job's due range outcomes and requests (one message)."""
        link = self.running.link if self.running is not None else None
        report = link.pump(final) if link is not None else None
        if report is not None:
            self.send(report)
        return report is not None

    def forward_outbox(self) -> bool:
        sent = False
        while True:
            try:
                message = self.outbox.get_nowait()
            except queue.Empty:
                return sent
            self.send(message)
            sent = True

    def handle(self, message: Message) -> None:
        if isinstance(message, AssignJob):
            self.start_job(message.job, message.limits, message.stage_in)
        elif isinstance(message, EventRanges):
            if self.running is not None and self.running.link is not None and \
                    self.running.panda_id == message.panda_id:
                self.running.link.deliver(message.ranges, message.no_more)
            else:  # the job already ended here: rank 0 failed what it had dealt to this rank
                log.debug("event ranges for job %d arrived after it ended here", message.panda_id)
        elif isinstance(message, KillJob | SetDebug | CloneVerdict):
            self.to_running_job(message)
        elif isinstance(message, Stop):  # also to a rank rank 0 believes lost: it must not outlive the pilot
            self.leaving = self.rank0_answered = True
            if self.running is not None:
                self.running.control.request_kill(message.error_code, message.diag)
        elif isinstance(message, NoMoreWork):
            self.leaving = True
        elif isinstance(message, Release):  # rank 0 ends (this rank was given up as lost, and told Stop first)
            self.leaving = self.rank0_done = True
        else:
            log.warning("unexpected message %s ignored", type(message).__name__)

    def to_running_job(self, message: KillJob | SetDebug | CloneVerdict) -> None:
        """Rank 0's word for the job this rank runs (a late one, for a job already ended here, is dropped)."""
        if self.running is None or self.running.panda_id != message.panda_id:
            return
        control = self.running.control
        if isinstance(message, KillJob):
            log.info("rank 0 kills job %d: %s", message.panda_id, message.diag)
            control.request_kill(message.error_code, message.diag)
        elif isinstance(message, SetDebug):
            control.debug = message.on
        else:  # the clone job's thread waits for it (hpcpilot.clones)
            control.clone.deliver(message)

    def start_job(self, job: JobSpec, limits: Limits, stage_in: bool = True) -> None:
        # The job life (payload, container, catalogs, direct access, sampler: about 23 ms of imports) is
        # imported here, at the rank's first job, not at its start: a worker rank sends Ready and its
        # first request without it, so rank 0 hears from every rank that much sooner, and a rank that is
        # given no job never pays for it.  joblife does not import this module: no cycle is hidden here.
        from hpcpilot.joblife import JobContext, JobControl, run_job

        self.start_guard()
        control = JobControl()
        ctx = JobContext(self.config, self.rank_label, self.host, self.jobs_dir, self.pilot_dir, self.outbox.put,
                         gpu_env=self.gpus.env, gpus=self.payload_gpus)
        holder: list[Any] = []
        panda_id = job.panda_id
        link = None
        if job.event_service:  # imported here: most ranks never run an event-service job
            from hpcpilot.eventservice.eslife import run_es_job
            from hpcpilot.eventservice.link import RangeLink

            link = RangeLink(self.rank, panda_id, self.config.eventservice.ranges_per_request)

        def body() -> None:
            try:
                if link is not None:
                    holder.append(run_es_job(job, limits, ctx, control, link, stage_in))
                else:
                    holder.append(run_job(job, limits, ctx, control))
            except BaseException:  # the job lives never raise; this guards against bugs in the guard itself
                holder.append(traceback.format_exc())

        thread = threading.Thread(target=body, name=f"job-{panda_id}", daemon=True)
        self.running = _RunningJob(panda_id, control, thread, holder, link)
        thread.start()

    def finish_job(self) -> None:
        assert self.running is not None
        self.forward_outbox()
        self.pump_ranges(final=True)
        job, self.running = self.running, None
        outcome = job.result[0] if job.result else "job thread ended without a result"
        if isinstance(outcome, str):
            self.send(WorkerFailed(self.rank, self.host, job.panda_id, int(ErrorCode.UNKNOWNEXCEPTION), outcome))
        else:
            self.send(JobDone(self.rank, outcome.to_summary()))
        if not self.leaving:
            self.send(WorkRequest(self.rank))

