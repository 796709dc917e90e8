"""Slurm across three nodes: slurm/cluster.sh with one ``slurmd -N`` per node (started through the nodes'
launch agent), ``sbatch`` of the rendered pilot script, the pilot under ``srun --mpi=pmi2`` against the
PanDA test double on the bridge, and the early warning when rank 0 is not on the batch shell's node.

Asserted on what the server received (job states, each final update and its ``node``, the worker-node
map) and on Slurm's own account of the job, never on the pilot's log.  The warning is sent the way
``#SBATCH --signal=B:USR1@S`` sends it, to the batch shell only (``scancel --batch --signal=USR1``), at a
moment the test picks: Slurm's own timer is tested on one node (tests/slurm), and waiting for it here
would cost a minute or more.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.config import load_config
from hpcpilot.errors import ErrorCode
from hpcpilot.slurm import render_sbatch
from hpcpilot_serve.server import PandaTestServer
from tests.nodes.netns import Cluster
from tests.nodes.test_node_loss import LONG, SHORT, SLOW_LIVENESS, assert_replayed_once
from tests.nodes.test_nodes_pilot import final_updates
from tests.pilotrun import FAST, LAPTOP, make_job, wait_for
from tests.slurm.conftest import CLUSTER, SlurmCluster
from tests.slurm.conftest import _skip_reason as slurm_skip_reason

pytestmark = pytest.mark.nodes


def _free_port() -> int:
    """A TCP port free on this machine for slurmctld (SlurmdPort, the next one, is in the nodes' own stacks)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def slurm_on(cluster: Cluster, *options: str) -> Iterator[SlurmCluster]:
    """slurm/cluster.sh started on the cluster's three nodes (its own directory, ports and pid files, so a
    one-node cluster of the Slurm tier may run beside it), stopped afterwards."""
    reason = slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = cluster.directory / "slurm"
    script = ["bash", str(CLUSTER)]
    started = subprocess.run([*script, "start", "--install", "--dir", str(directory), "--nodes",
                              ",".join(cluster.hostnames), "--agent", str(cluster.agent), "--port", str(_free_port()),
                              *options], capture_output=True, text=True, timeout=900, check=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCPILOT_"))}
    env["SLURM_CONF"] = str(directory / "etc" / "slurm.conf")
    # The nodes share one kernel, so UCX (under the pip MPICH) takes them for one machine and would reach a
    # rank on another node through shared memory, opening the peer's /proc/<pid>/fd: that pid is in the
    # other node's pid namespace (slurm/cluster.sh gives each slurmd one), so MPI_Init fails.  Between
    # real nodes UCX uses the network: so here, on TCP only.
    env["UCX_TLS"] = "self,tcp"
    try:
        if started.returncode != 0:
            pytest.fail(f"slurm/cluster.sh start --nodes failed: {(started.stderr or started.stdout).strip()}")
        yield SlurmCluster(directory, env)
    finally:
        subprocess.run([*script, "stop", "--dir", str(directory)], capture_output=True, timeout=120, check=False)


@pytest.fixture
def slurm_nodes(cluster: Cluster) -> Iterator[SlurmCluster]:
    with slurm_on(cluster) as slurm:
        yield slurm


@pytest.fixture
def slurm_nodes_quick_down(cluster: Cluster) -> Iterator[SlurmCluster]:
    """The same, declaring a silent node DOWN after 10 s instead of Slurm's 300."""
    with slurm_on(cluster, "--slurmd-timeout", "10") as slurm:
        yield slurm


def batch_script(cluster: Cluster, server: PandaTestServer, name: str, nodes: int, ranks_per_node: int,
                 extra: list[str], settings: tuple[str, ...] = ()) -> Path:
    """The pilot's sbatch script, rendered as ``hpcpilot render-sbatch`` renders it, into the shared directory."""
    shared = cluster.shared
    launcher = {"kind": "srun", "mpi": "pmi2", "nodes": nodes, "ranks_per_node": ranks_per_node, "time_minutes": 10,
                "warning_signal": "USR1", "warning_seconds": 60, "extra_options": extra}
    config = load_config(LAPTOP, overrides={"launcher": launcher}, environ={"HPCPILOT": ""})
    args = ["--site-config", str(LAPTOP), "--server", server.url, "--queue", "TESTQ", "--workdir",
            str(shared / "work")]
    for setting in [*FAST, f"stage.output_dir={shared / 'out'}", *settings]:
        args += ["--set", setting]
    script = shared / f"{name}.sbatch"
    script.write_text(render_sbatch(config, args, job_name=name, python=sys.executable))
    return script


def batch_output(cluster: Cluster) -> str:
    return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(cluster.shared.glob("*.out")))


def submit(slurm: SlurmCluster, script: Path, *options: str) -> str:
    """``sbatch [options] script`` from the shared directory; the job id."""
    done = slurm.run(["sbatch", "--parsable", *options, str(script)], cwd=script.parent)
    assert done.returncode == 0, f"sbatch failed: {done.stderr.strip()}"
    return done.stdout.strip().split(";")[0]


def test_sbatch_on_three_nodes_runs_jobs_on_every_node(cluster: Cluster, slurm_nodes: SlurmCluster,
                                                       panda_server: PandaTestServer) -> None:
    ids = list(range(25001, 25011))
    panda_server.load_jobs([make_job(i, f"sleep 1; hostname > where.{i}.txt", [f"where.{i}.txt"]) for i in ids])
    script = batch_script(cluster, panda_server, "pilot-nodes", nodes=3, ranks_per_node=2, extra=[])
    assert "srun --mpi=pmi2 --nodes=3 --ntasks=6 --ntasks-per-node=2" in script.read_text()
    info = slurm_nodes.wait(submit(slurm_nodes, script), timeout=180)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{batch_output(cluster)}"
    assert info["NodeList"] == f"{cluster.prefix}-n[1-3]", info
    state = panda_server.dump()
    assert {j["PandaID"]: j["status"] for j in state["jobs"]} == dict.fromkeys(ids, "finished")
    updates = final_updates(panda_server)
    assert sorted(updates) == ids and all(len(u) == 1 for u in updates.values()), updates
    node_of = {i: updates[i][0]["node"] for i in ids}
    for i in ids:  # the node each final update names is where the payload ran
        assert (cluster.shared / "out" / f"where.{i}.txt").read_text().strip() == node_of[i]
    assert set(node_of.values()) == set(cluster.hostnames)
    assert [(n["host_name"], n["updates"]) for n in state["worker_nodes"]] == [(h, 1) for h in cluster.hostnames]


def _long_jobs(marker: str, ids: list[int], shared: Path) -> list[dict[str, Any]]:
    """Payloads that leave a file if the warning signal reaches them: the pilot must end them itself
    (TERM, then KILL), the warning is for rank 0 alone."""
    return [make_job(i, f"trap 'touch {shared}/usr1.{i}' USR1; while :; do sleep 1; done # {marker}") for i in ids]


def _payloads(cluster: Cluster, marker: str) -> list[int]:
    """Pids on any node whose command line holds ``marker``."""
    found = []
    for node in cluster.nodes:
        for pid in node.pids():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
    return found


def test_early_warning_reaches_rank_0_on_another_node(cluster: Cluster, slurm_nodes: SlurmCluster,
                                                      panda_server: PandaTestServer) -> None:
    """The batch shell runs on the first node; the step runs on the other two (``srun --relative=1``, as on
    a machine whose batch script runs on a node of its own), so rank 0 is not on the batch shell's node.
    The warning must still reach rank 0 alone: no payload gets it, the jobs end with the warning's code, no
    payload is left, and Slurm counts the orderly wind-down a success."""
    marker = f"warn-{uuid.uuid4().hex}"
    ids = [25101, 25102, 25103]
    panda_server.load_jobs(_long_jobs(marker, ids, cluster.shared))
    script = batch_script(cluster, panda_server, "pilot-warn", nodes=2, ranks_per_node=2, extra=["--relative=1"])
    job_id = submit(slurm_nodes, script, "--nodes=3")  # the command line's --nodes wins over the script's
    running = wait_for(lambda: len(_payloads(cluster, marker)) >= len(ids), timeout=120, interval=0.5)
    if not running:
        slurm_nodes.run(["scancel", job_id])
        pytest.fail(f"payloads did not start: {slurm_nodes.job(job_id)}\n{batch_output(cluster)}")
    assert cluster.node(cluster.hostnames[0]).pids() and not _payloads_on(cluster, 0, marker)
    warned = slurm_nodes.run(["scancel", "--batch", "--signal=USR1", job_id])
    assert warned.returncode == 0, warned.stderr
    info = slurm_nodes.wait(job_id, timeout=120)
    output = batch_output(cluster)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{output}"
    updates = final_updates(panda_server)
    assert sorted(updates) == ids and all(len(u) == 1 for u in updates.values()), updates
    for i in ids:
        fields = updates[i][0]
        assert fields["state"] == "failed", fields
        assert int(fields["pilotErrorCode"]) in (ErrorCode.SIGUSR1, ErrorCode.REACHEDMAXTIME), fields
        assert fields["node"] != cluster.hostnames[0], fields
    # rank 0 (and every rank) ran on the second and third nodes only: the map names no other
    assert [n["host_name"] for n in panda_server.dump()["worker_nodes"]] == cluster.hostnames[1:]
    assert wait_for(lambda: not _payloads(cluster, marker), timeout=30), _payloads(cluster, marker)
    assert not sorted(cluster.shared.glob("usr1.*")), "the warning signal reached payloads"



def _payloads_on(cluster: Cluster, index: int, marker: str) -> list[int]:
    node = cluster.nodes[index]
    return [pid for pid in _payloads(cluster, marker) if pid in node.pids()]


def test_a_lost_node_under_srun_loses_no_job(cluster: Cluster, slurm_nodes_quick_down: SlurmCluster,
                                             panda_server: PandaTestServer) -> None:
    """Every process of the third node SIGKILLed (its slurmd too) under ``srun --mpi=pmi2``: rank 0 blocks in
    MPI (README, "Losing a node"), Slurm ends the job once the node is declared down, and the journal replay
    reports what the pilot could not -- each job the server handed out exactly once."""
    slurm = slurm_nodes_quick_down
    marker = f"lost-{uuid.uuid4().hex}"
    panda_server.load_jobs([make_job(i, "sleep 0.5") for i in SHORT] +
                           [make_job(i, f"sleep 120 # {marker}") for i in LONG])
    script = batch_script(cluster, panda_server, "pilot-lost", nodes=3, ranks_per_node=2, extra=[],
                          settings=SLOW_LIVENESS)
    # --no-requeue: after a node failure Slurm requeues a batch job by default, to wait for 3 nodes again
    job_id = submit(slurm, script, "--no-requeue")
    busy = wait_for(lambda: _payloads_on(cluster, 2, marker) and len(final_updates(panda_server)) >= len(SHORT),
                    timeout=120, interval=0.3)
    if not busy:
        slurm.run(["scancel", job_id])
        pytest.fail(f"no long payload on the third node: {slurm.job(job_id)}\n{batch_output(cluster)}")
    assert cluster.nodes[2].kill_all() > 0
    info = slurm.wait(job_id, timeout=150)
    assert info["JobState"] == "NODE_FAIL", f"{info}\n{batch_output(cluster)}"
    assert_replayed_once(cluster, panda_server)
    assert wait_for(lambda: not _payloads(cluster, marker), timeout=30), _payloads(cluster, marker)

