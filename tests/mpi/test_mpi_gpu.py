"""What each payload really gets on a 4-GPU node, under ``mpiexec -n 4`` of the pip MPICH wheel.

There is no GPU here: the node is the 4 x A100 root of tests/fixtures/gpu (the NVIDIA driver's /proc files,
built from a captured ``nvidia-smi -q`` of such a node), injected with HPCPILOT_GPUINV_ROOT, sources limited to
sysfs so a machine with real GPUs runs the same test.  Everything else is the real pilot: Hydra sets
MPI_LOCALRANKID, rank 0 is the controller and its three workers share the node's GPUs, each payload writes
the GPU variables it was started with into an output file, and the test reads the staged-out files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import h5py
import pytest

from tests.pilotrun import MPICH, Mpi, make_job, run_pilot

pytestmark = pytest.mark.mpi

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "roots" / "nvidia-a100x4"
SHOWN = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
GPU_VARS = (*SHOWN, "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ZE_FLAT_DEVICE_HIERARCHY")


def gpu_node_mpi(python: str = MPICH.python) -> Mpi:
    """MPICH with the captured node injected, and none of the test machine's own GPU variables."""
    for name in GPU_VARS:
        os.environ.pop(name, None)  # the pilot must start from a node where no launcher bound anything
    return dataclasses.replace(MPICH, python=python, env=(("HPCPILOT_GPUINV_ROOT", str(ROOT)),
                                                          ("HPCPILOT_GPUINV_SOURCES", "sysfs")))


def env_job(panda_id: int) -> dict[str, object]:
    """A payload that prints its GPU variables ("unset" where it has none) into its output file."""
    lines = " ".join(f"{name}=${{{name}-unset}}" for name in SHOWN)
    return make_job(panda_id, f"sleep 1; printf '%s\\n' {lines} > gpu.{panda_id}", [f"gpu.{panda_id}"])


def payload_env(tmp: Path, panda_id: int) -> dict[str, str]:
    text = (tmp / "outputs" / f"gpu.{panda_id}").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def run(tmp: Path, settings: list[str], mpi: Mpi | None = None) -> dict[int, dict[str, str]]:
    """Six jobs on the three workers; the GPU variables each job's payload had, by the rank that ran it."""
    jobs = [env_job(500 + i) for i in range(6)]
    result = run_pilot(tmp, jobs, settings=settings, ranks=4, mpi=mpi or gpu_node_mpi())
    assert result.returncode == 0, result.stderr[-3000:]
    assert {j["state"] for j in result.jobs.values()} == {"finished"}, result.jobs
    by_rank: dict[int, dict[str, str]] = {}
    for panda_id, job in result.jobs.items():
        env = payload_env(tmp, panda_id)
        assert by_rank.setdefault(job["rank"], env) == env, "one rank's payloads got different GPUs"
    assert len(by_rank) >= 2, by_rank  # at least two workers ran jobs: the split is seen, not assumed
    return by_rank


def test_each_payload_gets_its_ranks_share_and_no_two_ranks_share_a_gpu(tmp_path: Path) -> None:
    by_rank = run(tmp_path, [])
    expected = {1: "0,1", 2: "2", 3: "3"}  # rank 0's node: its 3 workers split 4 GPUs, the first takes 2
    for rank, env in by_rank.items():
        assert env["CUDA_VISIBLE_DEVICES"] == expected[rank], (rank, env)
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert env["ROCR_VISIBLE_DEVICES"] == "unset" and env["ZE_AFFINITY_MASK"] == "unset"
    used = [gpu for env in by_rank.values() for gpu in env["CUDA_VISIBLE_DEVICES"].split(",")]
    assert len(used) == len(set(used))
    # What a person checks afterwards says the same: every worker's node info in run.h5 ...
    with h5py.File(tmp_path / "work" / "run.h5", "r") as record:
        for rank in (1, 2, 3):
            node = record[f"ranks/{rank}/node"].attrs
            share, gpus = json.loads(node["rank_gpus"]), json.loads(node["gpus"])
            assert (share["env"]["CUDA_VISIBLE_DEVICES"], share["how"]) == (expected[rank], "auto")
            assert (gpus["source"], len(gpus["gpus"])) == ("sysfs", 4)
    # ... and the scripts that re-run each job by hand
    scripts = [(rank, setup) for rank in by_rank
               for setup in (tmp_path / "work" / "jobs" / f"rank{rank}").glob("PandaJob_*/job_setup.sh")]
    assert len(scripts) == 6
    for rank, setup in scripts:
        assert f"export CUDA_VISIBLE_DEVICES={expected[rank]}\n" in setup.read_text()


def test_two_gpus_per_rank_leave_the_third_worker_a_cpu_rank_blind_to_them(tmp_path: Path) -> None:
    by_rank = run(tmp_path, ["gpu.per_rank=2"])
    expected = {1: "0,1", 2: "2,3", 3: ""}
    for rank, env in by_rank.items():
        assert env["CUDA_VISIBLE_DEVICES"] == expected[rank], (rank, env)


def test_bind_none_leaves_every_gpu_visible_to_every_payload(tmp_path: Path) -> None:
    by_rank = run(tmp_path, ["gpu.bind=none"])
    assert {env["CUDA_VISIBLE_DEVICES"] for env in by_rank.values()} == {"unset"}


def test_without_the_launchers_local_rank_the_ranks_split_by_shared_memory_and_bind_the_same(tmp_path: Path) -> None:
    """Hydra's MPI_LOCALRANKID/MPI_LOCALNRANKS taken away (as a launcher that sets none would): every rank, rank 0
    included, joins the shared-memory split, and the shares are the same as with the variables."""
    python = tmp_path / "python-without-local-rank"
    python.write_text(f"#!/bin/sh\nexec env -u MPI_LOCALRANKID -u MPI_LOCALNRANKS {MPICH.python} \"$@\"\n")
    python.chmod(0o755)
    by_rank = run(tmp_path, [], gpu_node_mpi(str(python)))
    for rank, env in by_rank.items():
        assert env["CUDA_VISIBLE_DEVICES"] == {1: "0,1", 2: "2", 3: "3"}[rank], (rank, env)
