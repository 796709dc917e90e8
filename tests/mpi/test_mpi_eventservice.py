"""Event service over MPI, for real: `hpcpilot serve` (or a Harvester access point) and
`mpiexec -n 4 hpcpilot run` with the example payloads of examples/.

What every test checks in the end is the issue's promise: every range the server handed out
ends reported exactly once (``updates`` counts the final updates the server accepted per
range), finished ranges sit in zip bundles whose size and adler32 match the staged-out files,
and nothing stays leased ('sent') after the pilot exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.stageio import checksum
from tests.pilotrun import BIN, FAST, LAPTOP, REPO, make_access_point, make_job, wait_for

pytestmark = pytest.mark.mpi

ES_PAYLOAD = REPO / "examples" / "es_payload.py"
ES_RANGE = REPO / "examples" / "es_range.py"
PANDA_ID = 9100


def es_job(panda_id: int, pars: str) -> dict[str, Any]:
    job = make_job(panda_id, "unused", eventService="True")
    job["transformation"], job["jobPars"] = sys.executable, pars
    return job


class Server:
    """`hpcpilot serve` on a free port, restartable on the same port and state."""

    def __init__(self, tmp: Path, jobs: list[dict[str, Any]], ranges: int, events_per_range: int = 1) -> None:
        self.tmp, self.state = tmp, tmp / "state.db"
        (tmp / "jobs.json").write_text(json.dumps(jobs))
        self.argv = [sys.executable, "-m", "hpcpilot", "serve", "--state", str(self.state), "--jobs",
                     str(tmp / "jobs.json"), "--ranges-per-job", str(ranges), "--events-per-range",
                     str(events_per_range)]
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([*self.argv, "--port", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "serving" in line, line
        self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def dump(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "hpcpilot", "serve", "--dump", str(self.state)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)


def pilot_argv(tmp: Path, source: list[str], settings: list[str], ranks: int = 4) -> list[str]:
    argv = [str(BIN / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "hpcpilot", "run", "--site-config",
            str(LAPTOP), *source, "--workdir", str(tmp / "work"), "--set", f"stage.output_dir={tmp / 'out'}",
            "--set", "eventservice.report_interval=1", "--set", "eventservice.bundle_events=40"]
    for setting in [*FAST, *settings]:
        argv += ["--set", setting]
    return argv


def run(argv: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check_bundles(ranges: list[dict[str, Any]], out: Path) -> None:
    """Every finished range is in a zip whose fsize/adler32/numEvents match the file staged out."""
    by_zip: dict[str, list[dict[str, Any]]] = {}
    for item in ranges:
        if item["status"] == "finished":
            assert item["zipFile"], item
            by_zip.setdefault(item["zipFile"]["lfn"], []).append(item)
    assert by_zip
    for lfn, members in by_zip.items():
        info = members[0]["zipFile"]
        path = out / lfn
        assert path.stat().st_size == info["fsize"]
        assert checksum.adler32(path) == info["adler32"]
        assert info["numEvents"] == len(members)  # one event per range in these tests
        with zipfile.ZipFile(path) as archive:
            assert len(archive.namelist()) == len(members)
            assert archive.testzip() is None


def assert_accounted(state: dict[str, Any]) -> Counter[str]:
    """No range is left leased, none was reported twice."""
    ranges = state["event_ranges"]
    assert all(r["status"] != "sent" for r in ranges), [r for r in ranges if r["status"] == "sent"][:3]
    assert all(r["updates"] <= 1 for r in ranges), [r for r in ranges if r["updates"] > 1][:3]
    assert all(r["updates"] == 1 for r in ranges if r["status"] != "ready")
    return Counter(r["status"] for r in ranges)


@pytest.fixture
def server_factory(tmp_path: Path):
    servers: list[Server] = []

    def make(jobs: list[dict[str, Any]], ranges: int) -> Server:
        server = Server(tmp_path, jobs, ranges)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def test_200_ranges_on_4_ranks_through_a_panda_server(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory([es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 5")], ranges=200)
    result = run(pilot_argv(tmp_path, ["--server", server.url],
                            ["eventservice.payload_mode=protocol", "eventservice.ranges_per_request=4"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = server.dump()
    assert assert_accounted(state) == {"finished": 200}
    check_bundles(state["event_ranges"], tmp_path / "out")
    job = state["jobs"][0]
    assert job["status"] == "finished" and job["nEvents"] == 200
    assert f"log.{PANDA_ID}.tgz" in job["output_report"]
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["event_ranges"][str(PANDA_ID)] == {"finished": 200}
    worked = {p.name for p in (tmp_path / "work" / "jobs" / f"PandaJob_{PANDA_ID}").glob("rank*")}
    assert len(worked) >= 2, worked  # the job really ran on several ranks


def test_failing_and_crashing_protocol_payload(tmp_path: Path, server_factory: Any) -> None:
    """Every 5th range fails with the payload's error; one range per rank dies with its payload,
    and each rank goes on with a fresh payload."""
    server = server_factory([es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 2 --fail-every 5 --crash-at 3")],
                            ranges=120)
    result = run(pilot_argv(tmp_path, ["--server", server.url],
                            ["eventservice.payload_mode=protocol", "eventservice.ranges_per_request=2"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = server.dump()
    counts = assert_accounted(state)
    assert counts["finished"] + counts["failed"] == 120
    failed = [r for r in state["event_ranges"] if r["status"] == "failed"]
    crashed = [r for r in failed if "payload exited with code 3" in (r["errorDiag"] or "")]
    on_purpose = [r for r in failed if "fails on purpose" in (r["errorDiag"] or "")]
    assert 1 <= len(crashed) <= 3 and on_purpose
    assert all(r["errorCode"] == 1220 for r in failed)
    assert counts["finished"] >= 80  # the ranks carried on after their crash
    check_bundles(state["event_ranges"], tmp_path / "out")


def test_per_range_command_from_a_harvester_access_point(tmp_path: Path) -> None:
    job = es_job(PANDA_ID, f"{ES_RANGE} {{eventRangeID}} {{startEvent}} {{lastEvent}} {{output}} "
                           "--ms-per-event 1 --fail-every 10")
    access_point = make_access_point(tmp_path / "ap", [job])
    ranges = [{"eventRangeID": f"7-{PANDA_ID}-1-{i}-1", "startEvent": i, "lastEvent": i, "LFN": "EVNT.root",
               "GUID": "G1", "scope": "test"} for i in range(1, 61)]
    (access_point / "JobsEventRanges.json").write_text(json.dumps({str(PANDA_ID): ranges}))
    result = run(pilot_argv(tmp_path, ["--harvester-dir", str(access_point)], []), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = json.loads((access_point / "event_status.dump.json").read_text())[str(PANDA_ID)]
    range_entries = [e for e in entries if "eventRangeID" in e]
    assert Counter(e["eventRangeID"] for e in range_entries) == Counter(r["eventRangeID"] for r in ranges)
    failed = {e["eventRangeID"] for e in range_entries if e["eventStatus"] == "failed"}
    assert failed == {f"7-{PANDA_ID}-1-{i}-1" for i in range(10, 61, 10)}
    for entry in range_entries:
        if entry["eventStatus"] == "finished":
            assert entry["type"] == "zip_output"
            assert checksum.adler32(entry["path"]) == entry["chksum"]


def _sent_or_done(server: Server, n: int) -> bool:
    return sum(r["status"] == "finished" for r in server.dump()["event_ranges"]) >= n


def test_sigterm_mid_run_reports_every_leased_range(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory([es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 100")], ranges=300)
    proc = subprocess.Popen(pilot_argv(tmp_path, ["--server", server.url],
                                       ["eventservice.payload_mode=protocol", "eventservice.bundle_seconds=1",
                                        "eventservice.prefetch_seconds=2"]),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert wait_for(lambda: _sent_or_done(server, 10), timeout=90)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    state = server.dump()
    counts = assert_accounted(state)
    assert counts["finished"] >= 10 and counts["ready"] > 0, counts
    assert any(r["errorCode"] == 1201 for r in state["event_ranges"] if r["status"] == "failed") or \
        counts["failed"] == 0
    job = state["jobs"][0]
    assert job["status"] == "failed" and job["pilotErrorCode"] == 1201, (job, err[-2000:])
    assert job["nEvents"] == counts["finished"]


def test_walltime_ends_the_job_with_every_range_reported(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory([es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 200")], ranges=400)
    started = time.monotonic()
    result = run([*pilot_argv(tmp_path, ["--server", server.url], ["eventservice.payload_mode=protocol"]),
                  "--walltime", "12"], tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 30
    state = server.dump()
    counts = assert_accounted(state)
    assert counts["finished"] > 0 and counts["ready"] > 0, counts
    check_bundles(state["event_ranges"], tmp_path / "out")
    job = state["jobs"][0]
    assert job["nEvents"] == counts["finished"]
    # cut by the guard with ranges left: failed REACHEDMAXTIME like a normal job (SIGTERM would give 1201)
    assert job["status"] == "failed" and job["pilotErrorCode"] == 1213, job
    assert {r["errorCode"] for r in state["event_ranges"] if r["status"] == "failed"} <= {1213}


def test_server_outage_during_the_run(tmp_path: Path, server_factory: Any) -> None:
    # A short prefetch keeps leasing going all through the run, so the outage falls while ranges are still to
    # come (with the default 30 s of prefetch the whole job is leased at once and can end inside the outage).
    server = server_factory([es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 20")], ranges=300)
    proc = subprocess.Popen(pilot_argv(tmp_path, ["--server", server.url],
                                       ["eventservice.payload_mode=protocol", "panda.retry_initial=0.2",
                                        "panda.retry_max=1", "panda.call_deadline=3",
                                        "eventservice.ranges_per_request=2", "eventservice.prefetch_seconds=0.2"]),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert wait_for(lambda: _sent_or_done(server, 5), timeout=90)
        server.stop()
        time.sleep(4)
        server.start()
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    state = server.dump()
    assert assert_accounted(state) == {"finished": 300}
    check_bundles(state["event_ranges"], tmp_path / "out")
    assert state["jobs"][0]["status"] == "finished"


def test_1000_ranges_on_8_ranks(tmp_path: Path, server_factory: Any) -> None:
    """The issue's 'done when': 1,000 ranges of about 10 ms through 8 ranks, each finished exactly once."""
    server = server_factory([es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 10")], ranges=1000)
    result = run(pilot_argv(tmp_path, ["--server", server.url],
                            ["eventservice.payload_mode=protocol", "eventservice.ranges_per_request=8",
                             "eventservice.bundle_events=200"], ranks=8), tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = server.dump()
    assert assert_accounted(state) == {"finished": 1000}
    check_bundles(state["event_ranges"], tmp_path / "out")
    assert state["jobs"][0]["nEvents"] == 1000


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of one rank of our own mpiexec (found through its process tree, never a stranger's)."""
    import psutil

    for child in psutil.Process(launcher).children(recursive=True):
        try:
            if child.environ().get("PMI_RANK") == str(rank) and "hpcpilot" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def test_a_rank_killed_mid_run_loses_no_range(tmp_path: Path, server_factory: Any) -> None:
    """SIGKILL of a worker rank: whatever the launcher does next (abort all ranks, or rank 0 declares the
    rank lost), every leased range ends reported -- if rank 0 died too, by the next pilot on the same
    workdir, from its journal."""
    server = server_factory([es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 100")], ranges=300)
    argv = pilot_argv(tmp_path, ["--server", server.url],
                      ["eventservice.payload_mode=protocol", "eventservice.prefetch_seconds=3",
                       "monitor.lost_rank_intervals=4"])
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert wait_for(lambda: _sent_or_done(server, 10), timeout=90)
        victim = _rank_pid(proc.pid, 2)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if any(r["status"] == "sent" for r in server.dump()["event_ranges"]):
        again = run([*argv[argv.index(sys.executable):], "--max-jobs", "0"], tmp_path)  # one rank, replay only
        assert again.returncode == 0, again.stderr[-3000:]
    state = server.dump()
    counts = assert_accounted(state)
    assert counts["finished"] >= 10
    assert state["jobs"][0]["status"] in ("finished", "failed")
