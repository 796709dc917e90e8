"""Clone jobs (hpcpilot.clones): the cloneJob field, the verdict rule, rank 0's scheduling of a claim, and the
job life's wait for the verdict -- which a kill must still end (the end-to-end runs are in
tests/integration/test_clone_jobs.py and tests/mpi/test_mpi_clones.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.clones import CloneGate, verdict_of
from hpcpilot.config import SiteConfig, replace
from hpcpilot.errors import ErrorCode, JobDefinitionError
from hpcpilot.joblife import JobContext, JobControl, run_job
from hpcpilot.monitor.metrics import limits_for_job
from hpcpilot.protocol import CloneClaim, CloneVerdict, Message
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler import (
    AskClone,
    Assign,
    CloneAnswered,
    CloneClaimed,
    JobsFetched,
    Kill,
    RankReady,
    Scheduler,
    SchedulerPolicy,
    ServerCommand,
    TellClone,
    WorkRequested,
)
from hpcpilot.states import JobState
from tests.pilotrun import make_job


@pytest.mark.parametrize(("value", "mode"), [("runonce", "runonce"), (" storeonce ", "storeonce"), ("NULL", ""),
                                             (None, ""), ("", "")])
def test_clone_job_field_parses(value: Any, mode: str) -> None:
    assert JobSpec.from_wire(make_job(5, "true", cloneJob=value)).clone_job == mode
    assert JobSpec.from_wire(make_job(5, "true")).clone_job == ""


@pytest.mark.parametrize("value", ["twice", "RunOnce", "runonce,storeonce", 1, ["runonce"], "run\0once"])
def test_a_malformed_clone_job_is_refused_with_a_code_and_one_line(value: Any) -> None:
    with pytest.raises(JobDefinitionError) as caught:
        JobSpec.from_wire(make_job(5, "true", cloneJob=value))
    assert caught.value.code == ErrorCode.CONVERSIONFAILURE
    assert "cloneJob" in caught.value.diag and len(caught.value.diag.splitlines()) == 1


def test_the_verdict_rule() -> None:
    assert verdict_of(1, "runonce", [{"eventRangeID": "x"}]).go
    lost = verdict_of(1, "storeonce", [])
    assert (lost.go, lost.code) == (False, 1234) and "storeonce" in lost.diag
    outage = verdict_of(1, "runonce", None, "HTTP 500")
    assert (outage.go, outage.code) == (False, int(ErrorCode.COMMUNICATIONFAILURE)) and "HTTP 500" in outage.diag


def _running(job: JobSpec) -> Scheduler:
    scheduler = Scheduler([1], SiteConfig(), SchedulerPolicy())
    actions = scheduler.handle(0.0, [RankReady(1, True), WorkRequested(1)])
    actions = scheduler.handle(1.0, [JobsFetched((job,))])
    assert any(isinstance(a, Assign) for a in actions)
    return scheduler


def test_rank0_asks_the_source_and_tells_the_rank_that_runs_the_job() -> None:
    job = JobSpec.from_wire(make_job(9, "true", cloneJob="runonce"))
    scheduler = _running(job)
    # the claim may carry a single-rank label (0): the verdict still goes to the job's rank
    assert scheduler.handle(2.0, [CloneClaimed(0, 9, "runonce")]) == [AskClone(job, "runonce")]
    verdict = CloneVerdict(9, False, 1234, "lost")
    assert [a for a in scheduler.handle(3.0, [CloneAnswered(verdict)]) if isinstance(a, TellClone)] == \
        [TellClone(1, verdict)]


def test_no_claim_or_verdict_for_a_job_being_killed_or_gone() -> None:
    job = JobSpec.from_wire(make_job(9, "true", cloneJob="runonce"))
    scheduler = _running(job)
    actions = scheduler.handle(2.0, [ServerCommand(9, "tobekilled")])
    assert any(isinstance(a, Kill) for a in actions)
    after = scheduler.handle(3.0, [CloneClaimed(1, 9, "runonce"), CloneAnswered(CloneVerdict(9, True)),
                                   CloneClaimed(1, 77, "runonce")])
    assert not [a for a in after if isinstance(a, AskClone | TellClone)]


def test_a_kill_ends_the_wait_for_a_verdict() -> None:
    gate = CloneGate()
    threading.Timer(0.05, gate.interrupt).start()
    assert gate.wait() is None
    gate = CloneGate()
    gate.deliver(CloneVerdict(1, True))
    assert gate.wait() == CloneVerdict(1, True)


def _context(tmp_path: Path, emit: Any) -> JobContext:
    config = replace(SiteConfig(), "stage", input_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    config = replace(config, "monitor", free_space_start_mb=1, use_cgroup=False, report_interval=0.2)
    return JobContext(config, 0, "host", tmp_path / "jobs", tmp_path, emit, base_dir=tmp_path)


def _run(job: dict, ctx: JobContext, control: JobControl) -> JobRecord:
    """The job life as a worker rank runs it: the definition and limits as rank 0 parsed and computed them."""
    spec = JobSpec.from_wire(job)
    return run_job(spec, limits_for_job(spec.min_ram_count, spec.core_count, spec.looping_check, ctx.config.monitor),
                   ctx, control)


@pytest.mark.parametrize("mode", ["runonce", "storeonce"])
def test_a_clone_killed_while_it_waits_ends_with_the_kill_code(tmp_path: Path, mode: str) -> None:
    """The job thread waits for rank 0 without polling; a kill (rank 0, the server, a signal) must end it."""
    control = JobControl()
    claims: list[Message] = []

    def emit(message: Message) -> None:
        if isinstance(message, CloneClaim):
            claims.append(message)
            threading.Timer(0.05, control.request_kill, (int(ErrorCode.PANDAKILL), "killed by the server")).start()

    job = make_job(11, f"touch {tmp_path}/ran; echo x > o.txt", ["o.txt"], cloneJob=mode)
    record = _run(job, _context(tmp_path, emit), control)
    assert claims == [CloneClaim(0, 11, mode)]
    assert (record.state, record.pilot_error_code) == (JobState.FAILED, int(ErrorCode.PANDAKILL))
    assert (tmp_path / "ran").exists() == (mode == "storeonce")  # storeonce claims after its payload
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing staged out


def test_a_clone_that_lost_runs_nothing_and_stages_nothing(tmp_path: Path) -> None:
    control = JobControl()

    def emit(message: Message) -> None:
        if isinstance(message, CloneClaim):
            control.clone.deliver(verdict_of(message.panda_id, message.phase, []))

    record = _run(make_job(12, f"touch {tmp_path}/ran", cloneJob="runonce"), _context(tmp_path, emit), control)
    assert (record.state, record.pilot_error_code) == (JobState.FAILED, 1234)
    assert not (tmp_path / "ran").exists()
    assert record.output_report == {}
