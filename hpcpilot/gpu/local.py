"""A rank's place on its node: its node-local rank and how many ranks share the node.

From the launcher's environment, MPI launchers first (Open MPI, MPICH's Hydra, Cray PALS: under ``mpiexec`` in
a Slurm allocation the Slurm variables are the batch step's, not this rank's), then Slurm's ``srun``.  Where no
launcher says (one started by a launcher that sets none of these), every rank joins an MPI shared-memory split
of COMM_WORLD (``split_local``): a collective, so it is decided from the environment, which every rank of a
launch shares, whether it is needed at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LAUNCHER_VARS = (
    ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "openmpi"),
    ("MPI_LOCALRANKID", "MPI_LOCALNRANKS", "hydra"),
    ("PALS_LOCAL_RANKID", "PALS_LOCAL_SIZE", "pals"),
)
_TASKS = re.compile(r"^([0-9]+)(?:\(x([0-9]+)\))?$")


@dataclass(frozen=True)
class LocalRank:
    """Node-local rank and size, and who said so ("openmpi", "hydra", "pals", "slurm", "mpi-split", "single")."""

    rank: int
    size: int
    source: str


def from_environment(environ: Mapping[str, str]) -> LocalRank | None:
    """The node-local rank the launcher set, or None where it set none (or nonsense)."""
    for rank_var, size_var, name in LAUNCHER_VARS:
        found = _pair(environ.get(rank_var), environ.get(size_var), name)
        if found is not None:
            return found
    if "SLURM_LOCALID" in environ:
        return _pair(environ["SLURM_LOCALID"], _slurm_tasks_here(environ), "slurm")
    return None


def _pair(rank: str | None, size: str | None, name: str) -> LocalRank | None:
    if rank is None or size is None or not rank.isdigit() or not size.isdigit() or int(rank) >= int(size):
        return None
    return LocalRank(int(rank), int(size), name)


def _slurm_tasks_here(environ: Mapping[str, str]) -> str | None:
    """Tasks on this node: ``SLURM_NTASKS_PER_NODE`` where given, else this node's entry of the step's (or
    job's) tasks-per-node list ("4(x2),3": 4 on nodes 0 and 1, 3 on node 2) at ``SLURM_NODEID``."""
    if environ.get("SLURM_NTASKS_PER_NODE", "").isdigit():
        return environ["SLURM_NTASKS_PER_NODE"]
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or ""
    node = environ.get("SLURM_NODEID", "0")
    if not node.isdigit():
        return None
    counts: list[str] = []
    for part in spec.split(","):
        match = _TASKS.match(part.strip())
        if match is None:
            return None
        counts += [match.group(1)] * int(match.group(2) or 1)
    return counts[int(node)] if int(node) < len(counts) else None


def split_local(comm: Any) -> LocalRank:
    """Node-local rank and size from an MPI shared-memory split of ``comm`` (collective: every rank calls it)."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED, comm.Get_rank())
    try:
        return LocalRank(node.Get_rank(), node.Get_size(), "mpi-split")
    finally:
        node.Free()
