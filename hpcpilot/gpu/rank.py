"""A worker rank's GPUs at its start: the node's inventory and the rank's share, in one call."""

from __future__ import annotations

import os
from collections.abc import Mapping

from hpcpilot.config.schema import GpuConfig
from hpcpilot.gpu.binding import bind, slot_of
from hpcpilot.gpu.inventory import take_inventory
from hpcpilot.gpu.local import LocalRank
from hpcpilot.gpu.model import NodeGpus, RankGpus

SINGLE = LocalRank(0, 1, "single")
"""The one worker of a one-process pilot (a thread of rank 0): the node's GPUs are all its own."""


def rank_gpus(config: GpuConfig, local: LocalRank, world_rank: int | None,
              environ: Mapping[str, str] = os.environ) -> tuple[NodeGpus, RankGpus]:
    """The node's GPUs and this rank's share; the node's first worker says what it found and did."""
    slot, slots = slot_of(local, world_rank)
    node = take_inventory(environ, announce=slot == 0)
    return node, bind(node, slot, slots, config, environ, announce=slot == 0)
