"""GPU binding as a table: ranks per node x GPUs per node, Intel tiles, a launcher-bound task, bind = none,
share = true; and the node-local rank from each launcher's variables.  What a payload really gets under
``mpiexec -n 4`` is tests/mpi/test_mpi_gpu.py."""

from __future__ import annotations

from collections import Counter
from itertools import product

import pytest

from hpcpilot.config.schema import GpuConfig
from hpcpilot.gpu.binding import bind, share_of, slot_of
from hpcpilot.gpu.local import LocalRank, from_environment
from hpcpilot.gpu.model import Gpu, NodeGpus, RankGpus

AUTO = GpuConfig()


def node(vendor: str, count: int, tiles: int = 1) -> NodeGpus:
    return NodeGpus(tuple(Gpu(vendor, i, f"{vendor} GPU", tiles=tiles, pci_bus=f"0000:{i + 16:02x}:00.0")
                          for i in range(count)), "test")


def shares(gpus: NodeGpus, ranks: int, config: GpuConfig = AUTO, environ: dict[str, str] | None = None
           ) -> list[RankGpus]:
    return [bind(gpus, slot, ranks, config, environ or {}) for slot in range(ranks)]


VENDOR_VAR = {"NVIDIA": "CUDA_VISIBLE_DEVICES", "AMD": "ROCR_VISIBLE_DEVICES"}


@pytest.mark.parametrize(("vendor", "ranks", "gpus"), list(product(["NVIDIA", "AMD"], [1, 2, 4, 8], [0, 1, 4, 8])))
def test_every_rank_gets_its_share_and_no_two_ranks_share_a_gpu(vendor: str, ranks: int, gpus: int) -> None:
    got = shares(node(vendor, gpus), ranks)
    var = VENDOR_VAR[vendor]
    if gpus == 0:  # a CPU node: nothing set, nothing to hide
        assert all(r == RankGpus() for r in got)
        return
    seen = Counter(d for r in got for d in r.devices)
    assert all(n == 1 for n in seen.values()), seen  # no GPU twice
    assert sorted(seen, key=int) == [str(i) for i in range(gpus)]  # every GPU used
    for slot, rank in enumerate(got):
        assert rank.env[var] == ",".join(rank.devices)
        if gpus >= ranks:  # divided evenly, the first ranks one more where it does not divide
            assert len(rank.devices) == gpus // ranks + (1 if slot < gpus % ranks else 0)
            assert rank.how == "auto"
        elif slot < gpus:
            assert (rank.devices, rank.how) == ((str(slot),), "auto")
        else:  # a CPU rank on a GPU node: blind to the GPUs
            assert (rank.devices, rank.env[var], rank.how) == ((), "", "cpu")
    if vendor == "NVIDIA":
        assert all(r.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for r in got)


@pytest.mark.parametrize(("ranks", "per_rank", "expected"), [
    (4, 1, ["0", "1", "2", "3"]),
    (2, 0, ["0,1", "2,3"]),
    (3, 0, ["0,1", "2", "3"]),
    (4, 2, ["0,1", "2,3", "", ""]),
    (8, 0, ["0", "1", "2", "3", "", "", "", ""]),
])
def test_four_a100s_split_by_rank(ranks: int, per_rank: int, expected: list[str]) -> None:
    got = shares(node("NVIDIA", 4), ranks, GpuConfig(per_rank=per_rank))
    assert [r.env["CUDA_VISIBLE_DEVICES"] for r in got] == expected


def test_share_true_wraps_ranks_round_the_gpus_and_says_so() -> None:
    got = shares(node("NVIDIA", 4), 8, GpuConfig(share=True))
    assert [r.env["CUDA_VISIBLE_DEVICES"] for r in got] == ["0", "1", "2", "3", "0", "1", "2", "3"]
    assert {r.how for r in got} == {"share"}
    got = shares(node("AMD", 4), 4, GpuConfig(per_rank=2, share=True))
    assert [r.env["ROCR_VISIBLE_DEVICES"] for r in got] == ["0,1", "2,3", "0,1", "2,3"]


def test_share_true_with_enough_gpus_shares_nothing() -> None:
    got = shares(node("NVIDIA", 8), 4, GpuConfig(share=True))
    assert [(r.env["CUDA_VISIBLE_DEVICES"], r.how) for r in got] == [
        ("0,1", "auto"), ("2,3", "auto"), ("4,5", "auto"), ("6,7", "auto")]


