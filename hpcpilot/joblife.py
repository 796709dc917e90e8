"""The life of one normal PanDA job on one rank: setup, stage-in, payload, stage-out.

``run_job`` is called by a worker rank (in a thread of its own) and returns the final
``JobRecord``; it never raises.  While the payload runs it samples the process tree and
hands ``Heartbeat`` messages to ``emit`` — rank 0 decides from them whether the job is
looping, over its memory or out of time, and answers through ``JobControl.request_kill``.
The worker only measures, and kills on command.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcpilot import catalogs, clones, container, directaccess, outputs
from hpcpilot.catalogs import CATALOG_FILES
from hpcpilot.cgroups import PayloadCgroup, oom_diag
from hpcpilot.config import SiteConfig, resolve_path
from hpcpilot.errors import ErrorCode, PilotError, transform_exit_error
from hpcpilot.gpu.model import Gpu
from hpcpilot.jobreport import COMMAND_NOT_FOUND, apply_job_report, not_found_line, tail_of_newest_text_file
from hpcpilot.jobsteps import STEPS_LOG, failure_diag, job_steps
from hpcpilot.jobsteps import payload_command as steps_command
from hpcpilot.monitor import diskscan, prmon
from hpcpilot.monitor.gpu import NvmlMonitor, gpu_job_metrics
from hpcpilot.monitor.leakfit import fit_leak, job_metrics_fields
from hpcpilot.monitor.metrics import Limits
from hpcpilot.monitor.sampler import PayloadSampler
from hpcpilot.payload import Payload, payload_cgroup_name
from hpcpilot.protocol import Heartbeat, JobUpdate, Message
from hpcpilot.records import CLONE_RUNONCE, CLONE_STOREONCE, JobRecord, JobSpec
from hpcpilot.stageio import files, staging
from hpcpilot.states import JobState
from hpcpilot.timing import Timing, panda_time

log = logging.getLogger(__name__)

PAYLOAD_STDOUT = "payload.stdout"
PAYLOAD_STDERR = "payload.stderr"
PRMON_TEXT = "memory_monitor_output.txt"
PRMON_SUMMARY = "memory_monitor_summary.json"
JOB_DEFINITION_BACKUP = "pandaJob.json"
JOB_SETUP_SCRIPT = "job_setup.sh"
JOB_REPORT = "jobReport.json"
# Files the pilot writes or reads in a job workdir: no input or zip member may replace them (refused with 1371;
# see hpcpilot.stageio.files).  jobReport.json is the payload's, but the pilot trusts it for outputs and GUIDs.
PILOT_FILES = (JOB_DEFINITION_BACKUP, JOB_SETUP_SCRIPT, PAYLOAD_STDOUT, PAYLOAD_STDERR, PRMON_TEXT, PRMON_SUMMARY,
               JOB_REPORT, STEPS_LOG, *CATALOG_FILES)
MAX_JOB_METRICS = 500  # the server keeps 500 characters of jobMetrics
DEBUG_TAIL_BYTES = 2048  # the server keeps at most 2048 characters of stdout
SHELL_SIGNAL_BASE = 128  # a shell reports a child killed by signal N as 128 + N
SIGNAL_SETTLE_SECONDS = 1.0  # how long a signal-killed payload's job waits for the pilot's own stop request


@dataclass
class JobControl:
    """Rank 0's commands to a running job, set from the worker's message loop."""

    kill_event: threading.Event = field(default_factory=threading.Event)
    kill_code: int = 0
    kill_diag: str = ""
    debug: bool = False
    clone: clones.CloneGate = field(default_factory=clones.CloneGate)  # a clone job's wait for rank 0

    def request_kill(self, code: int, diag: str) -> None:
        """Ask the job to stop its payload; the first request's code wins."""
        if not self.kill_event.is_set():
            self.kill_code, self.kill_diag = code, diag
            self.kill_event.set()
        self.clone.interrupt()


@dataclass(frozen=True)
class JobContext:
    """What a job needs from the rank that runs it."""

    config: SiteConfig
    rank: int
    host: str
    jobs_dir: Path
    pilot_dir: Path
    emit: Callable[[Message], None]
    cpu_model: str = ""
    base_dir: Path = field(default_factory=Path.cwd)
    gpu_env: Mapping[str, str] = field(default_factory=dict)  # the rank's GPU variables (hpcpilot.gpu.binding)
    gpus: tuple[Gpu, ...] = ()  # the GPUs the rank's payloads see (hpcpilot.gpu.visible): measured, in jobMetrics


