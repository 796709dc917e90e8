"""How a worker rank processes event ranges: three executors behind one ``run`` method.

* ``CommandExecutor``: a command template run once per range (placeholders below);
* ``ProtocolExecutor``: one long-running payload fed over the AthenaMP protocol
  (``hpcpilot.eventservice.channel``), restarted fresh after a crash;
* ``NoopExecutor``: finishes every range at once without running anything -- for measuring
  rank 0's range throughput (bench/), never for a production queue.

Each takes ranges from the ``RangeLink`` and hands back one outcome per range: finished
(output path inside the job directory, size, adler32, CPU, wall) or failed with a code.
A range the executor received is always answered, also when rank 0 kills the job.

Placeholders of a per-range command, substituted shell-quoted: {eventRangeID} {startEvent}
{lastEvent} {LFN} {GUID} {scope} {input} (the staged input file) {output} (where the range's
output must be written) {PandaID}.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcpilot import container
from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.eventservice.book import failed
from hpcpilot.eventservice.channel import (
    CHANNEL_ENV,
    NO_MORE,
    Channel,
    ChannelError,
    PayloadFailure,
    PayloadOutput,
    PayloadReady,
    parse_message,
    range_message,
)
from hpcpilot.eventservice.link import NoMoreRanges, RangeLink
from hpcpilot.gpu.model import Gpu
from hpcpilot.joblife import JobControl
from hpcpilot.monitor.gpu import NvmlMonitor
from hpcpilot.monitor.sampler import PayloadSampler
from hpcpilot.payload import Payload
from hpcpilot.protocol import Heartbeat, Message
from hpcpilot.records import EventRange, EventRangeUpdate, JobSpec
from hpcpilot.stageio import checksum
from hpcpilot.states import EventRangeStatus

log = logging.getLogger(__name__)

PLACEHOLDERS = ("eventRangeID", "startEvent", "lastEvent", "LFN", "GUID", "scope", "input", "output", "PandaID")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_SAFE_RANGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
TAKE_WAIT = 0.2
MAX_CRASHES = 3
"""A protocol payload that crashes this many times in a row without finishing a range is given up."""
NO_MORE_EVENTS_GRACE = 1800.0
"""Seconds a protocol payload has to exit after 'No more events' (pilot3's value)."""


def has_placeholder(command: str) -> bool:
    return _PLACEHOLDER.search(command) is not None


@dataclass
class RangeContext:
    """What an executor needs: the job, where it runs, and its lines to rank 0."""

    spec: JobSpec
    config: SiteConfig
    rank: int
    job_dir: Path
    rank_dir: Path
    env: dict[str, str]
    link: RangeLink
    control: JobControl
    emit: Callable[[Message], None]
    cpu_seconds: float = 0.0
    finished: int = 0
    samples: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    peaks: dict[str, int] = field(default_factory=dict)
    container: container.ContainerPlan | None = None  # the job's container (hpcpilot.container), None: bare node
    mounts: tuple[Path, ...] = ()  # bound into the container besides the rank's directory: the job's directory
    gpus: tuple[Gpu, ...] = ()  # the GPUs the rank's payloads see: measured (hpcpilot.monitor.gpu)

    def start(self, command: str, env: dict[str, str], more: tuple[Path, ...] = ()) -> tuple[Payload, int]:
        """Start ``command`` in the rank's directory (in the job's container if it has one, with ``more`` bound
        too), output appended to the rank's payload files; the payload and where its stderr began."""
        stderr = self.rank_dir / "payload.stderr"
        try:
            offset = stderr.stat().st_size
        except OSError:
            offset = 0
        payload = container.start(self.container, command, self.rank_dir, env, self.rank_dir / "payload.stdout",
                                  stderr, None, append=True, mounts=(*self.mounts, *more))
        return payload, offset

    def runtime_failure(self, code: int, offset: int) -> PilotError | None:
        """The container runtime's own failure behind ``code`` as the job's error: no range can run then."""
        if self.container is None or code == 0:
            return None
        failure = self.container.failure(code, self.rank_dir / "payload.stderr", offset)
        return None if failure is None else PilotError(failure.code, failure.diag)

    def next_range(self) -> EventRange | None:
        """The next range to process; None when there are no more or the job is being killed."""
        while not self.control.kill_event.is_set():
            try:
                item = self.link.take(TAKE_WAIT)
            except NoMoreRanges:
                return None
            if item is not None:
                return item
        return None

    def next_ranges(self) -> list[EventRange]:
        """Every range that is here (at least one); [] when there are no more or the job is being killed."""
        while not self.control.kill_event.is_set():
            try:
                items = self.link.take_all(TAKE_WAIT)
            except NoMoreRanges:
                return []
            if items:
                return items
        return []

    def answer(self, outcome: EventRangeUpdate) -> None:
        if outcome.status == EventRangeStatus.FINISHED:
            self.finished += 1
        self.link.done(outcome)

    def answer_all(self, outcomes: list[EventRangeUpdate]) -> None:
        self.finished += sum(1 for outcome in outcomes if outcome.status == EventRangeStatus.FINISHED)
        self.link.done_all(outcomes)

    def killed(self, range_id: str) -> EventRangeUpdate:
        return failed(range_id, self.control.kill_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE),
                      f"stopped: {self.control.kill_diag}")

    def finished_outcome(self, range_id: str, output: str, cpu: float, wall: float) -> EventRangeUpdate:
        """Finished only if the output is a non-empty regular file inside the job directory."""
        path = Path(output) if os.path.isabs(output) else self.rank_dir / output
        try:
            resolved = path.resolve(strict=True)
            resolved.relative_to(self.job_dir.resolve())
        except (OSError, ValueError):
            return failed(range_id, ErrorCode.MISSINGOUTPUTFILE,
                          f"output {str(output)[:120]!r} does not exist inside the job directory")
        size = resolved.stat().st_size if resolved.is_file() else 0
        if size == 0:
            return failed(range_id, ErrorCode.ZEROFILESIZE, f"output {resolved.name[:120]!r} is empty or not a file")
        return EventRangeUpdate(range_id, EventRangeStatus.FINISHED, cpu_time=cpu, wall_time=wall,
                                output=str(resolved), fsize=size,
                                adler32=checksum.adler32(resolved))


