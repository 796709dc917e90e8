"""hpcpilot against the real panda-server 1.0.4 and 0.8.1 (issue 21): what the server's database says.

Every test runs the real pilot (``mpiexec -n 4 hpcpilot run``) against the real server on loopback and
asserts on the server's tables after its own Adder: job states and codes, every event range's status in
``jedi_events``, the zips registered in ``filestable4``, and -- from the bodies the server logged -- that no
range was reported twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.pilotrun import BIN, LAPTOP, REPO
from tests.realpanda.conftest import RealPanda

pytestmark = pytest.mark.realpanda

ES_RANGE = REPO / "examples" / "es_range.py"
ES_PAYLOAD = REPO / "examples" / "es_payload.py"
FINISHED, FAILED = 3, 7
PILOT_TIMEOUT = 300


def pilot_argv(server: RealPanda, tmp: Path, api: str, max_jobs: int, *settings: str) -> list[str]:
    argv = [str(BIN / "mpiexec"), "-n", "4", str(BIN / "hpcpilot"), "run", "--site-config", str(LAPTOP),
            "--server", server.url, "--queue", server.queue, "--workdir", str(tmp / "work"),
            "--max-jobs", str(max_jobs), "--set", f"panda.api={api}",
            "--set", f"stage.output_dir={tmp / 'outputs'}", "--set", f"stage.input_dir={tmp / 'inputs'}"]
    for setting in settings:
        argv += ["--set", setting]
    return argv


def run_pilot(argv: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    (tmp / "outputs").mkdir(exist_ok=True)
    (tmp / "inputs").mkdir(exist_ok=True)
    return subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=PILOT_TIMEOUT)


def es_job(server: RealPanda, n_ranges: int, ms_per_event: int, mode: str = "per-range") -> int:
    if mode == "per-range":
        pars = f"{ES_RANGE} {{eventRangeID}} {{startEvent}} {{lastEvent}} {{output}} --ms-per-event {ms_per_event}"
    else:
        pars = f"{ES_PAYLOAD} --ms-per-event {ms_per_event}"
    answer = server.submit("--es", str(n_ranges), "--events-per-range", "2", "--transformation", str(BIN / "python"),
                           "--pars", pars)
    return int(answer["PandaIDs"][0])


def assert_each_range_reported_once(server: RealPanda, since: int, panda_id: int) -> None:
    reports = [(rid, status) for rid, status in server.range_reports(since) if rid.split("-")[1] == str(panda_id)]
    twice = {rid: n for rid, n in Counter(rid for rid, _ in reports).items() if n > 1}
    assert not twice, f"ranges reported more than once: {twice}"


@pytest.mark.parametrize("api", ["v1", "auto"])
def test_an_event_service_job_of_50_ranges_finishes(real_panda: RealPanda, tmp_path: Path, api: str) -> None:
    since = real_panda.event_log_offset()
    panda_id = es_job(real_panda, 50, 5)
    result = run_pilot(pilot_argv(real_panda, tmp_path, api, 1), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert real_panda.range_statuses(panda_id) == dict.fromkeys(range(1, 51), FINISHED)
    assert_each_range_reported_once(real_panda, since, panda_id)
    real_panda.adder()
    assert real_panda.job(panda_id)["jobstatus"] == "finished"
    zips = {row[0] for row in real_panda.sql(f"select lfn from filestable4 where pandaid={panda_id} "
                                             "and type='zipoutput'")}
    staged = {p.name for p in (tmp_path / "outputs").rglob("*.zip")}
    assert zips and zips == staged, (zips, staged)
    assert "Traceback" not in result.stderr


def test_legacy_api_with_the_protocol_payload_on_0_8(real_panda: RealPanda, tmp_path: Path) -> None:
    if real_panda.version != "0.8.1":
        pytest.skip("panda-server 1.0 has no legacy API (every legacy path answers 403)")
    panda_id = es_job(real_panda, 50, 5, mode="protocol")
    result = run_pilot(pilot_argv(real_panda, tmp_path, "legacy", 1, "eventservice.payload_mode=protocol",
                                  "eventservice.ranges_per_request=4"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert real_panda.range_statuses(panda_id) == dict.fromkeys(range(1, 51), FINISHED)
    real_panda.adder()
    assert real_panda.job(panda_id)["jobstatus"] == "finished"


@pytest.mark.parametrize("second", ["pilot", "deliver"])
def test_rank_0_killed_mid_job_then_a_second_pilot_reports_the_rest_once(real_panda: RealPanda, tmp_path: Path,
                                                                         second: str) -> None:
    since = real_panda.event_log_offset()
    panda_id = es_job(real_panda, 50, 60)
    proc = subprocess.Popen(pilot_argv(real_panda, tmp_path, "v1", 1, "eventservice.report_interval=1"),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while sum(s == FINISHED for s in real_panda.range_statuses(panda_id).values()) < 8:
            assert proc.poll() is None and time.monotonic() < deadline, "the pilot never reported 8 ranges"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0, every rank and the payloads: a lost node
        proc.wait(timeout=30)
    if second == "pilot":
        again = run_pilot(pilot_argv(real_panda, tmp_path, "v1", 1), tmp_path)
    else:
        again = subprocess.run([str(BIN / "hpcpilot"), "deliver", "--workdir", str(tmp_path / "work"),
                                "--site-config", str(LAPTOP), "--server", real_panda.url, "--deadline", "120"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=PILOT_TIMEOUT)
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-3000:])
    statuses = real_panda.range_statuses(panda_id)
    assert set(statuses.values()) <= {FINISHED, FAILED} and len(statuses) == 50, Counter(statuses.values())
    assert Counter(statuses.values())[FINISHED] >= 8
    assert_each_range_reported_once(real_panda, since, panda_id)
    assert real_panda.job(panda_id)["jobstatus"] == "holding"  # the dead run's job reported final (1200)
    real_panda.adder()
    # the server decides an event-service job's end from its ranges (it finished one whose ranges are all
    # final, whatever code the pilot sent): what matters is that it is final there, not left running
    assert real_panda.job(panda_id)["jobstatus"] in ("finished", "failed"), real_panda.job(panda_id)


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_normal_and_failing_jobs_and_a_server_kill(real_panda: RealPanda, tmp_path: Path, api: str) -> None:
    if api == "legacy" and real_panda.version != "0.8.1":
        pytest.skip("panda-server 1.0 has no legacy API (every legacy path answers 403)")
    good = real_panda.submit("-n", "2", "--cmd", "echo hello {i} > {out}")["PandaIDs"]
    bad = real_panda.submit("-n", "1", "--cmd", "exit 3")["PandaIDs"]
    kills = real_panda.version != "0.8.1"  # 0.8.1's kill does not work on PostgreSQL (panda-wire A.7)
    slow = real_panda.submit("-n", "1", "--cmd", "sleep 300" if kills else "sleep 2; echo slow > {out}")["PandaIDs"]
    proc = subprocess.Popen(pilot_argv(real_panda, tmp_path, api, 4, "panda.heartbeat=2"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kills:
        deadline = time.monotonic() + 120
        while real_panda.job(slow[0])["jobstatus"] != "running":
            assert proc.poll() is None and time.monotonic() < deadline, "the slow job never ran"
            time.sleep(0.5)
        real_panda.kill(slow[0])
    out, err = proc.communicate(timeout=PILOT_TIMEOUT)
    assert proc.returncode in (0, 1), (out[-1000:], err[-3000:])  # 1: some job failed
    real_panda.adder()
    assert [real_panda.job(p)["jobstatus"] for p in good] == ["finished", "finished"]
    failed = real_panda.job(bad[0])
    assert (failed["jobstatus"], failed["transexitcode"]) == ("failed", "3"), failed
    killed = real_panda.job(slow[0])
    if kills:
        assert killed["jobstatus"] in ("failed", "cancelled", "closed"), killed
    else:
        assert killed["jobstatus"] == "finished", killed
    assert "Traceback" not in err
