"""What the real panda-server 1.0.4 and 0.8.1 make of the pilot's GPU reports (issue 25, part 3).

No GPU here: the ranks' node info is written as their inventory and binding would write it.  The pilot's own
``PandaSource`` sends the maps and leases a job the kit submitted; the assertions read the server's database
(``worker_node_gpus``, ``worker_node``) and the server's own api_pilot log (each acquire_jobs logs the
``target_architecture`` it took; 0.8.1 logs the argument error a field it does not know would cause).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from hpcpilot.config import replace
from hpcpilot.gpu.model import NODE_GPUS_KEY, RANK_GPUS_KEY, Gpu, NodeGpus, RankGpus
from hpcpilot.panda.gpumap import target_architecture
from hpcpilot.panda.source import PandaSource
from tests.fixtures.panda.panda_helpers import NODE, panda_config
from tests.realpanda.conftest import RealPanda

pytestmark = pytest.mark.realpanda

A100 = Gpu("NVIDIA", 0, "NVIDIA A100-SXM4-40GB", 40960, architecture="Ampere", driver_version="575.51.03",
           framework="CUDA", framework_version="12.9")
H100 = Gpu("NVIDIA", 0, "NVIDIA H100 80GB HBM3", 81559, architecture="Hopper", driver_version="575.51.03",
           framework="CUDA", framework_version="12.9")


def _node(name: str, gpus: list[Gpu]) -> dict:
    """A rank's node info with its inventory and binding (every GPU of the node its own)."""
    indexed = tuple(Gpu(**{**g.__dict__, "index": i}) for i, g in enumerate(gpus))
    return {**NODE, "node": name, "cores": 64, "cpu_model": "AMD EPYC 7763",
            NODE_GPUS_KEY: NodeGpus(indexed, "nvml").to_dict(),
            RANK_GPUS_KEY: RankGpus(tuple(str(g.index) for g in indexed), {}, "auto").to_dict()}


def _api_log(server: RealPanda) -> Path:
    return server.event_log().with_name("panda-api_pilot.log")


def _log_since(server: RealPanda, offset: int) -> str:
    return _api_log(server).read_bytes()[offset:].decode(errors="replace")


def _source(server: RealPanda, workdir: Path) -> PandaSource:
    config = panda_config(server.url, "v1", call_deadline=60.0, read_timeout=30.0, connect_timeout=5.0)
    config = replace(config, "site", queue=server.queue, name="GPUTEST_SITE", resource_type="")
    return PandaSource(config, workdir, {**NODE, "node": socket.gethostname()}, fetch_deadline=30.0,
                       close_deadline=10.0)


def _until(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_gpu_map_and_target_architecture(real_panda: RealPanda, tmp_path: Path) -> None:
    tag = f"gpu{os.getpid()}{int(time.time()) % 100000}"
    hosts = [f"{tag}a", f"{tag}b"]
    offset = _api_log(real_panda).stat().st_size if _api_log(real_panda).is_file() else 0
    [panda_id] = real_panda.submit("--cmd", "true", "--no-output")["PandaIDs"]
    source = _source(real_panda, tmp_path / "work")
    try:
        nodes = [_node(hosts[0], [A100] * 4), _node(hosts[1], [A100, A100, H100])]
        for node in nodes + nodes:  # every rank of a node says Ready: the maps go once per node
            source.report_worker_node(node)
        outcome = source.fetch_jobs(1, target_architecture(nodes[0]))
        leased = [int(job["PandaID"]) for job in outcome.leased]
        if real_panda.version == "1.0.4":
            assert _until(lambda: len(real_panda.sql(
                f"select 1 from worker_node where host_name in ('{hosts[0]}', '{hosts[1]}')")) == 2)
            assert _until(lambda: len(real_panda.sql(
                f"select 1 from worker_node_gpus where host_name like '{tag}%'")) == 3)
        time.sleep(2.0)  # a repeated map would arrive within this
    finally:
        source.close()
    assert leased == [int(panda_id)], outcome.error
    log = _log_since(real_panda, offset)
    gpu_rows = real_panda.sql("select host_name, vendor, model, count, vram, architecture, framework, "
                              "framework_version, driver_version from worker_node_gpus "
                              f"where host_name like '{tag}%' order by host_name, model")
    assert "Type error" not in log and "Argument error" not in log  # every field known, of its declared type
    if real_panda.version == "0.8.1":
        assert "update_worker_node site=GPUTEST_SITE" in log  # the worker-node map is sent (0.8.1 stores nothing)
        assert "update_worker_node_gpu" not in log and gpu_rows == []
        return
    assert gpu_rows == [
        [hosts[0], "NVIDIA", A100.model, "4", "40960", "Ampere", "CUDA", "12.9", "575.51.03"],
        [hosts[1], "NVIDIA", A100.model, "2", "40960", "Ampere", "CUDA", "12.9", "575.51.03"],
        [hosts[1], "NVIDIA", H100.model, "1", "81559", "Hopper", "CUDA", "12.9", "575.51.03"]]
    starts = [line for line in log.splitlines() if "update_worker_node_gpu" in line and line.endswith("Start")]
    assert len(starts) == 3, starts  # once per node and GPU model, never again
    taken = [line for line in log.splitlines() if "target_architecture={'gpus': [{" in line]
    assert taken and "'model': 'NVIDIA A100-SXM4-40GB'" in taken[0] and "'vram': 40960" in taken[0]


def test_the_server_hands_a_gpu_task_s_job_only_to_a_target_that_meets_it(real_panda: RealPanda,
                                                                         tmp_path: Path) -> None:
    """The real server's matching of a task's architecture against the pilot's ``target_architecture`` -- the
    rules ``hpcpilot serve`` copies.  The task row is test setup of the server's state (JEDI makes it in
    production); 0.8.1 has no matching, and the pilot sends it no target."""
    task = 900000 + os.getpid() % 90000
    real_panda.sql(f"delete from jedi_tasks where jeditaskid={task}")
    real_panda.sql("insert into jedi_tasks (jeditaskid, status, username, creationdate, modificationtime, "
                   f"architecture) values ({task}, 'running', 'hpcpilot', now(), now(), "
                   "'x86_64-el9-gcc13-opt&nvidia:vram>=80000')")
    [gpu_job] = real_panda.submit("--cmd", "true", "--no-output", "--attr", f"jediTaskID={task}")["PandaIDs"]
    [cpu_job] = real_panda.submit("--cmd", "true", "--no-output")["PandaIDs"]
    source = _source(real_panda, tmp_path / "work")
    try:
        cpu_rank = source.fetch_jobs(5, target_architecture(_node("cpu01", [])))
        a100_rank = source.fetch_jobs(5, target_architecture(_node("gpu01", [A100])))
        h100_rank = source.fetch_jobs(5, target_architecture(_node("gpu02", [H100])))
    finally:
        source.close()
        real_panda.sql(f"delete from jedi_tasks where jeditaskid={task}")
    leased = [[int(job["PandaID"]) for job in outcome.leased] for outcome in (cpu_rank, a100_rank, h100_rank)]
    if real_panda.version == "0.8.1":
        assert leased[0] == [int(gpu_job), int(cpu_job)]  # no matching: the CPU rank takes the GPU job too
        return
    assert leased == [[int(cpu_job)], [], [int(gpu_job)]]  # 40 GB is not >= 80000 MB; the H100's 81559 is