def unsafe_range_id(item: EventRange) -> EventRangeUpdate | None:
    """A range whose ID cannot name a file safely is fatal: retrying it cannot help."""
    if _SAFE_RANGE_ID.match(item.event_range_id):
        return None
    return EventRangeUpdate(item.event_range_id, EventRangeStatus.FATAL, int(ErrorCode.BADOUTPUTFILENAME),
                            "event range ID is not a safe file name")


class NoopExecutor:
    """Finishes every range without running anything (benchmarks of rank 0 only).

    It takes and answers what is buffered in one go: on a machine whose cores the worker ranks share
    with rank 0, a lock and a wake-up per range of a null payload is CPU that rank 0 does not get.
    """

    def run(self, ctx: RangeContext) -> None:
        while items := ctx.next_ranges():
            ctx.answer_all([EventRangeUpdate(item.event_range_id, EventRangeStatus.FINISHED) for item in items])


class CommandExecutor:
    """Runs ``template`` once per range in the rank's directory."""

    def __init__(self, template: str) -> None:
        self.template = template

    def run(self, ctx: RangeContext) -> None:
        while (item := ctx.next_range()) is not None:
            ctx.answer(unsafe_range_id(item) or self.run_one(ctx, item))

    def command_for(self, ctx: RangeContext, item: EventRange, output: Path) -> str:
        values = {"eventRangeID": item.event_range_id, "startEvent": str(item.start_event),
                  "lastEvent": str(item.last_event), "LFN": item.lfn, "GUID": item.guid, "scope": item.scope,
                  "input": str(ctx.job_dir / Path(item.lfn).name) if item.lfn else "", "output": str(output),
                  "PandaID": str(ctx.spec.panda_id)}
        return _PLACEHOLDER.sub(lambda m: shlex.quote(values[m.group(1)]), self.template)

    def run_one(self, ctx: RangeContext, item: EventRange) -> EventRangeUpdate:
        output = ctx.rank_dir / f"{item.event_range_id}.out"
        env = {**ctx.env, "HPCPILOT_EVENT_RANGE_ID": item.event_range_id, "HPCPILOT_EVENT_OUTPUT": str(output)}
        started = time.monotonic()
        try:
            payload, offset = ctx.start(self.command_for(ctx, item, output), env)
        except PilotError as exc:
            return failed(item.event_range_id, exc.code, exc.diag)
        code = _wait(payload, ctx)
        ctx.cpu_seconds += payload.cpu_seconds or 0.0
        wall = time.monotonic() - started
        if code is None:
            return ctx.killed(item.event_range_id)
        if (broken := ctx.runtime_failure(code, offset)) is not None:
            ctx.answer(failed(item.event_range_id, broken.code, broken.diag))
            raise broken
        if code != 0:
            return failed(item.event_range_id, ErrorCode.UNKNOWNPAYLOADFAILURE,
                          f"range command exited with code {code}")
        return ctx.finished_outcome(item.event_range_id, str(output), payload.cpu_seconds or 0.0, wall)


