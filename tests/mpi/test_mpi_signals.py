"""SIGTERM to MPICH's Hydra `mpiexec` once some ranks have no more work, for real: `hpcpilot serve` with one
long job, `mpiexec -n 4 hpcpilot run`, and the signal when the two ranks without a job have retired.

Hydra forwards SIGTERM to every rank and waits for them; but a rank that had already left its loop sits in
MPI_Finalize with SIGTERM back at its default action (Python restores it at exit), dies of it, and Hydra then
SIGKILLs every other rank: rank 0 ends without the job's final update.  Retired ranks therefore wait for
rank 0's ``Release``, with the pilot's signal handler in place, and the job's final update gets through.
The in-process tests at the end check that this wait ends: on Release, on rank 0's death, after a signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.config import load_config
from hpcpilot.errors import exit_status_for_signal, signal_error
from hpcpilot.protocol import NoMoreWork, Release, Signalled, Stopped
from hpcpilot.transport import QueueHub, QueueTransport
from hpcpilot.worker import Worker
from tests.mpi.test_mpi_eventservice import Server, pilot_argv
from tests.pilotrun import make_job, processes_with, wait_for

pytestmark = pytest.mark.mpi
PANDA_ID = 9400
PAYLOAD = "sleep 300.94"  # unique: the test looks for it among the processes


def _status(workdir: Path) -> dict[str, Any]:
    try:
        return json.loads((workdir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _retired(workdir: Path, n: int) -> bool:
    return _status(workdir).get("ranks", {}).get("stopped", 0) >= n


@pytest.fixture
def server(tmp_path: Path):
    server = Server(tmp_path, [make_job(PANDA_ID, PAYLOAD, ["never.txt"])], ranges=1)
    server.start()
    yield server
    server.stop()


def test_sigterm_with_retired_ranks_delivers_the_final_update(tmp_path: Path, server: Server) -> None:
    workdir = tmp_path / "work"
    argv = pilot_argv(tmp_path, ["--server", server.url, "--queue", "TESTQ"], ["monitor.status_interval=0.5"])
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert wait_for(lambda: processes_with(PAYLOAD) and _retired(workdir, 2), timeout=90), _status(workdir)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    job = {j["PandaID"]: j for j in server.dump()["jobs"]}[PANDA_ID]
    assert job["status"] == "failed" and job["pilotErrorCode"] == int(signal_error(signal.SIGTERM)), \
        (job, err[-3000:])
    assert "BAD TERMINATION" not in out + err, (out + err)[-3000:]
    assert proc.returncode == exit_status_for_signal(signal.SIGTERM), (proc.returncode, err[-3000:])
    assert wait_for(lambda: not processes_with(PAYLOAD) and not processes_with(str(workdir)), timeout=10)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["pilot"]["owed"] == 0 and summary["jobs"][0]["delivery"] == "acknowledged", summary


# ---- the stopped rank's wait, in one process (a real worker loop over in-process queues) ------------------

FAST_LIVENESS = {"monitor": {"report_interval": 0.1, "lost_rank_intervals": 3, "free_space_start_mb": 1}}


class _Flag:
    signum: int | None = None


class _Rank0Dies(QueueTransport):
    """In-process transport whose MPI library reports rank 0 dead once ``dead`` is set (as under ULFM)."""

    dead = False

    def lost(self) -> list[int]:
        return [0] if self.dead else []


def _stopped_worker(tmp_path: Path, transport: QueueTransport, flag: _Flag | None = None) -> threading.Thread:
    """A worker told there is no more work, once it has sent Stopped."""
    config = load_config(None, FAST_LIVENESS, environ={})
    worker = Worker(transport, config, tmp_path / "jobs", tmp_path, signals=flag)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    rank0 = transport.hub.transport(0)
    rank0.send(1, NoMoreWork())
    assert wait_for(lambda: any(isinstance(m, Stopped) for m in _drain(rank0)), timeout=15)
    return thread


def _drain(rank0: QueueTransport) -> list[object]:
    out = []
    while (item := rank0.receive()) is not None:
        out.append(item[1])
    return out


def test_a_stopped_rank_stays_until_rank_0_releases_it(tmp_path: Path) -> None:
    hub = QueueHub(2)
    thread = _stopped_worker(tmp_path, hub.transport(1))
    thread.join(timeout=1.0)  # ten report intervals: it would have left by now
    assert thread.is_alive()
    hub.transport(0).send(1, Release())
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_a_stopped_rank_whose_rank_0_died_leaves_without_release(tmp_path: Path) -> None:
    transport = _Rank0Dies(QueueHub(2), 1)
    thread = _stopped_worker(tmp_path, transport)
    thread.join(timeout=0.5)
    assert thread.is_alive()
    transport.dead = True
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_a_stopped_rank_signalled_and_never_released_leaves_after_the_silence_limit(tmp_path: Path) -> None:
    flag = _Flag()
    hub = QueueHub(2)
    thread = _stopped_worker(tmp_path, hub.transport(1), flag)
    flag.signum = signal.SIGTERM
    thread.join(timeout=15)  # 3 report intervals of silence after the signal
    assert not thread.is_alive()
    assert any(isinstance(m, Signalled) for m in _drain(hub.transport(0)))  # rank 0 still heard of the signal
