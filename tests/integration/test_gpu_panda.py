"""What PanDA receives of the ranks' GPUs (issue 25, part 3), through ``PandaSource`` against ``hpcpilot serve``.

There is no GPU on the test machines: each rank's node info is written here as the rank's inventory and binding
would write it (``hpcpilot.gpu.model``: NodeGpus under "gpus", RankGpus under "rank_gpus").  Everything else is
real: the pilot's source and client, HTTP, and the test server's state.  The server's answers are those of
panda-server 1.0.4 and 0.8.1 read in their code and checked against them (tests/realpanda): 1.0 upserts the GPU
map per (site, host, vendor, model) and matches tasks to ``target_architecture``; 0.8.1 refuses that field, and
its update_worker_node_gpu stores nothing, so the pilot sends it neither.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.gpu.model import NODE_GPUS_KEY, RANK_GPUS_KEY, Gpu, NodeGpus, RankGpus
from hpcpilot.panda.gpumap import target_architecture
from hpcpilot.panda.source import PandaSource
from hpcpilot_serve.hardware import TASK_ARCHITECTURE_KEY, gpu_spec, matches
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import NODE, job_definitions, panda_config

A100 = Gpu("NVIDIA", 0, "NVIDIA A100-SXM4-40GB", 40960, architecture="Ampere", driver_version="575.51.03",
           framework="CUDA", framework_version="12.9")
MI250X = Gpu("AMD", 0, "AMD Instinct MI250X", 65536, architecture="CDNA2", driver_version="6.8.5",
             framework="ROCm", framework_version="6.2.4")


def _node(name: str, gpus: list[Gpu], devices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A rank's node info with its node's inventory and its share, as the rank sends it in Ready."""
    indexed = [Gpu(**{**g.__dict__, "index": i}) for i, g in enumerate(gpus)]
    share = RankGpus(tuple(str(i) for i in range(len(gpus))) if devices is None else devices, {},
                     "auto" if gpus else "cpu")
    return {**NODE, "node": name, "cores": 64, "cpu_model": "AMD EPYC 7763",
            NODE_GPUS_KEY: NodeGpus(tuple(indexed), "nvml" if gpus else "none").to_dict(),
            RANK_GPUS_KEY: share.to_dict()}