def _wait(payload: Payload, ctx: RangeContext) -> int | None:
    """The payload's exit code, or None if rank 0 killed the job first (the payload is then stopped)."""
    while (code := payload.wait(0.1)) is None:
        if ctx.control.kill_event.is_set():
            payload.terminate(ctx.config.monitor.kill_grace)
            return None
    return code


class ProtocolExecutor:
    """One long-running payload, fed one range per 'Ready for events'."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.in_flight: dict[str, tuple[EventRange, float]] = {}
        self.no_more_sent = False
        self.crashes = 0

    def run(self, ctx: RangeContext) -> None:
        channel = Channel(ctx.rank_dir)
        try:
            while not self.no_more_sent and not ctx.control.kill_event.is_set():
                if not self.run_payload(ctx, channel):
                    break
        finally:
            channel.close()

    def run_payload(self, ctx: RangeContext, channel: Channel) -> bool:
        """Run one payload process to its end; True if a fresh one should take over."""
        env = {**ctx.env, CHANNEL_ENV: str(channel.path)}
        # the channel's socket is in the rank's directory, or in a short private one for a deep workdir
        payload, offset = ctx.start(self.command, env, more=(Path(channel.path).parent,))
        sampler = _Sampling(ctx, payload)
        finished_before = ctx.finished
        try:
            code = self.serve(ctx, channel, payload, sampler)
        finally:
            payload.terminate(ctx.config.monitor.kill_grace)
            sampler.close()
            ctx.cpu_seconds += payload.cpu_seconds or 0.0
        if code is None:  # killed by rank 0
            for range_id in list(self.in_flight):
                ctx.answer(ctx.killed(range_id))
            self.in_flight.clear()
            return False
        if (broken := ctx.runtime_failure(code, offset)) is not None:
            ctx.answer_all([failed(range_id, broken.code, broken.diag) for range_id in self.in_flight])
            self.in_flight.clear()
            raise broken
        crashed = code != 0 or bool(self.in_flight) or not self.no_more_sent
        for range_id in list(self.in_flight):
            ctx.answer(failed(range_id, ErrorCode.UNKNOWNPAYLOADFAILURE,
                              f"payload exited with code {code} while processing the range"))
        self.in_flight.clear()
        if not crashed:
            return False
        self.crashes = 0 if ctx.finished > finished_before else self.crashes + 1
        log.warning("job %d: payload exited with code %d before the end of its ranges "
                    "(%d crash(es) in a row without a finished range)", ctx.spec.panda_id, code, self.crashes)
        return self.crashes < MAX_CRASHES

    def serve(self, ctx: RangeContext, channel: Channel, payload: Payload, sampler: _Sampling) -> int | None:
        """Answer the payload until it exits (its code) or rank 0 kills the job (None)."""
        waiting_for_range = False
        no_more_at: float | None = None
        while True:
            sampler.maybe_sample()
            if ctx.control.kill_event.is_set():
                return None
            code = payload.poll()
            if code is not None:
                self.drain(ctx, channel)
                return code
            if no_more_at is not None and time.monotonic() - no_more_at > NO_MORE_EVENTS_GRACE:
                log.warning("job %d: payload did not exit after 'No more events'", ctx.spec.panda_id)
                return 0
            if not channel.connected:
                channel.accept(0.1)
                continue
            if waiting_for_range:
                waiting_for_range = not self.feed(ctx, channel)
                if self.no_more_sent and no_more_at is None:
                    no_more_at = time.monotonic()
            lines = channel.receive(0.05)
            for line in lines or []:
                if self.handle(ctx, line):
                    waiting_for_range = True

    def drain(self, ctx: RangeContext, channel: Channel) -> None:
        """Messages the payload sent just before it exited still count."""
        while channel.connected:
            lines = channel.receive(0.0)
            if not lines:
                return
            for line in lines:
                self.handle(ctx, line)

    def feed(self, ctx: RangeContext, channel: Channel) -> bool:
        """Send the payload one range (or 'No more events'); False if none is available yet."""
        try:
            item = ctx.link.take(0.0)
        except NoMoreRanges:
            self.no_more_sent = channel.send(NO_MORE)
            return True
        if item is None:
            return False
        bad = unsafe_range_id(item)
        if bad is not None:
            ctx.answer(bad)
            return False
        self.in_flight[item.event_range_id] = (item, time.monotonic())
        channel.send(range_message(item.to_wire()))
        return True

    def handle(self, ctx: RangeContext, line: str) -> bool:
        """One payload message; True when it asks for a range."""
        try:
            message = parse_message(line)
        except ChannelError as exc:
            log.warning("job %d: bad payload message ignored: %s", ctx.spec.panda_id, exc)
            return False
        if isinstance(message, PayloadReady):
            return True
        held = self.in_flight.pop(message.range_id, None)
        if held is None:
            log.warning("job %d: payload reported range %s, which it was not given", ctx.spec.panda_id,
                        message.range_id[:80])
            return False
        if isinstance(message, PayloadOutput):
            wall = message.wall or time.monotonic() - held[1]
            ctx.answer(ctx.finished_outcome(message.range_id, message.path, message.cpu, wall))
        elif isinstance(message, PayloadFailure):
            ctx.answer(EventRangeUpdate(message.range_id, message.status, message.code, message.diag,
                                        wall_time=time.monotonic() - held[1]))
        return False


class _Sampling:
    """Heartbeats with the long-running payload's monitoring, so rank 0 can judge memory and looping."""

    def __init__(self, ctx: RangeContext, payload: Payload) -> None:
        self.ctx = ctx
        root = payload.monitor_pid(ctx.control.kill_event.is_set)  # a podman payload: its container's first
        self.sampler = PayloadSampler(root, ctx.spec.panda_id, ctx.rank_dir, ctx.rank_dir / "payload.stdout", [],
                                      ctx.config.monitor, None, ctx.rank_dir / "memory_monitor_output.txt",
                                      gpu=NvmlMonitor.open(ctx.gpus) if ctx.gpus else None)
        self.next_at = time.monotonic()

    def maybe_sample(self) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.ctx.config.monitor.report_interval
        report = self.sampler.sample(time.time())
        if report.tree.nprocs == 0:  # the payload just exited: nothing to measure
            return
        times, memory = self.ctx.samples
        times.append(report.tree.time)
        memory.append(report.tree.pss + report.tree.swap)
        peaks = self.ctx.peaks
        for attr, value in (("max_pss", report.tree.pss), ("max_rss", report.tree.rss),
                            ("max_vmem", report.tree.vmem), ("max_swap", report.tree.swap)):
            peaks[attr] = max(peaks.get(attr, 0), int(value))
        self.ctx.emit(Heartbeat(self.ctx.rank, report, (report.tree,)))

    def close(self) -> None:
        self.sampler.close()
        self.sampler.close_gpu()


def choose_executor(spec: JobSpec, config: SiteConfig) -> NoopExecutor | CommandExecutor | ProtocolExecutor:
    """A command with range placeholders runs per range; otherwise the site's payload_mode decides."""
    command = f"{spec.transformation} {spec.job_pars}".strip()
    mode = config.eventservice.payload_mode
    if mode == "noop":
        return NoopExecutor()
    if has_placeholder(command):
        return CommandExecutor(command)
    if mode == "per-range":
        return CommandExecutor(config.eventservice.range_command or command)
    return ProtocolExecutor(command)
