"""PandaSource: journal + background sender against the test server, outages, restarts, secrets."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hpcpilot.journal import JOB, RANGE
from hpcpilot.panda.commands import LOST_HEARTBEAT
from hpcpilot.panda.source import FETCH_UNREACHABLE, NodeInfo, PandaSource
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import Command, OutputBundle
from hpcpilot.states import EventRangeStatus, JobState
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import NODE, free_port, job_definitions, panda_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def panda_clean_env(monkeypatch):
    for name in (
        "PANDA_AUTH_TOKEN",
        "OIDC_AUTH_TOKEN",
        "PANDA_AUTH_DIR",
        "OIDC_AUTH_DIR",
        "X509_USER_PROXY",
        "X509_CERT_DIR",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def panda_server(tmp_path):
    server = PandaTestServer(tmp_path / "state.sqlite", release="0.8").start()
    server.load_jobs(
        job_definitions(2, start_id=700) + job_definitions(1, start_id=800, es=True), ranges_per_job=4
    )
    yield server
    server.close()


def _source(server_url, workdir, api="v1", close_deadline=5.0, **overrides):
    return PandaSource(
        panda_config(server_url, api, **overrides),
        workdir,
        NODE,
        fetch_deadline=1.0,
        close_deadline=close_deadline,
    )


def _final(job: dict, state=JobState.FINISHED) -> JobRecord:
    spec = JobSpec.from_wire(job)
    record = JobRecord(
        panda_id=spec.panda_id,
        state=state,
        attempt_nr=spec.attempt_nr,
        n_events=1,
        start_time="2026-03-01 10:00:00",
        end_time="2026-03-01 10:05:00",
    )
    if state == JobState.FINISHED:
        record.output_report = {f.lfn: {"fsize": 10, "adler32": "0a0b0c0d"} for f in spec.outputs}
        record.output_report[spec.log_file.lfn] = {"fsize": 20, "adler32": "01020304"}
    else:
        record.fail(1305, "payload exited with 3")
    return record


def _jobs_by_id(server):
    return {j["PandaID"]: j for j in server.dump()["jobs"]}


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_full_run_through_the_outbox(panda_server, tmp_path, api):
    source = _source(panda_server.url, tmp_path / "work", api)
    try:
        outcome = source.fetch_jobs(5)
        jobs = outcome.leased
        assert [j["PandaID"] for j in jobs] == [700, 701, 800] and outcome.status == 0
        assert {lease.panda_id for lease in source.journal.in_flight(JOB)} == {700, 701, 800}
        for job in jobs:
            source.update_job(JobRecord(panda_id=job["PandaID"], state=JobState.STARTING), final=False)
            source.update_job(JobRecord(panda_id=job["PandaID"], state=JobState.RUNNING), final=False)
        es = JobSpec.from_wire(jobs[2])
        ranges = source.fetch_event_ranges(es, 3).leased
        assert len(ranges) == 3 and len(source.journal.in_flight(RANGE)) == 3
        ids = [r["eventRangeID"] for r in ranges]
        bundle = OutputBundle(
            lfn="EventService_premerge_x.tar",
            fsize=100,
            adler32="0c9e7a11",
            num_events=2,
            objstore_id=1318,
            path_convention=1000,
            range_ids=tuple(ids[:2]),
        )
        source.update_event_ranges(
            es,
            [
                EventRangeUpdate(ids[0], EventRangeStatus.FINISHED),
                EventRangeUpdate(ids[1], EventRangeStatus.FINISHED),
                EventRangeUpdate(ids[2], EventRangeStatus.FATAL, 1220, "bad event"),
            ],
            bundle,
        )
        source.update_job(_final(jobs[0]), final=True)
        source.update_job(_final(jobs[1], JobState.FAILED), final=True)
        source.update_job(_final(jobs[2]), final=True)
        assert source.flush(10)
        assert source.poll(0.0) == []
    finally:
        source.close()
    server_jobs = _jobs_by_id(panda_server)
    assert server_jobs[700]["status"] == "finished" and server_jobs[700]["adder"] == "ok"
    report = server_jobs[700]["output_report"]
    assert report["hpcpilot-test-700.log.tgz"]["guid"] == "00000000-0000-0000-0000-000000000700"
    assert len(report["hpcpilot-test-700.out.txt"]["guid"]) == 36
    # a queued 'starting' is never coalesced into 'running': the server sees every state in order
    assert server_jobs[700]["states"] == ["starting", "running", "finished"]
    assert (server_jobs[701]["status"], server_jobs[701]["pilotErrorCode"]) == ("failed", 1305)
    ranges_state = {r["eventRangeID"]: r for r in panda_server.dump()["event_ranges"]}
    assert (
        ranges_state[ids[0]]["status"] == "finished" and ranges_state[ids[0]]["zipFile"]["objstoreID"] == 1318
    )
    assert (ranges_state[ids[2]]["status"], ranges_state[ids[2]]["errorCode"]) == ("fatal", 1220)


def test_backchannel_commands_are_polled(panda_server, tmp_path):
    source = _source(panda_server.url, tmp_path / "work", "legacy")
    try:
        jobs = source.fetch_jobs(3).leased
        es = JobSpec.from_wire(jobs[2])
        rid = source.fetch_event_ranges(es, 1).leased[0]["eventRangeID"]
        panda_server.set_command(700, "tobekilled")
        panda_server.set_command(701, "debug")
        panda_server.set_command(800, "softkill")
        for panda_id in (700, 701):
            source.update_job(JobRecord(panda_id=panda_id, state=JobState.RUNNING), final=False)
        source.update_event_ranges(es, [EventRangeUpdate(rid, EventRangeStatus.FAILED, 1220, "x")])
        assert source.flush(10)
        commands = source.poll(0.0)
        assert set(commands) == {Command(700, "tobekilled"), Command(701, "debug"), Command(800, "softkill")}
        assert source.poll(0.0) == []
        # a command for a job this pilot no longer runs (its final update went out) is not passed on
        source.update_job(_final(jobs[0], JobState.FAILED), final=True)
        assert source.flush(10)
        assert source.poll(0.0) == []
    finally:
        source.close()


def test_server_down_at_start_then_up(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    source = _source(url, tmp_path / "work", "auto")
    try:
        outcome = source.fetch_jobs(2)
        assert outcome.leased == [] and outcome.status == FETCH_UNREACHABLE
        server = PandaTestServer(tmp_path / "state.sqlite", port=port).start()
        try:
            server.load_jobs(job_definitions(2))
            jobs = source.fetch_jobs(2).leased
            assert [j["PandaID"] for j in jobs] == [1000, 1001]
            source.update_job(_final(jobs[0]), final=True)
            assert source.flush(10)
            assert _jobs_by_id(server)[1000]["status"] == "finished"
        finally:
            server.close()
    finally:
        source.close()


def test_outage_mid_run_loses_nothing(panda_server, tmp_path):
    source = _source(panda_server.url, tmp_path / "work", "v1")
    try:
        jobs = source.fetch_jobs(3).leased
        es = JobSpec.from_wire(jobs[2])
        ranges = source.fetch_event_ranges(es, 4).leased
        panda_server.stop()
        for job in jobs[:2]:
            source.update_job(JobRecord(panda_id=job["PandaID"], state=JobState.RUNNING), final=False)
        source.update_event_ranges(
            es, [EventRangeUpdate(r["eventRangeID"], EventRangeStatus.FAILED, 1220, "io") for r in ranges]
        )
        source.update_job(_final(jobs[0]), final=True)
        source.update_job(_final(jobs[1], JobState.FAILED), final=True)
        source.update_job(_final(jobs[2]), final=True)
        assert not source.flush(0.3) and source.pending() >= 5
        assert source.poll(0.0) == []  # an outage alone is not a command
        panda_server.start()
        panda_server.set_fault("5xx", count=6)  # and it comes back flaky
        assert source.flush(15)
    finally:
        source.close()
    server_jobs = _jobs_by_id(panda_server)
    assert [server_jobs[i]["status"] for i in (700, 701, 800)] == ["finished", "failed", "finished"]
    assert server_jobs[700]["states"] == ["running", "finished"]
    assert sorted(r["status"] for r in panda_server.dump()["event_ranges"]) == ["failed"] * 4


def test_lost_heartbeat_is_reported_per_running_job(panda_server, tmp_path):
    source = _source(panda_server.url, tmp_path / "work", "v1", close_deadline=0.2, lost_heartbeat=0.3)
    try:
        jobs = source.fetch_jobs(2).leased
        source.update_job(_final(jobs[1]), final=True)
        assert source.flush(10)
        panda_server.stop()
        source.update_job(JobRecord(panda_id=700, state=JobState.RUNNING), final=False)
        threading.Event().wait(0.5)
        assert source.poll(0.0) == [Command(700, LOST_HEARTBEAT)]
        assert source.poll(0.0) == []
    finally:
        source.close()


def test_close_is_bounded_and_the_next_run_delivers(panda_server, tmp_path):
    workdir = tmp_path / "work"
    source = PandaSource(
        panda_config(panda_server.url, "v1"),
        workdir,
        NodeInfo("n1", 1000, 2000, 3000),
        fetch_deadline=1.0,
        close_deadline=0.3,
    )
    jobs = source.fetch_jobs(1).leased
    panda_server.stop()
    source.update_job(_final(jobs[0]), final=True)
    source.close()
    assert source.journal.path.exists()
    panda_server.start()
    again = _source(panda_server.url, workdir, "v1")
    try:
        assert again.flush(10)
    finally:
        again.close()
    assert _jobs_by_id(panda_server)[700]["status"] == "finished"


CHILD = """
import sys, time
from pathlib import Path
from hpcpilot.panda.source import PandaSource
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.states import JobState
from tests.fixtures.panda.panda_helpers import NODE, panda_config
url, workdir = sys.argv[1], Path(sys.argv[2])
source = PandaSource(panda_config(url, "v1"), workdir, NODE, fetch_deadline=2.0)
jobs = source.fetch_jobs(3).leased
ranges = source.fetch_event_ranges(JobSpec.from_wire(jobs[2]), 3).leased
source.update_job(JobRecord(panda_id=jobs[1]["PandaID"], state=JobState.RUNNING), final=False)
source.flush(5)
print("LEASED", flush=True)
sys.stdin.readline()
report = {"hpcpilot-test-700.out.txt": {"fsize": 1, "adler32": "01"},
          "hpcpilot-test-700.log.tgz": {"fsize": 1, "adler32": "02"}}
