"""The life of an event-service job on one worker rank.

Every rank of the job shares one job directory under the pilot's workdir,
``<workdir>/jobs/PandaJob_<id>/``, because rank 0 bundles the outputs of all ranks and the
inputs are staged in once: the first rank (``stage_in``) does the set-up and the stage-in and
reports the job running; rank 0 only then lets other ranks join.  Each rank works in its own
``rank<r>/`` below it.  There is no stage-out here: outputs go to rank 0's bundles, and the
job's log is staged out by rank 0 when the job ends.

The rank's record (CPU, memory, events finished here) goes to rank 0, which folds the
records of all ranks into the job's final one.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path

from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.eventservice.book import failed
from hpcpilot.eventservice.executors import RangeContext, choose_executor
from hpcpilot.eventservice.link import RangeLink
from hpcpilot.joblife import PILOT_FILES, JobContext, JobControl, _JobLife, job_metrics
from hpcpilot.monitor.metrics import Limits
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.states import JobState
from hpcpilot.timing import Timing, panda_time

log = logging.getLogger(__name__)

RANK_DIR_PREFIX = "rank"  # each rank of an ES job works in <job dir>/rank<N>/
SHARED_WAIT = 60.0
"""Seconds a joining rank waits for the shared job directory to appear (shared filesystems lag)."""


def es_job_dir(pilot_dir: Path, panda_id: int) -> Path:
    """Where all ranks of an event-service job meet (on the shared workdir, never local scratch)."""
    return pilot_dir / "jobs" / f"PandaJob_{panda_id}"


def run_es_job(spec: JobSpec, limits: Limits, ctx: JobContext, control: JobControl, link: RangeLink,
               stage_in: bool) -> JobRecord:
    """This rank's part of an event-service job; never raises, always answers every range it got."""
    timing = Timing()
    record = JobRecord(panda_id=spec.panda_id, rank=ctx.rank, node=ctx.host,
                       site_name=ctx.config.site.queue, start_time=panda_time(time.time()))
    try:
        record.attempt_nr, record.core_count = spec.attempt_nr, spec.core_count
        _EsRankLife(spec, limits, ctx, control, record, timing, link, stage_in).run()
    except PilotError as exc:
        record.fail(exc.code, exc.diag)
    except Exception as exc:  # a bug must fail this rank's part, not the rank
        log.error("job %s: unexpected error: %s", record.panda_id, traceback.format_exc())
        record.fail(ErrorCode.UNKNOWNEXCEPTION, f"{type(exc).__name__}: {exc}")
    if control.kill_event.is_set():
        record.fail(control.kill_code, control.kill_diag)
    code = record.pilot_error_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE)
    diag = record.pilot_error_diag or "the rank stopped processing the job"
    link.give_back(lambda range_id: failed(range_id, code, f"not processed: {diag}"))
    if record.state != JobState.FAILED:
        record.state = JobState.FINISHED
    record.end_time = panda_time(time.time())
    record.pilot_timing = timing.pilot_timing()
    return record


class _EsRankLife(_JobLife):
    """Set-up (first rank only), then the executor until the job's ranges run out."""

    pilot_files = (*PILOT_FILES, f"{RANK_DIR_PREFIX}[0-9]*")  # and each rank's own directory, made after stage-in

    def __init__(self, spec: JobSpec, limits: Limits, ctx: JobContext, control: JobControl, record: JobRecord,
                 timing: Timing, link: RangeLink, stage_in: bool) -> None:
        super().__init__(spec, limits, ctx, control, record, timing)
        self.link, self.stage_in = link, stage_in
        self.workdir = es_job_dir(ctx.pilot_dir, spec.panda_id)
        self.rank_dir = self.workdir / f"{RANK_DIR_PREFIX}{ctx.rank}"

    def run(self) -> None:
        if self.stage_in:
            self.set_up_and_stage_in()
        else:
            self.wait_for_shared_dir()
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        with self.timing.phase("payload"):
            self.process_ranges()

    def wait_for_shared_dir(self) -> None:
        deadline = time.monotonic() + SHARED_WAIT
        while not self.workdir.is_dir():
            if time.monotonic() > deadline or self.control.kill_event.wait(0.2):
                raise PilotError(ErrorCode.SETUPFAILURE, f"shared job directory {self.workdir} never appeared")

    def process_ranges(self) -> None:
        env = {**os.environ, **self.payload_env_extra(), "PILOT_JOB_WORKDIR": str(self.workdir)}
        ranges = RangeContext(self.payload_spec, self.cfg, self.ctx.rank, self.workdir, self.rank_dir, env,
                              self.link, self.control, self.ctx.emit, container=self.container,
                              mounts=(self.workdir, *self.container_mounts()), gpus=self.ctx.gpus)
        self.check_container()  # 1325/1360 fail this rank's part before it takes a range
        self.link.start()
        try:
            choose_executor(self.payload_spec, self.cfg).run(ranges)
        finally:
            self.record.cpu_seconds = ranges.cpu_seconds
            self.record.cpu_consumption_time = round(ranges.cpu_seconds)
            self.record.n_events = ranges.finished
            for attr, value in ranges.peaks.items():
                setattr(self.record, attr, value)
            self.record.job_metrics = job_metrics(*ranges.samples, final=True, gpus=self.ctx.gpus)
