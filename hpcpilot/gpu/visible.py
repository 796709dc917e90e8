"""Which GPUs a rank's payloads see, read from the node info the rank sends in its Ready message.

The rank's inventory (``NodeGpus`` under ``NODE_GPUS_KEY``) and binding (``RankGpus`` under ``RANK_GPUS_KEY``) are
plain dicts in its node info; rank 0 reads them to tell PanDA (``hpcpilot.panda.gpumap``), the rank itself to
measure its payloads' GPUs (``hpcpilot.monitor.gpu``) and name them in jobMetrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcpilot.gpu.model import NODE_GPUS_KEY, RANK_GPUS_KEY, Gpu, NodeGpus, RankGpus


def node_gpus(node: Mapping[str, Any]) -> NodeGpus | None:
    """The node's inventory from a rank's node info; None when the rank sent none (nothing known, nothing said)."""
    if NODE_GPUS_KEY not in node:
        return None
    return NodeGpus.from_dict(node.get(NODE_GPUS_KEY))


def visible_gpus(node: Mapping[str, Any]) -> list[Gpu] | None:
    """The GPUs a rank's payloads see: its binding's devices (an Intel ``card.tile`` entry names its card), every
    GPU of the node when the rank was not bound (``how`` none, or no binding sent); None when nothing is known."""
    inventory = node_gpus(node)
    if inventory is None:
        return None
    share = RankGpus.from_dict(node.get(RANK_GPUS_KEY)) if node.get(RANK_GPUS_KEY) else None
    if share is None or share.how == "none":
        return list(inventory.gpus)
    cards = {device.split(".", 1)[0] for device in share.devices}
    return [gpu for gpu in inventory.gpus if str(gpu.index) in cards]