record = JobRecord(panda_id=jobs[0]["PandaID"], state=JobState.FINISHED, output_report=report)
source.update_job(record, final=True)
print("QUEUED", flush=True)
time.sleep(600)
"""


def test_sigkill_and_restart_replays_and_fails_in_flight_work(panda_server, tmp_path):
    workdir = tmp_path / "work"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, panda_server.url, str(workdir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout.readline().strip() == "LEASED"
        panda_server.set_fault("5xx")  # the final update of 700 cannot be delivered before the kill
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "QUEUED"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    panda_server.set_fault(None)
    before = len(panda_server.requests())
    source = _source(panda_server.url, workdir, "v1")
    try:
        assert source.fetch_jobs(1).leased == []  # replay first, then a new lease (no jobs left)
        assert source.flush(10)
    finally:
        source.close()
    server_jobs = _jobs_by_id(panda_server)
    assert server_jobs[700]["status"] == "finished" and server_jobs[700]["adder"] == "ok"
    for panda_id in (701, 800):
        assert server_jobs[panda_id]["status"] == "failed"
        assert server_jobs[panda_id]["pilotErrorCode"] == 1200
        assert "pilot restarted" in server_jobs[panda_id]["pilotErrorDiag"]
    failed_ranges = [r for r in panda_server.dump()["event_ranges"] if r["status"] == "failed"]
    assert len(failed_ranges) == 3
    assert {(r["errorCode"], r["errorDiag"]) for r in failed_ranges} == {(1220, "pilot restarted")}
    methods = [r["method"] for r in panda_server.requests()[before:]]
    assert methods[-1] == "getJob" and "getJob" not in methods[:-1]
    assert methods.count("updateJob") == 3 and methods.count("updateEventRanges") == 1


def test_tokens_and_secrets_never_reach_logs_or_files(tmp_path, monkeypatch, caplog):
    token = "eyJhbGciOi.secret-token-payload.sig123"
    token_dir = tmp_path / "auth"
    token_dir.mkdir()
    (token_dir / "token").write_text(token)
    monkeypatch.setenv("OIDC_AUTH_TOKEN", "token")
    monkeypatch.setenv("OIDC_AUTH_DIR", str(token_dir))
    monkeypatch.setenv("OIDC_AUTH_ORIGIN", "atlas")
    secret = "pilot-secret-value-42"
    server = PandaTestServer(tmp_path / "state.sqlite", release="0.8", tokens={token}).start()
    jobs = job_definitions(2)
    jobs[0]["pilotSecrets"] = json.dumps({"KEY": secret})
    server.load_jobs(jobs)
    workdir = tmp_path / "work"
    caplog.set_level(logging.DEBUG)
    try:
        source = _source(server.url, workdir, "legacy")
        leased = source.fetch_jobs(2).leased
        assert "pilotSecrets" not in leased[0] and secret in source.job_secrets(1000)["pilotSecrets"]
        logging.getLogger("hpcpilot.test").info(
            "job secrets are %s; header Bearer %s", source.job_secrets(1000), token
        )
        source.update_job(JobRecord(panda_id=1000, state=JobState.RUNNING), final=False)
        source.update_job(_final(leased[1], JobState.FAILED), final=True)
        assert source.flush(10)
        source.close()
        assert all(r["auth"].startswith("bearer:") for r in server.requests())
    finally:
        server.close()
    assert token not in caplog.text and secret not in caplog.text
    assert "secret-token-payload" not in caplog.text
    for path in workdir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and secret.encode() not in data, path


def test_each_fetch_thread_reads_the_outcome_of_its_own_call(tmp_path):
    """With getJob pipelined, an outage seen by one fetch thread must not be read as another thread's success
    (an outage read as status 0 with no jobs looks like "no more jobs" and ends the leasing)."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    source = _source(f"http://127.0.0.1:{port}", tmp_path / "work", "auto")
    failing, succeeding = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    try:
        failed = failing.submit(source.fetch_jobs, 2).result()
        assert failed.leased == []
        server = PandaTestServer(tmp_path / "state.sqlite", port=port).start()
        try:
            server.load_jobs(job_definitions(2))
            leased = succeeding.submit(source.fetch_jobs, 2).result()
            assert [j["PandaID"] for j in leased.leased] == [1000, 1001]
            assert leased.status == 0
            assert failed.status == FETCH_UNREACHABLE
            assert "refused" in failed.error.lower()
        finally:
            server.close()
    finally:
        failing.shutdown()
        succeeding.shutdown()
        source.close()


def test_deliver_says_so_when_the_journal_is_unreadable(panda_server, tmp_path):
    """A truncated or garbage journal is moved aside; ``hpcpilot deliver`` must not claim that everything
    it held was acknowledged (exit 3, and the one line names the file it was moved to)."""
    from hpcpilot.panda.source import JOURNAL_NAME

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / JOURNAL_NAME).write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    result = subprocess.run([sys.executable, "-m", "hpcpilot", "deliver", "--workdir", str(workdir),
                             "--server", panda_server.url, "--deadline", "10"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 3, result.stderr
    assert "acknowledged" not in result.stdout
    assert "unreadable" in result.stderr and ".unreadable-" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(workdir.glob(f"{JOURNAL_NAME}.unreadable-*"))
