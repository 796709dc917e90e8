"""The pilot across three nodes under MPICH's mpiexec and Open MPI's mpirun (2 ranks a node), against the
PanDA test double on the bridge: what only happens across nodes, checked on what the server received,
run.h5 and the nodes' own files."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import defaultdict
from typing import Any

import pytest

from hpcpilot.errors import ErrorCode
from hpcpilot.panda import wire
from hpcpilot.report.read import load_run
from hpcpilot_serve.server import PandaTestServer
from tests.mpi.test_mpi_eventservice import ES_PAYLOAD, assert_accounted, check_bundles, es_job
from tests.nodes.conftest import NODES, RANKS_PER_NODE
from tests.nodes.netns import Cluster
from tests.pilotrun import FAST, LAPTOP, Mpi, default_sigint, make_job, processes_with, wait_for

pytestmark = pytest.mark.nodes
RANKS = NODES * RANKS_PER_NODE
ES_ID = 24100
SCRATCH = "/tmp/scratch"  # site.local_scratch: the node's own /tmp


def start(cluster: Cluster, mpi: Mpi, server: PandaTestServer, settings: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """``mpiexec -n 6 hpcpilot run --server`` across the nodes, work directory and logs on the shared one."""
    shared = cluster.shared
    argv = [*mpi.argv(RANKS), mpi.python, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--server",
            server.url, "--queue", "TESTQ", "--workdir", str(shared / "work"), "--log-dir", str(shared / "logs")]
    for setting in [*FAST, f"site.local_scratch={SCRATCH}", f"stage.output_dir={shared / 'out'}", *settings]:
        argv += ["--set", setting]
    return subprocess.Popen(argv, cwd=shared, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=mpi.environ(), preexec_fn=default_sigint)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the pilot did not end within {timeout} s:\n{err[-3000:]}") from None
    return proc.returncode, out + err


def final_updates(server: PandaTestServer) -> dict[int, list[dict[str, Any]]]:
    """Each job's final updateJob requests as the server received them (legacy field names, either API)."""
    updates: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for request in server.requests(wire.UPDATE_JOB):
        fields = wire.from_v1(wire.UPDATE_JOB, request["fields"]) if request["api"] == "v1" else request["fields"]
        if fields.get("state") in ("finished", "failed"):
            updates[int(fields["jobId"])].append(fields)
    return dict(updates)