def run_job(spec: JobSpec, limits: Limits, ctx: JobContext, control: JobControl) -> JobRecord:
    """Run one job to its end and return the final record (finished or failed, never raises).

    ``spec`` and ``limits`` are rank 0's: the job definition is parsed once, where it arrives, and its
    limits computed once, by the scheduler that enforces them."""
    timing = Timing()
    record = JobRecord(panda_id=spec.panda_id, rank=ctx.rank, node=ctx.host,
                       site_name=ctx.config.site.queue, start_time=panda_time(time.time()))
    try:
        record.attempt_nr, record.core_count = spec.attempt_nr, spec.core_count
        record.n_input_files = len(spec.inputs)
        _JobLife(spec, limits, ctx, control, record, timing).run()
    except PilotError as exc:
        record.fail(exc.code, exc.diag)
    except Exception as exc:  # a bug must fail this job, not the rank
        log.error("job %s: unexpected error: %s", record.panda_id, traceback.format_exc())
        record.fail(ErrorCode.UNKNOWNEXCEPTION, f"{type(exc).__name__}: {exc}")
    if record.state != JobState.FAILED:
        record.state = JobState.FINISHED
    record.end_time = panda_time(time.time())
    record.pilot_timing = timing.pilot_timing()
    return record


def job_metrics(times: list[float], memory: list[float], final: bool, n_events: int = 0,
                gpus: Sequence[Gpu] = ()) -> str:
    """jobMetrics ``key=value`` pairs (at most 500 characters): the memory-leak fit, nEvents, and the payload's
    GPUs (``GPU_name``, ``nGPU``, as pilot3 writes them)."""
    fields = job_metrics_fields(fit_leak(times, memory, final=final))
    if n_events:
        fields["nEvents"] = str(n_events)
    fields.update(gpu_job_metrics(gpus))
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    return text[:MAX_JOB_METRICS].rsplit(" ", 1)[0] if len(text) > MAX_JOB_METRICS else text


