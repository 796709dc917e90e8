"""A rank's share of its node's GPUs, and the variables that make its payloads see only that share.

Rules (site ``[gpu]``; README "GPUs"):

* The unit is a GPU (an AMD GCD counts as one, as ROCm shows it), an Intel tile where a card has several.
* Shares are cut by the rank's *slot*: its node-local rank among the node's worker ranks.  Rank 0 runs no payload,
  so on its node the workers share the GPUs among themselves (``slot_of``).
* ``per_rank = 0``: the units divided evenly, the first slots taking one more where they do not divide; with more
  slots than units each slot up to the number of units gets one and the rest none.  ``per_rank = N``: slot k
  gets units kN..kN+N-1, a slot past the last unit none.  ``share = true``: instead of none, the slots wrap round
  the units, and the ranks say so (``how = "share"``).
* A rank with no unit on a GPU node is a CPU rank and is made blind to the GPUs: ``CUDA_VISIBLE_DEVICES=""``,
  ``ROCR_VISIBLE_DEVICES=""`` (ROCr filters once the variable is set, even empty), ``ZE_AFFINITY_MASK`` naming
  one device past the last (Level Zero exposes only the devices a mask names; an empty mask would mean "no
  mask").
* NVIDIA: ``CUDA_VISIBLE_DEVICES`` of nvidia-smi indices and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so CUDA numbers
  the GPUs as nvidia-smi does.  AMD: ``ROCR_VISIBLE_DEVICES`` (applied by ROCr below HIP and OpenCL).  Intel:
  ``ZE_AFFINITY_MASK`` of ``card.tile`` entries with ``ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE``, which is what makes
  ``card.tile`` mean card and tile; where the rank's environment asks for ``FLAT`` explicitly, flat indices
  (each tile a device, cards in order) and FLAT kept.  Variables that index what the first one leaves
  (``HIP_VISIBLE_DEVICES``, ``GPU_DEVICE_ORDINAL``, HIP's ``CUDA_VISIBLE_DEVICES``) are renumbered 0..n-1 where
  the launcher had set them, so they cannot point past the share.
* A launcher that already set the vendor variable: where Slurm bound each task (``--gpus-per-task``,
  ``--gpu-bind``, ``--ntasks-per-gpu``, or ``bind = "slurm"``) its binding is kept as it is (``how = "slurm"``);
  otherwise what it set is the step's set of GPUs, and that set is what the ranks split.
* ``bind = "none"``: nothing is set, every rank sees every GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from hpcpilot.config.schema import GpuConfig
from hpcpilot.gpu.local import LocalRank
from hpcpilot.gpu.model import VENDORS, Gpu, NodeGpus, RankGpus

log = logging.getLogger(__name__)

VISIBLE = {"NVIDIA": "CUDA_VISIBLE_DEVICES", "AMD": "ROCR_VISIBLE_DEVICES", "Intel": "ZE_AFFINITY_MASK"}
"""The variable that hides a vendor's GPUs from everything above the driver."""
FOLLOWERS = {"NVIDIA": ("GPU_DEVICE_ORDINAL",),
             "AMD": ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"), "Intel": ()}
"""Variables that index what ``VISIBLE`` leaves visible (renumbered where the launcher set them)."""
ORDER_VAR, HIERARCHY_VAR = "CUDA_DEVICE_ORDER", "ZE_FLAT_DEVICE_HIERARCHY"
GPU_VARS = tuple(dict.fromkeys([*VISIBLE.values(), *(v for f in FOLLOWERS.values() for v in f), ORDER_VAR,
                                HIERARCHY_VAR]))
"""Every variable a binding may set: what a container runtime that passes no host environment must be told."""
SLURM_PER_TASK = ("SLURM_GPUS_PER_TASK", "SLURM_GPU_BIND", "SLURM_NTASKS_PER_GPU")


def slot_of(local: LocalRank, world_rank: int | None) -> tuple[int, int]:
    """(slot, slots): the rank's place among its node's worker ranks.  Where world rank 0 (the controller) is on
    this node it is the node's local rank 0 (launchers number a node's ranks in world order), and a worker whose
    world and local ranks are equal is on its node: the workers there take slots local-1 of size-1.  ``None``:
    no controller among the ranks (one process, the worker a thread of rank 0)."""
    if world_rank is not None and world_rank == local.rank > 0:
        return local.rank - 1, local.size - 1
    return local.rank, local.size


def bind(node: NodeGpus, slot: int, slots: int, config: GpuConfig, environ: Mapping[str, str],
         announce: bool = False) -> RankGpus:
    """This rank's GPUs and its payloads' variables (see the module docstring for the rules)."""
    if not node.gpus:
        return RankGpus()
    devices: list[str] = []
    env: dict[str, str] = {}
    hows: list[str] = []
    for vendor in VENDORS:
        gpus = [g for g in node.gpus if g.vendor == vendor]
        if gpus:
            share = _bind_vendor(vendor, gpus, slot, slots, config, environ, announce)
            devices += share.devices
            env.update(share.env)
            hows.append(share.how)
    how = next((h for h in ("slurm", "share", "none", "auto") if h in hows), "cpu")
    return RankGpus(tuple(devices), env, how)


def _bind_vendor(vendor: str, gpus: list[Gpu], slot: int, slots: int, config: GpuConfig,
                 environ: Mapping[str, str], announce: bool) -> RankGpus:
    var = VISIBLE[vendor]
    preset = environ.get(var)
    flat = vendor == "Intel" and environ.get(HIERARCHY_VAR, "").upper() == "FLAT"
    units = _units(gpus, flat)
    if config.bind == "none":
        return RankGpus(tuple(units), {}, "none")
    if preset is not None and (config.bind == "slurm" or _slurm_bound(environ)):
        if announce:
            log.info("GPUs: the launcher bound this task (%s=%s): kept", var, preset)
        return RankGpus(tuple(e for e in preset.split(",") if e), {var: preset}, "slurm")
    if config.bind == "slurm":
        return RankGpus(tuple(units), {}, "slurm")
    pool = [e for e in preset.split(",") if e] if preset is not None else units
    picked, shared = share_of(len(pool), slot, slots, config.per_rank, config.share)
    entries = [pool[i] for i in picked]
    env = _variables(vendor, entries, environ, blind=_blind(gpus, flat))
    return RankGpus(tuple(entries), env, "share" if shared and entries else "auto" if entries else "cpu")


def share_of(units: int, slot: int, slots: int, per_rank: int, share: bool) -> tuple[list[int], bool]:
    """Which of ``units`` (by position) slot ``slot`` of ``slots`` gets, and whether slots share units."""
    if units == 0 or slots < 1:
        return [], False
    if per_rank > 0:
        start = slot * per_rank
        shared = share and slots * per_rank > units
        if start + per_rank <= units:
            return list(range(start, start + per_rank)), shared
        return ([(start + i) % units for i in range(min(per_rank, units))], True) if share else ([], False)
    if units >= slots:
        each, extra = divmod(units, slots)
        start = slot * each + min(slot, extra)
        return list(range(start, start + each + (1 if slot < extra else 0))), False
    if slot < units:
        return [slot], share
    return ([slot % units], True) if share else ([], False)


def _units(gpus: Sequence[Gpu], flat: bool) -> list[str]:
    """The ids of a vendor's units: GPU indices, Intel ``card.tile`` (or flat tile indices under FLAT)."""
    units: list[str] = []
    offset = 0
    for gpu in sorted(gpus, key=lambda g: g.index):
        if gpu.tiles > 1:
            units += [str(offset + t) if flat else f"{gpu.index}.{t}" for t in range(gpu.tiles)]
        else:
            units.append(str(offset) if flat else str(gpu.index))
        offset += gpu.tiles
    return units


def _blind(gpus: Sequence[Gpu], flat: bool) -> str:
    """An Intel mask that names no device: one past the last card (the last tile under FLAT)."""
    return str(sum(g.tiles for g in gpus) if flat else max(g.index for g in gpus) + 1)


def _variables(vendor: str, entries: Sequence[str], environ: Mapping[str, str], blind: str) -> dict[str, str]:
    var = VISIBLE[vendor]
    env = {var: ",".join(entries)}
    if vendor == "NVIDIA":
        env[ORDER_VAR] = "PCI_BUS_ID"
    elif vendor == "Intel":
        if not entries:
            env[var] = blind
        if environ.get(HIERARCHY_VAR, "").upper() != "FLAT":
            env[HIERARCHY_VAR] = "COMPOSITE"
    for follower in FOLLOWERS[vendor]:
        if follower in environ and follower != var:
            env[follower] = ",".join(str(i) for i in range(len(entries)))
    return env


def _slurm_bound(environ: Mapping[str, str]) -> bool:
    """Did srun bind each task to its GPUs (rather than give the step a set every task sees)?"""
    return any(environ.get(name) for name in SLURM_PER_TASK) or "gpu" in environ.get("SLURM_TRES_PER_TASK", "")