def _wait(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(params=["1.0", "0.8"])
def server(tmp_path, request):
    srv = PandaTestServer(tmp_path / "state.sqlite", release=request.param).start()
    yield srv
    srv.close()


def _source(server: PandaTestServer, workdir: Path) -> PandaSource:
    return PandaSource(panda_config(server.url, "v1"), workdir, NODE, fetch_deadline=2.0, close_deadline=5.0)


def test_the_gpu_map_goes_once_per_node_and_model_to_1_0_and_never_to_0_8(server, tmp_path):
    source = _source(server, tmp_path / "w")
    nodes = [_node("gpu01", [A100] * 4), _node("gpu02", [A100, A100, MI250X]), _node("cpu01", [])]
    try:
        for node in nodes + nodes:  # a second Ready from the same node sends nothing again
            source.report_worker_node(node)
        assert _wait(lambda: len(server.requests("update_worker_node")) == 3)
        if server.release == "1.0":
            assert _wait(lambda: len(server.requests("update_worker_node_gpu")) == 3)
    finally:
        source.close()
    dumped = server.dump()
    sent = server.requests("update_worker_node_gpu")
    if server.release == "0.8":  # 0.8.1 stores neither map (its row look-up is missing): no GPU map is sent
        assert sent == [] and dumped["worker_node_gpus"] == [] and dumped["worker_nodes"] == []
        return
    assert sorted((n["host_name"], n["updates"]) for n in dumped["worker_nodes"]) == \
        [("cpu01", 1), ("gpu01", 1), ("gpu02", 1)]
    assert all(isinstance(n["clock_speed"], float) for n in dumped["worker_nodes"])  # 1.0.4 refuses an int
    rows = {(g["host_name"], g["model"]): g for g in dumped["worker_node_gpus"]}
    assert sorted(rows) == [("gpu01", A100.model), ("gpu02", MI250X.model), ("gpu02", A100.model)]
    assert all(g["updates"] == 1 for g in rows.values())
    assert rows["gpu01", A100.model] == {
        "site": "generic", "host_name": "gpu01", "vendor": "NVIDIA", "model": A100.model, "count": 4,
        "vram": 40960, "architecture": "Ampere", "framework": "CUDA", "framework_version": "12.9",
        "driver_version": "575.51.03", "updates": 1}
    assert rows["gpu02", A100.model]["count"] == 2 and rows["gpu02", MI250X.model]["count"] == 1
    assert rows["gpu02", MI250X.model]["framework"] == "ROCm"


GPU_TASK = "x86_64-el9-gcc13-opt&nvidia:vram>=40000"
BIG_GPU_TASK = "x86_64-el9-gcc13-opt&nvidia:vram>=80000"


def _load(server: PandaTestServer) -> None:
    jobs = job_definitions(4, start_id=500)
    jobs[0][TASK_ARCHITECTURE_KEY] = GPU_TASK
    jobs[1][TASK_ARCHITECTURE_KEY] = BIG_GPU_TASK
    jobs[2][TASK_ARCHITECTURE_KEY] = "x86_64-el9-gcc13-opt"  # a CPU task
    server.load_jobs(jobs)


def _fetched(source: PandaSource, node: dict[str, Any]) -> list[int]:
    """What rank 0 leases for ranks like the one of ``node``: the fetch carries their architecture, as the
    scheduler's Fetch does (``target_architecture`` of the rank's node info)."""
    outcome = source.fetch_jobs(10, target_architecture(node))
    assert outcome.status in (0, 20), outcome.error
    assert not any(TASK_ARCHITECTURE_KEY in job for job in outcome.leased)  # the task's, never in the job
    return sorted(int(job["PandaID"]) for job in outcome.leased)


def test_acquire_jobs_carries_the_ranks_gpus_to_1_0_and_nothing_new_to_0_8(server, tmp_path):
    _load(server)
    source = _source(server, tmp_path / "w")
    try:
        leased = _fetched(source, _node("gpu01", [A100] * 2, devices=("1",)))
    finally:
        source.close()
    asked = server.requests("getJob")
    assert len(asked) == 1
    if server.release == "0.8":
        assert "target_architecture" not in asked[0]["fields"]
        assert leased == [500, 501, 502, 503]  # no matching on 0.8.1: the A100 rank is handed the 80 GB job
        return
    target = json.loads(asked[0]["fields"]["target_architecture"])
    assert target == {"gpus": [{"vendor": "NVIDIA", "model": A100.model, "vram": 40960, "architecture": "Ampere",
                                "framework_version": "12.9", "driver_version": "575.51.03"}]}
    assert leased == [500, 502, 503]  # the task asking for 80 GB of GPU memory stays with the server


def test_a_cpu_rank_on_1_0_is_handed_no_gpu_job(tmp_path):
    server = PandaTestServer(tmp_path / "state.sqlite", release="1.0").start()
    _load(server)
    source = _source(server, tmp_path / "w")
    try:
        assert _fetched(source, _node("cpu01", [])) == [502, 503]
        assert json.loads(server.requests("getJob")[0]["fields"]["target_architecture"]) == {"gpus": []}
    finally:
        source.close()
        server.close()


def test_a_rank_without_an_inventory_asks_without_a_target(tmp_path):
    """No inventory in the node info (nothing known of its GPUs): nothing is sent, the server matches nothing,
    as for pilot3."""
    server = PandaTestServer(tmp_path / "state.sqlite", release="1.0").start()
    _load(server)
    source = _source(server, tmp_path / "w")
    try:
        assert _fetched(source, dict(NODE)) == [500, 501, 502, 503]
        assert "target_architecture" not in server.requests("getJob")[0]["fields"]
    finally:
        source.close()
        server.close()


@pytest.mark.parametrize(("architecture", "gpus", "fits"), [
    ("el9&nvidia", [MI250X.__dict__, A100.__dict__], True),  # vendor: any GPU
    ("el9&amd", [A100.__dict__], False),
    ("el9&nvidia-A100.*", [{"vendor": "NVIDIA", "model": "A100 80GB"}], True),  # model: a match from the start
    ("el9&nvidia:model!=.*A100.*", [{"vendor": "NVIDIA", "model": "NVIDIA A100-SXM4-40GB"}], False),
    ("el9&nvidia:vram>=40000", [{"vendor": "NVIDIA", "vram": 40960}, {"vendor": "NVIDIA", "vram": 16384}], False),
    ("el9&nvidia:cuda>=12.0", [{"vendor": "NVIDIA", "framework_version": "12.9"}], True),
    ("el9&nvidia:cuda>=12.0", [{"vendor": "NVIDIA", "framework_version": "11.8"}], False),
    ("el9&nvidia:uarch=Hopper", [{"vendor": "NVIDIA", "architecture": "Ampere"}], False),
    ('{"gpu_spec": {"vendor": "nvidia", "driver_version": ">=575"}}', [{"vendor": "NVIDIA",
                                                                        "driver_version": "575.51.03"}], True),
    ("el9&nvidia", [], False),  # a GPU task never goes to a target without GPUs
])
def test_the_servers_gpu_matching_semantics(architecture, gpus, fits):
    spec = gpu_spec(architecture)
    assert spec is not None and matches(spec, gpus) is fits


def test_a_task_without_a_gpu_spec_has_none():
    assert gpu_spec("x86_64-el9-gcc13-opt") is None and gpu_spec(None) is None


def test_a_server_down_at_the_first_gpu_fetch_fails_that_fetch_and_is_asked_again(tmp_path):
    """Whether the server takes target_architecture is asked of the server itself (a legacy look-up, 403 on
    1.0); a server that does not answer fails the fetch as a down server fails any fetch, and is asked again."""
    server = PandaTestServer(tmp_path / "state.sqlite", release="1.0").start()
    _load(server)
    server.stop()
    source = _source(server, tmp_path / "w")
    try:
        down = source.fetch_jobs(10, target_architecture(_node("cpu01", [])))
        assert down.unavailable and "getStatus" in down.error
        server.start()
        assert _fetched(source, _node("cpu01", [])) == [502, 503]
        assert _fetched(source, _node("cpu01", [])) == []  # known now: asked once
        assert [r["http_status"] for r in server.requests("getStatus")] == [403]
    finally:
        source.close()
        server.close()


def test_the_legacy_api_never_carries_a_target(tmp_path):
    server = PandaTestServer(tmp_path / "state.sqlite", release="0.8").start()
    _load(server)
    source = PandaSource(panda_config(server.url, "legacy"), tmp_path / "w", NODE, fetch_deadline=2.0,
                         close_deadline=5.0)
    try:
        assert len(source.fetch_jobs(10, target_architecture(_node("cpu01", []))).leased) == 4
        [asked] = server.requests("getJob")
        assert asked["api"] == "legacy" and "target_architecture" not in asked["fields"]
        assert server.requests("getStatus") == []  # nothing asked either
    finally:
        source.close()
        server.close()
