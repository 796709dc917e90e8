"""The whole GPU path through the real pilot against ``hpcpilot serve`` 1.0, under ``mpiexec -n 4`` (issue 25).

There is no GPU here.  The node is the captured 4 x A100 root of tests/fixtures/gpu (read by the GPU inventory,
sources limited to sysfs), and NVML is the STAND-IN of tests/fixtures/fakenvml, put on the ranks' import path,
in which a payload "allocates GPU memory" by naming its pid and its GPU.  Everything else is real: the
inventory and binding of each rank, its Ready, rank 0's GPU map and fetches, the server's matching, the
payloads, their monitoring, the final updates and run.h5.

Needs the GPU inventory (hpcpilot/gpu/inventory.py and its captured node roots); skipped, saying so, where
they are absent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from hpcpilot_serve.state import read_requests
from tests.pilotrun import BIN, LAPTOP, MPICH, make_job, wait_for

pytestmark = pytest.mark.mpi

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS / "fixtures" / "gpu" / "roots" / "nvidia-a100x4"
FAKE_NVML = TESTS / "fixtures" / "fakenvml"
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK",
            "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ZE_FLAT_DEVICE_HIERARCHY")
MISSING = None if importlib.util.find_spec("hpcpilot.gpu.inventory") and ROOT.is_dir() else \
    "needs the GPU inventory and its captured node roots (hpcpilot/gpu/inventory.py, tests/fixtures/gpu)"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _jobs(pids: Path) -> dict[str, dict]:
    """Five jobs: each payload holds 1 GB on its first GPU; one job's task asks for AMD (never handed out)."""
    hold = f'echo "${{CUDA_VISIBLE_DEVICES%%,*}} 1024" > {pids}/$$; sleep 1.5'
    jobs = {str(900 + i): make_job(900 + i, hold) for i in range(4)}
    # matches the node's A100s (the model is a regular expression matched from the start of the model's name)
    jobs["900"]["taskArchitecture"] = "x86_64-el9-gcc13-opt&nvidia:model=.*A100.*"
    jobs["904"] = {**make_job(904, "true"), "taskArchitecture": "x86_64-el9-gcc13-opt&amd"}
    return jobs


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_gpu_maps_targets_monitoring_and_job_metrics_through_the_pilot(tmp_path: Path) -> None:
    from hpcpilot.gpu.inventory import take_inventory

    env = {"HPCPILOT_GPUINV_ROOT": str(ROOT), "HPCPILOT_GPUINV_SOURCES": "sysfs"}
    inventory = take_inventory({**os.environ, **env}, announce=False)
    pids = tmp_path / "gpu-pids"
    pids.mkdir()
    (tmp_path / "nvml.json").write_text(json.dumps({"pids_dir": str(pids), "gpus": [
        {"uuid": g.uuid, "name": g.model, "total_mb": 81920, "util": 50, "mem_util": 20, "sm_clock": 1410}
        for g in inventory.gpus]}))
    (tmp_path / "jobs.json").write_text(json.dumps(_jobs(pids)))
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "hpcpilot", "serve", "--port", str(port), "--state",
                               str(tmp_path / "state.db"), "--jobs", str(tmp_path / "jobs.json"), "--release", "1.0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in GPU_VARS:
        os.environ.pop(name, None)  # the pilot starts from a node where no launcher bound anything
    mpi = dataclasses.replace(MPICH, env=(*env.items(), ("FAKE_NVML_STATE", str(tmp_path / "nvml.json")),
                                          ("PYTHONPATH", os.pathsep.join([str(FAKE_NVML),
                                                                          os.environ.get("PYTHONPATH", "")]))))
    try:
        assert wait_for(lambda: _listening(port), timeout=30)
        pilot = subprocess.run(
            [str(BIN / "mpiexec"), "-n", "4", sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP),
             "--server", f"http://127.0.0.1:{port}", "--queue", "GPUQ", "--workdir", str(tmp_path / "work"),
             "--set", "panda.api=v1", "--set", f"stage.output_dir={tmp_path / 'out'}",
             "--set", "monitor.report_interval=0.3"],
            cwd=tmp_path, capture_output=True, text=True, timeout=180, env=mpi.environ())
        assert pilot.returncode == 0, pilot.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    dump = json.loads(subprocess.run([sys.executable, "-m", "hpcpilot", "serve", "--dump", str(tmp_path / "state.db")],
                                     capture_output=True, text=True, check=True).stdout)
    # the GPU map: once for the node, its one model with its count, beside the worker-node map
    assert [(g["model"], g["count"], g["updates"]) for g in dump["worker_node_gpus"]] == \
        [("NVIDIA A100-SXM4-80GB", 4, 1)], dump["worker_node_gpus"]
    assert dump["worker_node_gpus"][0]["host_name"] == dump["worker_nodes"][0]["host_name"]
    # the fetches carried the ranks' GPUs; the AMD task's job was never handed out
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        targets = [json.loads(r["fields"]["target_architecture"]) for r in read_requests(db, "getJob")]
    finally:
        db.close()
    assert targets and all(t["gpus"] and {g["model"] for g in t["gpus"]} == {"NVIDIA A100-SXM4-80GB"}
                           for t in targets), targets
    state = {job["PandaID"]: job for job in dump["jobs"]}
    assert state[904]["status"] == "activated"
    assert all(state[i]["status"] == "finished" for i in range(900, 904)), state
    # each payload's GPU memory, measured by its rank through (stand-in) NVML, is in run.h5
    with h5py.File(tmp_path / "work" / "run.h5", "r") as record:
        held = {int(job): max(record[f"ranks/{rank}/jobs/{job}/gpu_samples"]["gpufbmem"])
                for rank in record["ranks"] for job in record[f"ranks/{rank}"].get("jobs", {})
                if "gpu_samples" in record[f"ranks/{rank}/jobs/{job}"]}
        n_gpus = {int(rank): len(json.loads(record[f"ranks/{rank}/node"].attrs["rank_gpus"])["devices"])
                  for rank in record["ranks"] if "node" in record[f"ranks/{rank}"]}
    assert held == {panda_id: 1024 * 1024 for panda_id in range(900, 904)}, held
    # every finished job names its rank's GPUs in jobMetrics, as pilot3 does
    ran_on = {int(job["jobId"]): job["rank"] for job in json.loads((tmp_path / "work" / "summary.json").read_text())
              ["jobs"]}
    for panda_id in range(900, 904):
        metrics = dict(kv.split("=", 1) for kv in state[panda_id]["jobMetrics"].split())
        assert metrics["GPU_name"] == "NVIDIA_A100-SXM4-80GB", metrics
        assert int(metrics["nGPU"]) == n_gpus[ran_on[panda_id]] >= 1, (metrics, n_gpus)
