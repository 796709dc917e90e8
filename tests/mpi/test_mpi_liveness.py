"""Liveness for real: `hpcpilot serve` with an outage (its 5xx fault) and `mpiexec -n 3 hpcpilot run`.

Ranks that wait for work three times longer than the lost-rank limit stay alive (they send their
alive signal), so the work that arrives after the outage runs and finishes; SIGTERM during an outage
ends the pilot in bounded time with nothing of it left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.mpi.test_mpi_eventservice import ES_PAYLOAD, Server, assert_accounted, es_job
from tests.pilotrun import BIN, FAST, LAPTOP, make_job, processes_with, wait_for

pytestmark = pytest.mark.mpi

REPORT_INTERVAL = 0.5
LOST_INTERVALS = 4
LOST_LIMIT = REPORT_INTERVAL * LOST_INTERVALS
IDLE = 3 * LOST_LIMIT + 1.0
"""How long the ranks wait for work: three times the lost-rank limit, and a second more."""


def set_fault(server: Server, kind: str | None) -> None:
    """Switch the test server's outage on ('5xx' for every request) or off (None)."""
    request = urllib.request.Request(f"{server.url}/admin/fault", data=json.dumps({"kind": kind}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert json.loads(reply.read())["ok"]


def start_pilot(tmp: Path, server: Server, settings: list[str] = ()) -> subprocess.Popen[str]:
    argv = [str(BIN / "mpiexec"), "-n", "3", sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP),
            "--server", server.url, "--workdir", str(tmp / "work"), "--set", f"stage.output_dir={tmp / 'out'}"]
    for setting in [*FAST, f"monitor.report_interval={REPORT_INTERVAL}",
                    f"monitor.lost_rank_intervals={LOST_INTERVALS}", "panda.call_deadline=3", "panda.retry_initial=0.2",
                    "panda.retry_max=1", *settings]:
        argv += ["--set", setting]
    return subprocess.Popen(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_ranks(proc: subprocess.Popen[str], n: int = 3) -> None:
    """Until the launcher's ranks run (the outage is timed from then)."""
    import psutil

    def ranks() -> int:
        found = 0
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                found += "PMI_RANK" in child.environ() and "hpcpilot" in " ".join(child.cmdline())
            except psutil.Error:
                continue
        return found

    assert wait_for(lambda: ranks() >= n, timeout=60)


def communicate(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return err


@pytest.fixture
def server(tmp_path: Path) -> Any:
    made: list[Server] = []

    def make(jobs: list[dict[str, Any]], ranges: int = 0) -> Server:
        made.append(Server(tmp_path, jobs, ranges))
        made[-1].start()
        set_fault(made[-1], "5xx")  # down before the pilot asks for anything
        return made[-1]

    yield make
    for item in made:
        item.stop()


def test_jobs_after_a_long_outage_all_run_and_finish(tmp_path: Path, server: Any) -> None:
    jobs = [make_job(8100 + i, f"sleep 0.3; echo {i} > o{i}.txt", [f"o{i}.txt"]) for i in range(4)]
    panda = server(jobs)
    proc = start_pilot(tmp_path, panda)
    wait_for_ranks(proc)
    time.sleep(IDLE)
    set_fault(panda, None)
    err = communicate(proc, timeout=120)
    assert proc.returncode == 0, err[-3000:]
    state = {job["PandaID"]: job for job in panda.dump()["jobs"]}
    assert sorted(state) == [8100 + i for i in range(4)]
    assert all(job["status"] == "finished" for job in state.values()), state
    assert "stopped reporting" not in err


def test_an_event_service_job_after_a_long_outage_finishes_every_range(tmp_path: Path, server: Any) -> None:
    panda = server([es_job(8200, f"{ES_PAYLOAD} --ms-per-event 5")], ranges=60)
    proc = start_pilot(tmp_path, panda, ["eventservice.payload_mode=protocol", "eventservice.report_interval=1",
                                         "eventservice.bundle_events=20"])
    wait_for_ranks(proc)
    time.sleep(IDLE)
    set_fault(panda, None)
    err = communicate(proc, timeout=180)
    assert proc.returncode == 0, err[-3000:]
    state = panda.dump()
    assert assert_accounted(state) == {"finished": 60}
    job = state["jobs"][0]
    assert job["status"] == "finished" and job["nEvents"] == 60, job
    assert "stopped reporting" not in err


def test_sigterm_during_an_outage_ends_the_pilot_soon_with_nothing_left(tmp_path: Path, server: Any) -> None:
    """One rank busy with a payload, one idle and waiting for work, the server down, all of it for three
    times the lost-rank limit: SIGTERM ends the pilot in under 30 s, with no pilot or payload process left."""
    jobs = [make_job(8300, "sleep 300.83", ["never.txt"]), make_job(8301, "sleep 3; echo 1 > o.txt", ["o.txt"]),
            make_job(8302, "true", ["o.txt"])]
    panda = server(jobs)
    proc = start_pilot(tmp_path, panda)
    wait_for_ranks(proc)
    time.sleep(IDLE)
    set_fault(panda, None)
    assert wait_for(lambda: processes_with("sleep 300.83"), timeout=60)
    set_fault(panda, "5xx")  # down again: the rank of job 8301 then waits for work, the updates wait too
    time.sleep(3 + IDLE)
    signalled = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    err = communicate(proc, timeout=60)
    assert time.monotonic() - signalled < 30, err[-3000:]
    assert proc.returncode != 0
    workdir = str(tmp_path / "work")
    assert wait_for(lambda: not processes_with("sleep 300.83") and not processes_with(workdir), timeout=5), \
        [(pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:200]) for pid in processes_with(workdir)]
    assert (tmp_path / "work" / "summary.json").exists(), err[-5000:]
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    codes = {j["jobId"]: j["pilotErrorCode"] for j in summary["jobs"]}
    assert codes == {8300: 1201, 8301: 0}, (codes, err[-3000:])
    assert "stopped reporting" not in err
