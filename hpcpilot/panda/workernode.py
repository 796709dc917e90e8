"""The worker-node map a pilot sends once per node (panda-wire B.10; brokerage on panda-server 1.0 reads it).

``worker_node_fields`` turns what a rank measured of its node (``hpcpilot.node.node_info``, carried to
rank 0 in the rank's Ready message) into the fields of v1 ``pilot/update_worker_node``: only fields both
0.8.1 and 1.0.4 accept (v1 refuses any other), and only those known -- an unknown value is left out, not
sent as 0.  The controller sends one per node, not one per rank.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

from hpcpilot.panda.wire import WORKER_NODE_FIELDS


def worker_node_fields(node: Mapping[str, Any], site: str, queue: str) -> dict[str, Any]:
    """update_worker_node's fields for one node: host, CPU model, logical CPUs, clock (MHz), memory (MB),
    architecture; the site and the PanDA queue it serves.  No ``total_local_disk``: the rank measured the free
    space of its work directory, not the node's disk."""
    fields: dict[str, Any] = {
        "site": site,
        "host_name": str(node.get("node") or ""),
        "cpu_model": str(node.get("cpu_model") or "unknown"),
        "panda_queue": queue or None,
        "n_logical_cpus": _positive(node.get("cores")),
        "clock_speed": _float(_positive(node.get("cpu"))),  # the server takes a float only (isinstance)
        "total_memory": _positive(node.get("mem")),
        "cpu_architecture": platform.machine() or None,
    }
    return {k: v for k, v in fields.items() if k in WORKER_NODE_FIELDS and v not in (None, "")}


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _positive(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