def expected_node(cluster: Cluster, rank: int) -> str:
    """Both launchers fill the nodes in order: ranks 0 and 1 on the first node, 2 and 3 on the second..."""
    return cluster.hostnames[rank // RANKS_PER_NODE]


def scratch_jobs(cluster: Cluster) -> dict[str, dict[int, set[int]]]:
    """What each node's own /tmp holds under site.local_scratch: {node: {rank: {PandaIDs of the job dirs}}}."""
    found: dict[str, dict[int, set[int]]] = {}
    for node in cluster.nodes:
        ranks = (node.tmp / SCRATCH.removeprefix("/tmp/") / "jobs").glob("rank*")
        found[node.name] = {int(r.name.removeprefix("rank")): {int(j.name.split("_")[1]) for j in r.glob("PandaJob_*")}
                            for r in ranks}
    return found


def nodes_emptied(cluster: Cluster) -> bool:
    """No process of the run is left on any node (the launchers' daemons included)."""
    return wait_for(lambda: not any(node.pids() for node in cluster.nodes), timeout=30)


def test_jobs_spread_over_every_node_each_named_by_its_node(cluster: Cluster, node_mpi: Mpi,
                                                             panda_server: PandaTestServer) -> None:
    ids = list(range(24001, 24011))
    panda_server.load_jobs([make_job(i, f"sleep 1; hostname > where.{i}.txt", [f"where.{i}.txt"]) for i in ids])
    returncode, output = finish(start(cluster, node_mpi, panda_server))
    assert returncode == 0, output[-3000:]
    state = panda_server.dump()
    assert {j["PandaID"]: j["status"] for j in state["jobs"]} == dict.fromkeys(ids, "finished")
    # the node each job's final update names is where the payload ran (its own hostname, staged out)
    updates = final_updates(panda_server)
    assert sorted(updates) == ids and all(len(u) == 1 for u in updates.values()), updates
    node_of = {i: updates[i][0]["node"] for i in ids}
    for i in ids:
        assert (cluster.shared / "out" / f"where.{i}.txt").read_text().strip() == node_of[i]
    assert set(node_of.values()) == set(cluster.hostnames)  # jobs on every node
    # run.h5: each worker rank's node info and each job's node are the rank's real node
    run = load_run(cluster.shared / "work" / "run.h5")
    assert {rank: info["node"] for rank, info in run.nodes.items()} == \
        {rank: expected_node(cluster, rank) for rank in range(1, RANKS)}
    assert all(info["disk"] > 0 for info in run.nodes.values()), run.nodes
    assert {job["jobId"]: job["node"] for job in run.jobs} == node_of
    assert all(job["node"] == expected_node(cluster, job["rank"]) for job in run.jobs)
    # each rank's log lines carry [rank r/6 its node]
    for rank in range(RANKS):
        lines = (cluster.shared / "logs" / f"pilot.rank{rank}.log").read_text().splitlines()
        prefix = f" [rank {rank}/{RANKS} {expected_node(cluster, rank)}] "
        assert lines and all(prefix in line for line in lines if line[:2] == "20"), (prefix, lines[:3])
    # node-local scratch: a node's /tmp holds the directories of its own ranks' jobs, and only those
    scratch = scratch_jobs(cluster)
    for node in cluster.nodes:
        ranks = [r for r in range(1, RANKS) if expected_node(cluster, r) == node.name]
        assert sorted(scratch[node.name]) == ranks, scratch
        assert set().union(*scratch[node.name].values()) == {i for i in ids if node_of[i] == node.name}
    # the worker-node map: once per node, every node
    assert [(n["host_name"], n["updates"]) for n in state["worker_nodes"]] == [(h, 1) for h in cluster.hostnames]
    assert nodes_emptied(cluster)


def test_an_event_service_job_over_every_node_finishes_each_range_once(cluster: Cluster, node_mpi: Mpi,
                                                                        panda_server: PandaTestServer) -> None:
    panda_server.load_jobs([es_job(ES_ID, f"{ES_PAYLOAD} --ms-per-event 40")], ranges_per_job=80)
    returncode, output = finish(start(cluster, node_mpi, panda_server, (
        "eventservice.payload_mode=protocol", "eventservice.ranges_per_request=2", "eventservice.report_interval=1",
        "eventservice.bundle_events=40")))
    assert returncode == 0, output[-3000:]
    state = panda_server.dump()
    assert assert_accounted(state) == {"finished": 80}  # every range finished, each reported once
    check_bundles(state["event_ranges"], cluster.shared / "out")  # the zips staged out from every node
    assert [(j["status"], j["nEvents"]) for j in state["jobs"]] == [("finished", 80)]
    # ranks of every node worked on it (run.h5: each rank's range updates and its node), in their own directories
    # of the job's shared one (an event-service job meets on the shared workdir, not on node-local scratch)
    run = load_run(cluster.shared / "work" / "run.h5")
    worked = {rank for (rank, panda_id), series in run.series.items() if panda_id == ES_ID and series.event_updates}
    assert {run.nodes[rank]["node"] for rank in worked} == set(cluster.hostnames), (worked, run.nodes)
    assert sum(len(run.series[(rank, ES_ID)].event_updates) for rank in worked) == 80
    job_dir = cluster.shared / "work" / "jobs" / f"PandaJob_{ES_ID}"
    assert worked <= {int(p.name.removeprefix("rank")) for p in job_dir.glob("rank*")}
    assert nodes_emptied(cluster)


def test_the_warning_signal_then_sigterm_wind_every_node_down_in_order(cluster: Cluster, node_mpi: Mpi,
                                                                      panda_server: PandaTestServer) -> None:
    """Slurm's way: the warning (USR1) to the launcher, which passes it to every rank on every node; the jobs
    are stopped (their payloads ignore TERM, so that takes kill_grace), rank 0 sends their final updates,
    which the server answers late -- and SIGTERM comes while it waits.  The ranks whose jobs ended must still
    be waiting for rank 0 then, not sitting in MPI_Finalize where TERM kills them and the launcher kills rank 0
    with them: every final update is answered, summary.json written, the pilot ends 128+15 (MPICH; Open MPI's
    mpirun ends every rank on TERM at once, see below)."""
    ids = list(range(24201, 24206))  # one for each worker rank: every node runs one or two
    payload = "trap '' TERM; sleep 77.{} & wait; wait"
    panda_server.load_jobs([make_job(i, payload.format(i), ["never.txt"]) for i in ids])
    proc = start(cluster, node_mpi, panda_server, ("monitor.kill_grace=3",))
    try:
        assert wait_for(lambda: {j["status"] for j in panda_server.dump()["jobs"]} == {"running"}, timeout=60)
        # each final update is committed at once and answered 6 s late: rank 0's last words take their time
        panda_server.set_fault("slow", delay=6, method=wire.UPDATE_JOB, after_commit=True)
        proc.send_signal(signal.SIGUSR1)
        # every job stopped and reported, the last answer still due: now the batch system's TERM
        assert wait_for(lambda: {j["status"] for j in panda_server.dump()["jobs"]} == {"failed"}, timeout=60)
        proc.send_signal(signal.SIGTERM)
    finally:
        returncode, output = finish(proc)
    # what the server committed: every job's final state, stopped by the warning (the first signal)
    jobs = panda_server.dump()["jobs"]
    assert {(j["PandaID"], j["status"], j["pilotErrorCode"], j["pilotErrorDiag"]) for j in jobs} == \
        {(i, "failed", int(ErrorCode.SIGUSR1), "pilot received SIGUSR1") for i in ids}
    assert not processes_with("77.242") and nodes_emptied(cluster)
    if node_mpi.name == "openmpi":
        # Open MPI 5's mpirun passes TERM on and ends every rank within about half a second (measured, also with
        # a program that catches TERM): rank 0 cannot wait for the last answer, which stays in its journal
        return
    assert "BAD TERMINATION" not in output and returncode == 128 + signal.SIGTERM, (returncode, output[-3000:])
    updates = final_updates(panda_server)  # each answered, once, from the job's node
    assert sorted(updates) == ids and all(len(u) == 1 for u in updates.values()), updates
    assert {u[0]["node"] for u in updates.values()} == set(cluster.hostnames)
    summary = json.loads((cluster.shared / "work" / "summary.json").read_text())
    assert summary["pilot"]["owed"] == 0 and summary["pilot"]["signal"] == "SIGUSR1", summary["pilot"]
    assert {job["delivery"] for job in summary["jobs"]} == {"acknowledged"}