class _JobLife:
    """The phases of one job, in order; each phase raises PilotError to fail the job."""

    pilot_files: tuple[str, ...] = PILOT_FILES  # names (or patterns) stage-in must not replace

    def __init__(self, spec: JobSpec, limits: Limits, ctx: JobContext, control: JobControl, record: JobRecord,
                 timing: Timing) -> None:
        self.spec, self.limits, self.ctx, self.control, self.record = spec, limits, ctx, control, record
        self.timing = timing
        self.cfg = ctx.config
        self.workdir = ctx.jobs_dir / f"PandaJob_{spec.panda_id}"
        self.guids: dict[str, str] = {}
        self.memory_series: tuple[list[float], list[float]] = ([], [])
        self.outputs: list[outputs.Output] = []
        self.direct = directaccess.chosen(spec, ctx.config)  # inputs read in place (hpcpilot.directaccess)
        # the job's container, if any; its --containerImage is then no argument of the payload (hpcpilot.container)
        self.container, self.payload_spec = container.ContainerPlan.for_job(spec, ctx.config.container,
                                                                            self.container_cache())
        # several transformations run as one payload (hpcpilot.jobsteps)
        self.steps = [directaccess.adjust_step(step, self.direct) for step in job_steps(self.payload_spec)]

    def run(self) -> None:
        self.set_up_and_stage_in()
        if self.spec.clone_job == CLONE_RUNONCE and not self.clone_may_go_on():
            return  # another clone ran: no payload, nothing staged out
        with self.timing.phase("payload"):
            self.run_payload()
        if self.spec.clone_job == CLONE_STOREONCE and not self.record.failed and not self.clone_may_go_on():
            return  # another clone stored: nothing staged out, not even the log (its name may be the winner's)
        with self.timing.phase("stageout"):
            self.stage_out()

    def clone_may_go_on(self) -> bool:
        """A clone job asks rank 0 (hpcpilot.clones); a loser ends failed with the verdict's code."""
        verdict = clones.claim(self.ctx.rank, self.spec.panda_id, self.spec.clone_job, self.control.clone,
                               self.ctx.emit)
        if verdict is None:
            self.record.fail(self.control.kill_code, self.control.kill_diag)
            return False
        if not verdict.go:
            log.info("job %d: %s", self.spec.panda_id, verdict.diag)
            self.record.fail(verdict.code, verdict.diag)
        return verdict.go

    # ---- setup ----------------------------------------------------------------------

    def set_up_and_stage_in(self) -> None:
        """Checks, workdir and stage-in; the server hears 'starting', then 'running'."""
        with self.timing.phase("setup"):
            self.check_local_space()
            self.check_file_names()
            self.check_container()
            self.make_workdir()
        self.report_state(JobState.STARTING)
        with self.timing.phase("stagein"):
            if self.direct:
                pfns = directaccess.turls(self.spec, self.input_dir(), self.cfg, self.pilot_files)
            else:
                pfns = [str(path) for path in staging.stage_in(self.spec, self.input_dir(), self.workdir, self.cfg,
                                                                reserved=self.pilot_files)]
            catalogs.write_input_catalog(self.workdir, self.spec.inputs, pfns)
        self.report_state(JobState.RUNNING)

    def check_local_space(self) -> None:
        self.ctx.jobs_dir.mkdir(parents=True, exist_ok=True)
        free_mb = diskscan.free_space_mb(self.ctx.jobs_dir)
        needed = self.cfg.monitor.free_space_start_mb
        if free_mb < needed:
            raise PilotError(ErrorCode.NOLOCALSPACE,
                             f"{free_mb:.0f} MB free at {self.ctx.jobs_dir}, {needed} MB needed to start a job")

    def check_file_names(self) -> None:
        for fspec in (*self.spec.outputs, *self.spec.inputs, *filter(None, [self.spec.log_file])):
            files.check_lfn(fspec.lfn)

    def check_container(self) -> None:
        """The runtime and the image are there before anything is staged in (1325, 1360)."""
        if self.container is not None:
            self.container.ready(os.environ)

    def container_cache(self) -> str:
        """Node-local scratch for the runtime's own image copies ('' without local scratch)."""
        scratch = self.cfg.site.local_scratch
        return str(resolve_path(scratch, self.ctx.base_dir) / "container-cache") if scratch else ""

    def container_mounts(self) -> list[Path]:
        """Host directories the payload reads besides its workdir: the site's input directory when the inputs
        stay there (symlinks to it, or read in place), so they are reachable where the catalog says."""
        if self.direct or self.cfg.stage.copytool_in == "symlink":
            return [self.input_dir()]
        return []

    def make_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / JOB_DEFINITION_BACKUP).write_text(json.dumps(self.spec.to_wire(), indent=1))
        script = self.workdir / JOB_SETUP_SCRIPT
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.payload_env_extra().items()))
        script.write_text(
            "#!/bin/bash\n"
            f"# Re-run PanDA job {self.spec.panda_id} by hand, as hpcpilot ran it.\n"
            f"cd {shlex.quote(str(self.workdir))}\n{exports}{self.container_note()}"
            f"{self.payload_command()}\n")
        script.chmod(0o755)

    def container_note(self) -> str:
        plan = self.container
        return "" if plan is None else f"# hpcpilot ran this in {plan.runtime} image {shlex.quote(plan.image)}\n"

    def input_dir(self) -> Path:
        return resolve_path(self.cfg.stage.input_dir or ".", self.ctx.base_dir)

    def output_dir(self) -> Path:
        return resolve_path(self.cfg.stage.output_dir or "outputs", self.ctx.base_dir)

    # ---- payload --------------------------------------------------------------------

    def payload_command(self) -> str:
        return steps_command(self.steps)

    def payload_env_extra(self) -> dict[str, str]:
        cores = str(self.spec.core_count)
        return {"PandaID": str(self.spec.panda_id), "PANDAID": str(self.spec.panda_id),
                "ATHENA_PROC_NUMBER": cores, "ATHENA_CORE_NUMBER": cores,
                "PILOT_HOME": str(self.ctx.pilot_dir), "PILOT_JOB_WORKDIR": str(self.workdir), **self.ctx.gpu_env}

    def run_payload(self) -> None:
        limits = self.limits
        cgroup = None
        if self.cfg.monitor.use_cgroup:
            cgroup = PayloadCgroup.create(payload_cgroup_name(self.ctx.pilot_dir, self.spec.panda_id),
                                          limits.memory_kb * 1024 if limits.memory_kb else None)
        env = {**os.environ, **self.payload_env_extra()}
        payload = container.start(self.container, self.payload_command(), self.workdir, env,
                                  self.workdir / PAYLOAD_STDOUT, self.workdir / PAYLOAD_STDERR, cgroup,
                                  mounts=self.container_mounts())
        self.link_stdout()
        try:
            self.watch(payload, cgroup)
        finally:
            payload.terminate(self.cfg.monitor.kill_grace)
            if cgroup is not None:
                if cgroup.oom_killed():
                    self.record.fail(ErrorCode.PAYLOADEXCEEDMAXMEM, oom_diag(cgroup.memory(), limits.memory_kb))
                cgroup.remove()
        # wait4's rusage once the payload is reaped: its own CPU and that of every descendant it waited for
        self.record.cpu_seconds = payload.cpu_seconds or 0.0
        self.record.cpu_consumption_time = round(self.record.cpu_seconds)
        self.after_payload(payload)
        self.record.job_metrics = job_metrics(*self.memory_series, final=True, n_events=self.record.n_events,
                                              gpus=self.ctx.gpus)

    def link_stdout(self) -> None:
        link = self.ctx.pilot_dir / f"payload.{self.spec.panda_id}.stdout"
        try:
            link.unlink(missing_ok=True)
            link.symlink_to(self.workdir / PAYLOAD_STDOUT)
        except OSError as exc:
            log.debug("no stdout link in the pilot dir: %s", exc)

    def watch(self, payload: Payload, cgroup: PayloadCgroup | None) -> None:
        """Sample and report until the payload exits or rank 0 asks for a kill."""
        root = payload.monitor_pid(self.control.kill_event.is_set)  # a podman payload: its container's first
        sampler = PayloadSampler(
            root, self.spec.panda_id, self.workdir, self.workdir / PAYLOAD_STDOUT,
            [f.lfn for f in self.spec.outputs], self.cfg.monitor,
            cgroup.memory if cgroup is not None else None, self.workdir / PRMON_TEXT,
            gpu=NvmlMonitor.open(self.ctx.gpus) if self.ctx.gpus else None)
        interval = self.cfg.monitor.report_interval
        next_report = time.monotonic()
        times: list[float] = []
        memory: list[float] = []
        poll = 0.005  # short payloads end within milliseconds; long ones are polled every 0.2 s
        while payload.poll() is None:
            if time.monotonic() >= next_report:
                report = sampler.sample(time.time())
                live = report.tree.nprocs > 0  # the same series as the prmon file, which skips empty trees
                if live:
                    times.append(report.tree.time)
                    memory.append(report.tree.pss + report.tree.swap)
                self.ctx.emit(Heartbeat(self.ctx.rank, report, (report.tree,) if live else (), self.debug_tail(),
                                        job_metrics(times, memory, final=False, gpus=self.ctx.gpus)))
                next_report = time.monotonic() + interval
            if self.control.kill_event.wait(min(poll, max(0.0, next_report - time.monotonic()))):
                self.record.fail(self.control.kill_code, self.control.kill_diag)
                payload.terminate(self.cfg.monitor.kill_grace)
                break
            poll = min(poll * 2, 0.2)
        self.settle_signal(payload)
        prmon.write_summary(self.workdir / PRMON_SUMMARY, sampler.prmon_summary())
        sampler.close_gpu()
        self.apply_memory_summary(sampler.summary())
        self.memory_series = (times, memory)

    def settle_signal(self, payload: Payload) -> None:
        """A payload that died of a signal while the pilot is being stopped ends with the pilot's code.

        A batch system (scancel, preemption) signals every process of the step at once, payloads
        included: the payload's exit can be seen a moment before the rank's own stop request.
        """
        code = payload.exit_code
        if self.record.failed or code is None or 0 <= code <= SHELL_SIGNAL_BASE:
            return
        if self.control.kill_event.wait(SIGNAL_SETTLE_SECONDS):
            self.record.fail(self.control.kill_code, self.control.kill_diag)

    def debug_tail(self) -> str:
        if not self.control.debug:
            return ""
        return tail_of_newest_text_file(self.workdir, DEBUG_TAIL_BYTES)

    def apply_memory_summary(self, summary: dict[str, Any]) -> None:
        peak, avg = summary.get("Max", {}), summary.get("Avg", {})
        rec = self.record
        rec.max_pss, rec.max_rss = int(peak.get("pss", 0)), int(peak.get("rss", 0))
        rec.max_vmem, rec.max_swap = int(peak.get("vmem", 0)), int(peak.get("swap", 0))
        rec.avg_pss, rec.avg_rss = int(avg.get("pss", 0)), int(avg.get("rss", 0))
        rec.avg_vmem, rec.avg_swap = int(avg.get("vmem", 0)), int(avg.get("swap", 0))
        rec.tot_rchar, rec.tot_wchar = int(peak.get("rchar", 0)), int(peak.get("wchar", 0))
        rec.tot_rbytes, rec.tot_wbytes = int(peak.get("read_bytes", 0)), int(peak.get("write_bytes", 0))

    def after_payload(self, payload: Payload) -> None:
        code = payload.exit_code if payload.exit_code is not None else -1
        self.record.trans_exit_code = code
        report_path = self.workdir / JOB_REPORT
        self.guids = apply_job_report(report_path, self.record)
        if self.record.failed:
            return
        if code < 0:
            self.record.fail(ErrorCode.SIGTERM, f"payload killed by signal {-code}")
        elif code != 0 and (failure := self.runtime_failure(code)) is not None:
            self.record.fail(failure.code, failure.diag)
        elif code != 0:
            diag = failure_diag(self.workdir, self.steps, code)
            missing = not_found_line(self.workdir / PAYLOAD_STDERR) if code == COMMAND_NOT_FOUND else ""
            self.record.fail(transform_exit_error(code), f"{diag}: {missing}" if missing else diag)

    def runtime_failure(self, code: int) -> container.RuntimeFailure | None:
        """The container runtime's own failure behind the exit ``code`` (not the payload's), if any."""
        return None if self.container is None else self.container.failure(code, self.workdir / PAYLOAD_STDERR)

    # ---- stage-out ------------------------------------------------------------------

    def stage_out(self) -> None:
        """Outputs of a successful payload, and always the log tarball."""
        transfers: list[tuple[Path, str]] = []
        if not self.record.failed:
            transfers = self.collect_outputs()
        guids = catalogs.output_guids(self.workdir, self.guids, [lfn for _path, lfn in transfers])
        log_spec = self.spec.log_file
        if log_spec is not None:
            tarball = self.ctx.jobs_dir / log_spec.lfn
            guids[log_spec.lfn] = log_spec.guid or str(uuid.uuid4())
            catalogs.write_pool_catalog(self.workdir / catalogs.OUTPUT_CATALOG, [
                (guids[lfn], lfn, str(path)) for path, lfn in [*transfers, (tarball, log_spec.lfn)]])
            files.make_log_tarball(self.workdir, tarball, exclude=[log_spec.lfn])
            transfers.append((tarball, log_spec.lfn))
        try:
            report = staging.stage_out(transfers, self.output_dir(), self.cfg)
        except OSError as exc:
            self.record.fail(ErrorCode.STAGEOUTFAILED, f"cannot create {self.output_dir()}: {exc.strerror}")
            return
        except PilotError as exc:
            self.record.fail(exc.code, exc.diag)
            return
        for lfn, entry in report.items():
            entry["guid"] = guids.get(lfn) or str(uuid.uuid4())
        outputs.describe(report, self.outputs)
        self.record.output_report = report
        if self.cfg.stage.arc_output_files:
            catalogs.write_arc_output_files(self.workdir / catalogs.ARC_OUTPUT_FILES, report)

    def collect_outputs(self) -> list[tuple[Path, str]]:
        """The outputs to stage out (hpcpilot.outputs: the jobReport's list, spill-over files, allowNoOutput)."""
        try:
            self.outputs = outputs.choose_outputs(self.spec, outputs.listed_outputs(self.record.meta_data),
                                                  self.workdir)
        except PilotError as exc:
            self.record.fail(exc.code, exc.diag)
            return []
        return [(output.path, output.lfn) for output in self.outputs]

    def report_state(self, state: JobState) -> None:
        self.record.state = state
        self.ctx.emit(JobUpdate(self.ctx.rank, self.record.to_summary()))
