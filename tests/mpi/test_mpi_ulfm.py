"""A worker rank SIGKILLed under Open MPI's ``mpirun --with-ft ulfm``: the pilot goes on without it.

The liveness limit is set far beyond the test's time bound (60 s), so a lost rank here can only have
been learnt from MPI's own failure report; the lost rank's work is failed with 1317 naming rank and
host, the other ranks finish everything else, the pilot exits 0, and no payload is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.mpi.test_mpi_eventservice import ES_PAYLOAD, Server, assert_accounted, es_job, pilot_argv
from tests.mpi.test_mpi_pilot import _rank_of
from tests.pilotrun import Mpi, finish, make_access_point, make_job, processes_with, start_pilot, wait_for

pytestmark = pytest.mark.mpi

SLOW_LIVENESS = ["monitor.lost_rank_intervals=120"]
"""60 s of silence before the liveness signal would give a rank up: longer than any bound below."""
BOUND = 45
"""Seconds from the SIGKILL to the pilot's end."""


def kill_rank_of(marker: str) -> int:
    """SIGKILL the worker rank that runs the payload whose command line holds ``marker``; its rank number."""
    pid = _rank_of(processes_with(marker)[0])
    with open(f"/proc/{pid}/environ", "rb") as handle:
        environ = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
    os.kill(pid, signal.SIGKILL)
    return int(environ[b"OMPI_COMM_WORLD_RANK"])


def test_a_killed_worker_rank_fails_its_job_and_the_others_finish(tmp_path: Path, ulfm: Mpi) -> None:
    jobs = [make_job(700 + i, f"sleep 3.7{i}; echo {i} > o{i}.txt", [f"o{i}.txt"]) for i in range(8)]
    proc = start_pilot(tmp_path, make_access_point(tmp_path / "access_point", jobs), SLOW_LIVENESS, ranks=4,
                       mpi=ulfm)
    assert wait_for(lambda: processes_with("sleep 3.71"), timeout=60)
    killed_at = time.monotonic()
    lost = kill_rank_of("sleep 3.71")
    run = finish(proc, tmp_path, timeout=BOUND + 30)
    assert time.monotonic() - killed_at < BOUND, run.stderr[-3000:]
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(run.jobs) == [700 + i for i in range(8)]
    victim = run.jobs[701]
    assert victim["pilotErrorCode"] == 1317 and victim["rank"] == lost, victim
    assert f"rank {lost} on " in victim["pilotErrorDiag"] and "died" in victim["pilotErrorDiag"], victim
    assert all(j["state"] == "finished" for pid, j in run.jobs.items() if pid != 701), run.jobs
    assert lost not in {j["rank"] for pid, j in run.jobs.items() if pid >= 703}  # handed out after the kill
    assert wait_for(lambda: not processes_with("sleep 3.7") and not processes_with(str(tmp_path / "work")),
                    timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Any:
    made = Server(tmp_path, [es_job(9700, f"{ES_PAYLOAD} --ms-per-event 100")], ranges=200)
    made.start()
    yield made
    made.stop()


def test_a_killed_worker_rank_of_an_event_service_job_loses_no_range(tmp_path: Path, server: Server,
                                                                        ulfm: Mpi) -> None:
    base = pilot_argv(tmp_path, ["--server", server.url],
                      ["eventservice.payload_mode=protocol", "eventservice.prefetch_seconds=3", *SLOW_LIVENESS])
    argv = [*ulfm.argv(4), ulfm.python, *base[base.index(sys.executable) + 1:]]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=ulfm.environ())
    try:
        assert wait_for(lambda: sum(r["status"] == "finished" for r in server.dump()["event_ranges"]) >= 10,
                        timeout=90)
        killed_at = time.monotonic()
        lost = kill_rank_of(str(ES_PAYLOAD))
        _, err = proc.communicate(timeout=BOUND + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert time.monotonic() - killed_at < BOUND, err[-3000:]
    assert proc.returncode == 0, err[-3000:]
    state = server.dump()
    counts = assert_accounted(state)  # every range reported exactly once, none left leased
    assert counts["finished"] + counts["failed"] == 200, counts
    assert counts["finished"] >= 10
    failed = [r for r in state["event_ranges"] if r["status"] == "failed"]
    assert all(r["errorCode"] == 1317 and f"rank {lost} on " in r["errorDiag"] for r in failed), failed[:3]
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["jobs"][0]["state"] in ("finished", "failed")
    assert wait_for(lambda: not processes_with(str(ES_PAYLOAD)) and not processes_with(str(tmp_path / "work")),
                    timeout=10)
