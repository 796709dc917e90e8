"""A real single-rank pilot against `hpcpilot serve`'s faults (issue 11): answers that prove nothing
are neither "no jobs" nor "delivered", and what will not heal ends the pilot quickly in one line.

The server runs in the test process on loopback; the pilot is a real `python -m hpcpilot run`
process.  Assertions are on the server's state (``states``: every updateJob state it stored).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import free_port, make_certs
from tests.pilotrun import FAST, LAPTOP, make_job

EXIT_GAVE_UP = 4
QUICK = ["panda.retry_initial=0.1", "panda.retry_max=1", "panda.call_deadline=3", "panda.connect_timeout=1",
         "panda.read_timeout=2", "panda.getjob_failures=3"]


def pilot(tmp: Path, server_url: str, settings: list[str], timeout: float = 120,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--server", server_url,
            "--queue", "TESTQ", "--workdir", str(tmp / "work"), "--set", f"stage.output_dir={tmp / 'out'}"]
    for setting in [*FAST, *QUICK, *settings]:
        argv += ["--set", setting]
    return subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest):
    """``hpcpilot serve`` as the release a test names (indirect parameter), panda-server 1.0 by default."""
    srv = PandaTestServer(tmp_path / "state.sqlite", release=getattr(request, "param", "1.0")).start()
    srv.load_jobs([make_job(800 + i, f"echo {i} > o{i}.txt", [f"o{i}.txt"]) for i in range(3)])
    yield srv
    srv.close()


@pytest.mark.parametrize(("server", "api"), [("1.0", "v1"), ("0.8", "v1"), ("0.8", "legacy")], indirect=["server"])
@pytest.mark.parametrize("kind", ["no-data", "status-zero", "garbage", "truncated"])
def test_replies_that_prove_nothing_lose_nothing_and_end_nothing_early(tmp_path, server, api, kind):
    """The first getJob answers and every final updateJob's first answer prove nothing (the update
    was committed before the bad answer): no early end, every job finished once."""
    server.set_fault(kind, count=2, method="getJob")
    result = pilot(tmp_path, server.url, [f"panda.api={api}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    jobs = {j["PandaID"]: j for j in server.dump()["jobs"]}
    assert all(job["status"] == "finished" for job in jobs.values()), jobs
    assert all(job["states"].count("finished") == 1 for job in jobs.values())


@pytest.mark.parametrize("server", ["1.0", "0.8"], indirect=True)
@pytest.mark.parametrize("kind", ["no-data", "status-zero", "garbage", "truncated", "500"])
def test_a_final_update_committed_behind_a_bad_answer_is_not_sent_again(tmp_path, server, kind):
    server.set_fault(kind, method="updateJob", after_commit=True)  # every updateJob answer proves nothing
    result = pilot(tmp_path, server.url, ["panda.api=v1", "panda.heartbeat=3600"])
    assert result.returncode == 0, (result.stdout, result.stderr[-3000:])
    jobs = server.dump()["jobs"]
    assert len(jobs) == 3 and all(job["status"] == "finished" for job in jobs)
    assert all(job["states"].count("finished") == 1 for job in jobs)  # checked with getStatus, not resent
    assert any(r["method"] == "getStatus" for r in server.requests())


def test_an_unreachable_server_ends_the_pilot_in_bounded_time(tmp_path):
    started = time.monotonic()
    result = pilot(tmp_path, f"http://127.0.0.1:{free_port()}", [], timeout=90)
    assert result.returncode == EXIT_GAVE_UP, (result.stdout, result.stderr[-3000:])
    assert time.monotonic() - started < 60
    reason = [line for line in result.stdout.splitlines() if "gave up on the job source" in line]
    assert len(reason) == 1 and "3 failed request(s)" in reason[0] and "Connection refused" in reason[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["not-a-url", "ftp://panda.example.org/", "http://"])
def test_a_bad_server_url_is_refused_at_start_in_one_line(tmp_path, url):
    result = pilot(tmp_path, url, [], timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_server_certificate_that_does_not_verify_ends_the_pilot_at_once(tmp_path):
    certs = make_certs(tmp_path / "certs")
    srv = PandaTestServer(tmp_path / "tls.sqlite", tls=(str(certs["server_cert"]), str(certs["server_key"]))).start()
    srv.load_jobs([make_job(900, "true")])
    try:
        started = time.monotonic()
        result = pilot(tmp_path, srv.url, [f"panda.ca_dir={certs['other_ca_dir']}", "panda.getjob_failures=50"],
                       timeout=90)
        elapsed = time.monotonic() - started
        received = srv.requests()
    finally:
        srv.close()
    assert result.returncode == EXIT_GAVE_UP, (result.stdout, result.stderr[-3000:])
    assert elapsed < 30  # one failure is enough: not 50 requests
    assert any("does not verify" in line for line in result.stdout.splitlines())
    assert received == []  # nothing was sent to a server that could not prove who it is
