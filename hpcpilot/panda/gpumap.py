"""What PanDA hears of a node's GPUs: the GPU map (``update_worker_node_gpu``) and a rank's ``target_architecture``.

Both come from the node info a rank sends rank 0 in its Ready message (``hpcpilot.gpu.model``: the node's inventory
under ``NODE_GPUS_KEY``, the rank's share under ``RANK_GPUS_KEY``).  The fields are what panda-server's code reads,
not its docstrings: ``pilot_api.update_worker_node_gpu`` (0.8.1 and 1.0.4: site, host_name, vendor, model, count,
vram, architecture, framework, framework_version, driver_version), which upserts one row per (site, host, vendor,
model) -- so a node with two GPU models is two calls -- and ``srvcore/hardware_matching.match_gpu_spec`` (1.0.4),
which reads vendor, model, vram, architecture, framework_version and driver_version of each GPU of a target.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hpcpilot.gpu.model import Gpu
from hpcpilot.gpu.visible import node_gpus, visible_gpus
from hpcpilot.panda.wire import TARGET_GPU_KEYS, WORKER_NODE_GPU_FIELDS


def gpu_map_fields(node: Mapping[str, Any], site: str) -> list[dict[str, Any]]:
    """update_worker_node_gpu's fields for one node: one dict per (vendor, model), with its count; [] on a CPU
    node.  ``host_name`` is the worker map's, so the server joins the two maps on it."""
    inventory = node_gpus(node)
    if inventory is None or not inventory.gpus:
        return []
    groups: dict[tuple[str, str], list[Gpu]] = {}
    for gpu in inventory.gpus:
        groups.setdefault((gpu.vendor, gpu.model), []).append(gpu)
    maps = []
    for (vendor, model), gpus in groups.items():
        first = gpus[0]
        fields: dict[str, Any] = {
            "site": site, "host_name": str(node.get("node") or ""), "vendor": vendor, "model": model,
            "count": len(gpus), "vram": first.vram_mb or None, "architecture": first.architecture,
            "framework": first.framework, "framework_version": first.framework_version,
            "driver_version": first.driver_version,
        }
        maps.append({k: v for k, v in fields.items() if k in WORKER_NODE_GPU_FIELDS and v not in (None, "")})
    return maps


def target_architecture(node: Mapping[str, Any]) -> str | None:
    """acquire_jobs' ``target_architecture`` for a rank (a JSON string, as the server also takes it): its GPUs
    in the keys the server matches on, ``{"gpus": []}`` for a rank without GPUs; None when the rank sent no
    inventory (then nothing is sent and the server checks nothing, as for pilot3)."""
    gpus = visible_gpus(node)
    if gpus is None:
        return None
    described = []
    for gpu in gpus:
        values = {"vendor": gpu.vendor, "model": gpu.model, "vram": gpu.vram_mb or None,
                  "architecture": gpu.architecture, "framework_version": gpu.framework_version,
                  "driver_version": gpu.driver_version}
        described.append({k: values[k] for k in TARGET_GPU_KEYS if values[k] not in (None, "")})
    return json.dumps({"gpus": described}, sort_keys=True)
