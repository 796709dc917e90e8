"""Losing a node: every process of one of three nodes SIGKILLed mid-run, under MPICH's mpiexec and Open MPI's
``mpirun --with-ft ulfm``, the pilot on the other two against the PanDA test double on the bridge.

Neither runtime lets the other nodes go on (README, "What survives what", has the measurements): Hydra
SIGKILLs every rank at once without a signal first; PRRTE (Open MPI 5.0.x, ULFM or not) terminates the job
on a lost daemon: SIGCONT, SIGTERM about 0.25 s after the loss, SIGKILL 0.25 s later.  What must hold
whatever the runtime does, asserted on the server's state: nothing the server handed out is lost or
reported twice -- directly, or by the journal replay of ``hpcpilot deliver`` (run twice: the second sends
nothing) -- and under Open MPI, whose SIGTERM comes before its SIGKILL, the pilot's last words
(summary.json, naming the signal) are written in that quarter second.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hpcpilot_serve.server import PandaTestServer
from tests.nodes.conftest import RANKS_PER_NODE
from tests.nodes.netns import Cluster
from tests.nodes.test_nodes_pilot import final_updates, finish, nodes_emptied, start
from tests.pilotrun import LAPTOP, MPICH, Mpi, make_job, open_mpi, wait_for

pytestmark = pytest.mark.nodes

SLOW_LIVENESS = ("monitor.lost_rank_intervals=120",)
"""A minute of silence before the liveness signal gives a rank up: a lost rank is learnt from MPI or not at
all, and a loaded machine never makes a live rank look lost."""
SHORT = list(range(26001, 26006))
LONG = list(range(26101, 26109))
LOST_CODES = {1317, 1201, 1200}
"""1317 a rank MPI reported dead, 1201 the runtime's SIGTERM, 1200 leased without a final status (the replay)."""


@pytest.fixture(params=["mpich", "openmpi-ulfm"])
def loss_mpi(request: pytest.FixtureRequest, cluster: Cluster) -> Mpi:
    """MPICH's Hydra mpiexec, or Open MPI's mpirun with ULFM, across the cluster's nodes."""
    if request.param == "mpich":
        return replace(MPICH, launcher=(*MPICH.launcher, *cluster.mpich_args(RANKS_PER_NODE)))
    base = open_mpi(request.getfixturevalue("openmpi_venv"), fault_tolerant=True)
    return replace(base, launcher=(*base.launcher, *cluster.openmpi_args(RANKS_PER_NODE)))


def _on_node(cluster: Cluster, index: int, marker: str) -> bool:
    """A process of ``marker``'s payloads runs on node ``index``."""
    for pid in cluster.nodes[index].pids():
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def _deliver(cluster: Cluster, server: PandaTestServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcpilot", "deliver", "--workdir", str(cluster.shared / "work"),
                           "--site-config", str(LAPTOP), "--server", server.url, "--deadline", "60"],
                          capture_output=True, text=True, timeout=120, check=False)


def _handed_out(server: PandaTestServer) -> set[int]:
    return {job["PandaID"] for job in server.dump()["jobs"] if job["states"]}


def test_a_lost_node_loses_no_job_and_reports_none_twice(cluster: Cluster, loss_mpi: Mpi,
                                                         panda_server: PandaTestServer) -> None:
    marker = f"lost-{uuid.uuid4().hex}"
    panda_server.load_jobs([make_job(i, "sleep 0.5") for i in SHORT] +
                           [make_job(i, f"sleep 120 # {marker}") for i in LONG])
    proc = start(cluster, loss_mpi, panda_server, SLOW_LIVENESS)
    victim = cluster.nodes[2]
    try:
        busy = wait_for(lambda: _on_node(cluster, 2, marker) and len(final_updates(panda_server)) >= len(SHORT),
                        timeout=90, interval=0.2)
        assert busy, "no long payload on the third node after the short jobs"
        assert victim.kill_all() > 0
        _, output = finish(proc, timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = cluster.shared / "work" / "summary.json"
    if loss_mpi.name.startswith("openmpi"):
        # the runtime's SIGTERM came before its SIGKILL: rank 0 wrote its last words in between
        assert json.loads(summary.read_text())["pilot"]["signal"] == "SIGTERM", output[-3000:]
    before = final_updates(panda_server)
    assert all(len(updates) == 1 for updates in before.values()), before
    assert_replayed_once(cluster, panda_server)
    assert nodes_emptied(cluster)


def _code(fields: dict[str, Any]) -> int:
    return int(fields.get("pilotErrorCode") or 0)


def assert_replayed_once(cluster: Cluster, server: PandaTestServer) -> dict[int, int]:
    """After the loss: ``hpcpilot deliver`` sends what the journal owes, a second one sends nothing, and then
    every job the server handed out has exactly one final update (the short ones finished, the long ones
    failed with a loss code); the long jobs' codes."""
    first = _deliver(cluster, server)
    assert first.returncode == 0, first.stderr[-2000:]
    after_first = len(server.requests())
    second = _deliver(cluster, server)
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(server.requests()) - after_first <= 1, "the second replay sent updates"  # its worker map only
    updates = final_updates(server)
    handed_out = _handed_out(server)
    assert set(SHORT) <= handed_out and handed_out & set(LONG), handed_out
    assert sorted(updates) == sorted(handed_out), (sorted(updates), sorted(handed_out))
    assert all(len(u) == 1 for u in updates.values()), {i: [f["state"] for f in u] for i, u in updates.items()}
    assert all(updates[i][0]["state"] == "finished" for i in SHORT), {i: updates[i] for i in SHORT}
    lost = {i: _code(updates[i][0]) for i in handed_out & set(LONG)}
    assert all(code in LOST_CODES for code in lost.values()), lost
    return lost