@pytest.mark.parametrize(("ranks", "per_rank", "expected"), [
    (12, 0, ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1", "5.0", "5.1"]),
    (6, 0, ["0.0,0.1", "1.0,1.1", "2.0,2.1", "3.0,3.1", "4.0,4.1", "5.0,5.1"]),
    (4, 3, ["0.0,0.1,1.0", "1.1,2.0,2.1", "3.0,3.1,4.0", "4.1,5.0,5.1"]),
    (13, 0, ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1", "5.0", "5.1", "6"]),
])
def test_aurora_node_six_cards_of_two_tiles_binds_card_dot_tile(ranks: int, per_rank: int,
                                                                 expected: list[str]) -> None:
    got = shares(node("Intel", 6, tiles=2), ranks, GpuConfig(per_rank=per_rank))
    assert [r.env["ZE_AFFINITY_MASK"] for r in got] == expected  # the 13th: a card no node has, so no device
    assert {r.env["ZE_FLAT_DEVICE_HIERARCHY"] for r in got} == {"COMPOSITE"}


def test_intel_flat_hierarchy_asked_for_gets_flat_tile_indices() -> None:
    got = shares(node("Intel", 6, tiles=2), 12, environ={"ZE_FLAT_DEVICE_HIERARCHY": "FLAT"})
    assert [r.env["ZE_AFFINITY_MASK"] for r in got] == [str(i) for i in range(12)]
    assert all("ZE_FLAT_DEVICE_HIERARCHY" not in r.env for r in got)  # FLAT stays as the rank had it


@pytest.mark.parametrize("marker", [{"SLURM_GPUS_PER_TASK": "1"}, {"SLURM_GPU_BIND": "per_task:1"},
                                    {"SLURM_TRES_PER_TASK": "cpu=8,gres/gpu:1"}])
def test_a_task_slurm_bound_keeps_slurms_binding(marker: dict[str, str]) -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "2", "SLURM_STEP_GPUS": "0,1,2,3", **marker}
    got = bind(node("NVIDIA", 4), 0, 4, AUTO, environ)
    assert (got.devices, got.env, got.how) == (("2",), {"CUDA_VISIBLE_DEVICES": "2"}, "slurm")


def test_bind_slurm_keeps_whatever_the_launcher_set() -> None:
    got = bind(node("AMD", 8), 3, 8, GpuConfig(bind="slurm"), {"ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert (got.devices, got.how) == (tuple("01234567"), "slurm")


def test_a_step_wide_set_from_the_launcher_is_what_the_ranks_split() -> None:
    """srun --gpus=4 without per-task binding: every task sees the same four; they split those four."""
    environ = {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b,GPU-c,GPU-d", "SLURM_STEP_GPUS": "4,5,6,7"}
    got = shares(node("NVIDIA", 8), 2, environ=environ)
    assert [r.env["CUDA_VISIBLE_DEVICES"] for r in got] == ["GPU-a,GPU-b", "GPU-c,GPU-d"]


def test_variables_that_index_what_rocr_leaves_are_renumbered() -> None:
    environ = {"ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "HIP_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
               "GPU_DEVICE_ORDINAL": "0,1,2,3,4,5,6,7"}
    got = shares(node("AMD", 8), 4, environ=environ)
    assert [r.env for r in got][1] == {"ROCR_VISIBLE_DEVICES": "2,3", "HIP_VISIBLE_DEVICES": "0,1",
                                       "GPU_DEVICE_ORDINAL": "0,1"}


def test_bind_none_sets_nothing_and_every_rank_sees_every_gpu() -> None:
    got = shares(node("NVIDIA", 4), 2, GpuConfig(bind="none"))
    assert [(r.devices, r.env, r.how) for r in got] == [(("0", "1", "2", "3"), {}, "none")] * 2


def test_share_of_is_total_for_every_small_shape() -> None:
    for units, slots, per_rank in product(range(9), range(1, 9), range(4)):
        picked = [share_of(units, s, slots, per_rank, False)[0] for s in range(slots)]
        flat = [u for p in picked for u in p]
        assert len(flat) == len(set(flat)) and all(0 <= u < units for u in flat), (units, slots, per_rank)


# --- the rank's slot and its node-local rank ----------------------------------------------------------------

def test_workers_on_rank_zeros_node_share_its_gpus_among_themselves() -> None:
    assert [slot_of(LocalRank(r, 4, "hydra"), r) for r in (1, 2, 3)] == [(0, 3), (1, 3), (2, 3)]
    assert [slot_of(LocalRank(r, 4, "hydra"), 4 + r) for r in range(4)] == [(r, 4) for r in range(4)]
    assert slot_of(LocalRank(1, 4, "hydra"), 2) == (1, 4)  # cyclic placement: rank 0's slot stays idle
    assert slot_of(LocalRank(0, 1, "single"), None) == (0, 1)


@pytest.mark.parametrize(("environ", "expected"), [
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "3", "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "SLURM_LOCALID": "0"},
     LocalRank(3, 4, "openmpi")),
    ({"MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "8"}, LocalRank(1, 8, "hydra")),
    ({"PALS_LOCAL_RANKID": "11", "PALS_LOCAL_SIZE": "12"}, LocalRank(11, 12, "pals")),
    ({"SLURM_LOCALID": "2", "SLURM_NTASKS_PER_NODE": "4"}, LocalRank(2, 4, "slurm")),
    ({"SLURM_LOCALID": "2", "SLURM_STEP_TASKS_PER_NODE": "4(x2),3", "SLURM_NODEID": "2"}, LocalRank(2, 3, "slurm")),
    ({"SLURM_LOCALID": "6", "SLURM_TASKS_PER_NODE": "8(x4)", "SLURM_NODEID": "3"}, LocalRank(6, 8, "slurm")),
    ({"SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "garbage"}, None),
    ({"MPI_LOCALRANKID": "4", "MPI_LOCALNRANKS": "4"}, None),
    ({}, None),
])
def test_node_local_rank_from_each_launcher(environ: dict[str, str], expected: LocalRank | None) -> None:
    assert from_environment(environ) == expected
