"""Fuzzed job definitions through the whole pilot under ``mpiexec -n 3`` (issue 12, behaviour 2).

Thousands of mutated getJob dicts (``tests/jobfuzz.py``: wrong types, NUL bytes, unicode, unequal
per-file lists, hostile names, absurd numbers) go through ``hpcpilot serve`` and through a Harvester
access point.  The pilot must end normally, no log or output may hold a traceback, and every job
leased must be reported exactly once -- judged from the server's state and the access point's files,
never from the pilot's log.  A job the parser refuses must be failed with the parser's code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.errors import ErrorCode
from hpcpilot.panda.source import PandaSource
from hpcpilot.records import panda_id_of
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import NODE, panda_config
from tests.jobfuzz import FINAL, final_updates, mutated_jobs, refusal
from tests.pilotrun import BIN, LAPTOP, make_access_point

pytestmark = pytest.mark.mpi

SEED = 12
N_SERVER = 2000
N_HARVESTER = 2000
N_IN_FLIGHT = 50
CODES = {int(code) for code in ErrorCode}
PILOT_TIMEOUT = 420
SETTINGS = ["monitor.report_interval=5", "monitor.free_space_start_mb=50", "monitor.free_space_running_mb=10",
            "monitor.kill_grace=1"]


def _pilot(tmp: Path, source: list[str], settings: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "mpiexec"), "-n", "3", sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP),
            *source, "--workdir", str(tmp / "work"), "--log-dir", str(tmp / "logs"),
            "--set", f"stage.output_dir={tmp / 'outputs'}", "--set", f"stage.input_dir={tmp / 'inputs'}"]
    for setting in [*SETTINGS, *settings]:
        argv += ["--set", setting]
    (tmp / "inputs").mkdir(exist_ok=True)
    return subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=PILOT_TIMEOUT)


def _tracebacks(*places: Path | str) -> list[str]:
    """Where 'Traceback' appears: any file under the given directories, or the given texts."""
    found = []
    for place in places:
        if isinstance(place, Path):
            for path in sorted(p for p in place.rglob("*") if p.is_file()):
                if b"Traceback" in path.read_bytes():
                    found.append(str(path))
        elif "Traceback" in place:
            found.append(place[place.index("Traceback"):][:2000])
    return found


def _check_outcome(panda_id: int, expected: int | None, status: str, code: Any, diag: Any) -> None:
    assert status in FINAL, (panda_id, status)
    if expected is not None:
        assert status == "failed" and int(code) == expected, (panda_id, expected, code, diag)
    if status == "failed":
        assert int(code) in CODES, (panda_id, code, diag)
        assert isinstance(diag, str) and len(diag.splitlines()) == 1, (panda_id, diag)


def _lease_and_die(url: str, workdir: Path, n: int) -> list[int]:
    """A predecessor pilot on ``workdir`` that leased ``n`` jobs (journaled) and died before reporting any."""
    source = PandaSource(panda_config(url, "v1", jobs_per_fetch=n), workdir, NODE, fetch_deadline=30.0)
    try:
        return [panda_id_of(wire) for wire in source.fetch_jobs(n).leased]
    finally:
        source.close()


def test_fuzzed_definitions_through_a_panda_server(tmp_path: Path) -> None:
    """Also a restart: the pilot starts on the workdir of one that died with fuzzed definitions leased."""
    jobs = mutated_jobs(N_SERVER, SEED)
    expected = {int(str(job["PandaID"]).strip()): refusal(job) for job in jobs}
    server = PandaTestServer(tmp_path / "state.db").start()
    try:
        server.load_jobs(jobs)
        for panda_id in _lease_and_die(server.url, tmp_path / "work", N_IN_FLIGHT):
            expected[panda_id] = int(ErrorCode.KILLSIGNAL)  # reported by the next pilot: "pilot restarted"
        pilot = _pilot(tmp_path, ["--server", server.url, "--queue", "FUZZQ"],
                       ["panda.api=v1", "panda.jobs_per_fetch=100"])
        assert pilot.returncode == 0, pilot.stderr[-3000:]
        assert not _tracebacks(tmp_path / "logs", tmp_path / "work", pilot.stdout, pilot.stderr)
        state = {job["PandaID"]: job for job in server.dump()["jobs"]}
        finals = final_updates(server)
    finally:
        server.close()
    assert sorted(state) == sorted(expected)
    for panda_id, job in state.items():
        assert sum(s in FINAL for s in job["states"]) == 1 and finals[panda_id] == 1, job
        _check_outcome(panda_id, expected[panda_id], job["status"], job.get("pilotErrorCode"),
                       job.get("pilotErrorDiag"))
    outcomes = Counter(job["status"] for job in state.values())
    assert outcomes["finished"] >= N_SERVER // 10, outcomes  # the clean tenth at least ran to the end


def test_fuzzed_definitions_through_a_harvester_access_point(tmp_path: Path) -> None:
    jobs = mutated_jobs(N_HARVESTER, SEED + 1)
    expected = {str(job["PandaID"]): refusal(job) for job in jobs}  # by access-point key: the job's directory
    access_point = make_access_point(tmp_path / "access_point", jobs)
    pilot = _pilot(tmp_path, ["--harvester-dir", str(access_point)], ["harvester.feed_timeout=0"])
    assert pilot.returncode == 0, pilot.stderr[-3000:]
    assert not _tracebacks(tmp_path / "logs", tmp_path / "work", access_point, pilot.stdout, pilot.stderr)
    for key, code in expected.items():
        job_dir = access_point / key
        attributes = json.loads((job_dir / "worker_attributes.json").read_text())
        assert (job_dir / "jobReport.json").is_file(), key
        _check_outcome(int(key), code, attributes["jobStatus"], attributes.get("pilotErrorCode"),
                       attributes.get("pilotErrorDiag"))
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    records = Counter(int(job["jobId"]) for job in summary["jobs"])
    assert records == Counter(int(key) for key in expected), "every job handed out has exactly one final record"
