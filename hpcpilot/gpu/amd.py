"""AMD GPUs (each MI250X GCD counts as one) from ``amdsmi`` (ROCm's library, in process) or ``rocm-smi --json``.

rocm-smi numbers its cards ``card0``, ``card1`` ... in the order ROCr enumerates them, the order
``ROCR_VISIBLE_DEVICES`` indices take.  The model is "Device Name" in ROCm 6 and "Card series"/"Card Series"
before it; memory only comes with ``--showmeminfo vram`` (sysfs has it too).  The ROCm version is the
installation's ``.info/version`` (``$ROCM_PATH``, default /opt/rocm).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcpilot.gpu.arch import architecture
from hpcpilot.gpu.model import Gpu
from hpcpilot.gpu.source import BadData, Unavailable, pci_address, run_tool

SMI_ARGS = ("--showproductname", "--showbus", "--showuniqueid", "--showmeminfo", "vram", "--showdriverversion",
            "--json")
_CARD = re.compile(r"^card([0-9]+)$")
_MODEL_KEYS = ("Device Name", "Card Series", "Card series", "Card SKU")


def rocm_version(environ: Mapping[str, str]) -> str:
    """The ROCm installation's version ("" where there is none)."""
    path = Path(environ.get("ROCM_PATH") or "/opt/rocm") / ".info" / "version"
    try:
        return path.read_text().strip().split("-")[0]
    except (OSError, UnicodeDecodeError):
        return ""


def from_amdsmi(library: str, environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs amdsmi (module ``library``) sees; Unavailable if it does not load or amdgpu does not answer."""
    try:
        smi: Any = importlib.import_module(library)
        smi.amdsmi_init()
    except Exception as exc:  # AmdSmiLibraryException, ImportError of libamd_smi.so, ...
        raise Unavailable(f"amdsmi: {exc}") from None
    try:
        version = rocm_version(environ)
        return [_amdsmi_gpu(smi, index, handle, version)
                for index, handle in enumerate(smi.amdsmi_get_processor_handles())]
    except Exception as exc:  # one query failed: the library is there but not usable
        raise Unavailable(f"amdsmi: {exc}") from None
    finally:
        with contextlib.suppress(Exception):  # shutting down what failed half-way: nothing left to do
            smi.amdsmi_shut_down()


def _amdsmi_gpu(smi: Any, index: int, handle: Any, version: str) -> Gpu:
    asic = smi.amdsmi_get_gpu_asic_info(handle)
    model = str(asic.get("market_name") or asic.get("device_id") or "AMD GPU")
    vram = smi.amdsmi_get_gpu_memory_total(handle, smi.AmdSmiMemoryType.VRAM)
    driver = smi.amdsmi_get_gpu_driver_info(handle).get("driver_version", "")
    return Gpu("AMD", index, model, int(vram) // 2**20, uuid=str(smi.amdsmi_get_gpu_device_uuid(handle)),
               pci_bus=pci_address(str(smi.amdsmi_get_gpu_device_bdf(handle))),
               architecture=architecture("AMD", model), driver_version=str(driver), framework="ROCm",
               framework_version=version)


def from_smi(program: str, environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs ``rocm-smi ... --json`` lists."""
    return parse_rocm_smi_json(run_tool([program, *SMI_ARGS], environ), rocm_version(environ))


def parse_rocm_smi_json(text: str, version: str = "") -> list[Gpu]:
    """rocm-smi's JSON (a ``cardN`` object per GPU, ``system`` for the driver) -> GPUs in card order."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadData(f"rocm-smi --json: output is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadData("rocm-smi --json: output is not a JSON object")
    system = data.get("system") if isinstance(data.get("system"), dict) else {}
    driver = str(system.get("Driver version", ""))
    cards = sorted((int(m.group(1)), key) for key in data if (m := _CARD.match(key)))
    return [_card(data[key], index, key, driver, version) for index, (_, key) in enumerate(cards)]


def _card(card: Any, index: int, key: str, driver: str, version: str) -> Gpu:
    if not isinstance(card, dict):
        raise BadData(f"rocm-smi --json: {key} is not an object")
    model = next((str(card[k]) for k in _MODEL_KEYS if card.get(k)), "")
    if not model:
        raise BadData(f"rocm-smi --json: {key} names no model")
    vram = str(card.get("VRAM Total Memory (B)", "0"))
    if not vram.isdigit():
        raise BadData(f"rocm-smi --json: {key} VRAM {vram[:40]!r} is not a byte count")
    bus = card.get("PCI Bus")
    return Gpu("AMD", index, model, int(vram) // 2**20, uuid=str(card.get("Unique ID", "")),
               pci_bus=pci_address(str(bus)) if bus else "", architecture=architecture("AMD", model),
               driver_version=driver, framework="ROCm", framework_version=version)
