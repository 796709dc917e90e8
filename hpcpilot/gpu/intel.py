"""Intel GPUs from ``xpu-smi discovery -j`` (Intel XPU Manager's CLI).

The JSON lists the cards (``device_list``: id, name, PCI address, UUID), not their tiles: those come from
sysfs (``gt/gt*``, ``tile*``) or the model.  Level Zero's Python binding (``pyzes``) is the C API through
ctypes, struct by struct; the inventory does not use it (see README "GPUs").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hpcpilot.gpu.arch import architecture, intel_tiles
from hpcpilot.gpu.model import Gpu
from hpcpilot.gpu.source import BadData, pci_address, run_tool

SMI_ARGS = ("discovery", "-j")


def from_smi(program: str, environ: Mapping[str, str]) -> list[Gpu]:
    """The cards ``xpu-smi discovery -j`` lists."""
    return parse_discovery_json(run_tool([program, *SMI_ARGS], environ))


def parse_discovery_json(text: str) -> list[Gpu]:
    """``{"device_list": [...]}`` -> GPUs in device-id order."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadData(f"xpu-smi discovery -j: output is not JSON ({exc})") from None
    devices = data.get("device_list") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        raise BadData("xpu-smi discovery -j: no device_list")
    gpus = [_device(entry) for entry in devices if isinstance(entry, dict) and entry.get("device_type", "GPU") == "GPU"]
    return sorted(gpus, key=lambda gpu: gpu.index)


def _device(entry: dict[str, Any]) -> Gpu:
    model = str(entry.get("device_name") or "")
    index = entry.get("device_id")
    if not model or not isinstance(index, int):
        raise BadData(f"xpu-smi discovery -j: device {str(entry)[:80]} has no device_id or device_name")
    bus = entry.get("pci_bdf_address")
    return Gpu("Intel", index, model, uuid=str(entry.get("uuid", "")), pci_bus=pci_address(str(bus)) if bus else "",
               tiles=intel_tiles(model), architecture=architecture("Intel", model), framework="Level Zero")
