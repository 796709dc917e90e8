"""The GPUs the kernel shows: ``/sys/class/drm/card*/device`` and ``/proc/driver/nvidia/gpus/*/information``.

Plain file reads, no library, no process: the first look on every node, and what decides whether any vendor
library or tool is worth trying.  A card counts when its PCI vendor is NVIDIA, AMD or Intel and its class a
display controller (0x0300 VGA, 0x0302 3D -- NVIDIA's data-centre parts --, 0x0380 other -- AMD Instinct, Intel
Max); an Intel GPU on PCI bus 00 is the CPU's integrated one and does not.  NVIDIA's driver registers its GPUs
under /proc/driver/nvidia even where nvidia-drm (and so the drm card) is not loaded, with the model, UUID and
bus; /proc/driver/nvidia/version has the driver version.  AMD's memory is ``mem_info_vram_total``; Intel's
tiles are ``gt/gt*`` (i915) or ``device/tile*`` (xe).

Each vendor's GPUs are numbered in PCI bus order: nvidia-smi's order (so ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes
CUDA agree), and the order ROCr and Level Zero enumerate the cards of one model in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from hpcpilot.gpu.arch import PCI_VENDORS, architecture, intel_tiles, pci_model
from hpcpilot.gpu.model import VENDORS, Gpu
from hpcpilot.gpu.source import BadData, pci_address

DISPLAY_CLASSES = (0x0300, 0x0302, 0x0380)
DRM = Path("sys/class/drm")
NVIDIA_PROC = Path("proc/driver/nvidia")
_CARD = re.compile(r"^card[0-9]+$")
_NVIDIA_VERSION = re.compile(r"Kernel Module.*?\s([0-9]+\.[0-9]+(?:\.[0-9]+)?)\s")


def scan(root: Path) -> list[Gpu] | None:
    """The node's GPUs as the kernel shows them, numbered per vendor in bus order; None where ``root`` has
    neither place to look (a container without /sys), [] where it has them and they hold no GPU."""
    drm, proc = root / DRM, root / NVIDIA_PROC / "gpus"
    if not drm.is_dir() and not proc.is_dir():
        return None
    found = {gpu.pci_bus: gpu for gpu in _drm_cards(drm)}
    version = _nvidia_driver_version(root / NVIDIA_PROC / "version")
    for gpu in _nvidia_proc(proc, version):
        found[gpu.pci_bus] = gpu
    return numbered(found.values())


def numbered(gpus: Iterable[Gpu]) -> list[Gpu]:
    """``gpus`` ordered by vendor then PCI bus, each with its index among its vendor's."""
    ordered = sorted(gpus, key=lambda g: (VENDORS.index(g.vendor), g.pci_bus))
    counts: dict[str, int] = {}
    result = []
    for gpu in ordered:
        result.append(replace(gpu, index=counts.get(gpu.vendor, 0)))
        counts[gpu.vendor] = counts.get(gpu.vendor, 0) + 1
    return result


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadData(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def _optional(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _hex(path: Path) -> int:
    text = _read(path)
    try:
        return int(text, 16)
    except ValueError:
        raise BadData(f"{path}: {text[:40]!r} is not a hex number") from None


def _drm_cards(drm: Path) -> list[Gpu]:
    if not drm.is_dir():
        return []
    try:
        names = sorted(entry.name for entry in drm.iterdir() if _CARD.match(entry.name))
    except OSError as exc:
        raise BadData(f"{drm}: cannot be listed ({exc.strerror})") from None
    return [gpu for gpu in (_card(drm / name) for name in names) if gpu is not None]


def _card(card: Path) -> Gpu | None:
    """One drm card: from its device's ``uevent`` (PCI_ID, PCI_CLASS, PCI_SLOT_NAME: one read), else from its
    ``vendor``, ``device`` and ``class`` files; None where it is no GPU of ours."""
    device = card / "device"
    event = dict(line.partition("=")[::2] for line in _optional(device / "uevent").splitlines())
    vendor_id, device_id, klass = _pci_ids(event, device)
    if vendor_id not in PCI_VENDORS or klass >> 8 not in DISPLAY_CLASSES:
        return None
    bus = pci_address(event["PCI_SLOT_NAME"]) if "PCI_SLOT_NAME" in event else pci_address(device.resolve().name)
    vendor = PCI_VENDORS[vendor_id]
    if vendor == "Intel" and bus.split(":")[1] == "00":
        return None  # the CPU's integrated graphics
    model, arch = pci_model(vendor_id, device_id)
    product = _optional(device / "product_name")
    if product:
        model, arch = product, architecture(vendor, product) or arch
    vram = _optional(device / "mem_info_vram_total")
    return Gpu(vendor, 0, model, int(vram) // 2**20 if vram.isdigit() else 0, pci_bus=bus,
               tiles=_tiles(card, model) if vendor == "Intel" else 1, architecture=arch,
               driver_version=_optional(card.parents[2] / "module" / "amdgpu" / "version") if vendor == "AMD" else "")


def _pci_ids(event: dict[str, str], device: Path) -> tuple[int, int, int]:
    """(vendor, device, class) of a PCI device."""
    if "PCI_ID" in event and "PCI_CLASS" in event:
        vendor, _, dev = event["PCI_ID"].partition(":")
        try:
            return int(vendor, 16), int(dev, 16), int(event["PCI_CLASS"], 16)
        except ValueError:
            raise BadData(f"{device / 'uevent'}: PCI_ID={event['PCI_ID'][:20]!r} PCI_CLASS="
                          f"{event['PCI_CLASS'][:20]!r} are not hex ids") from None
    return _hex(device / "vendor"), _hex(device / "device"), _hex(device / "class")


def _tiles(card: Path, model: str) -> int:
    counted = [p for p in (*card.glob("gt/gt[0-9]*"), *(card / "device").glob("tile[0-9]*")) if p.is_dir()]
    return len(counted) or intel_tiles(model)


def _nvidia_driver_version(path: Path) -> str:
    match = _NVIDIA_VERSION.search(_optional(path))
    return match.group(1) if match else ""


def _nvidia_proc(proc: Path, version: str) -> list[Gpu]:
    if not proc.is_dir():
        return []
    try:
        entries = sorted(proc.iterdir())
    except OSError as exc:
        raise BadData(f"{proc}: cannot be listed ({exc.strerror})") from None
    return [gpu for gpu in (_nvidia_gpu(entry, version) for entry in entries) if gpu is not None]


def _nvidia_gpu(entry: Path, version: str) -> Gpu | None:
    """One GPU from the driver's ``information`` file ("Model:  NVIDIA A100-SXM4-40GB", "GPU UUID: GPU-...",
    "Bus Location: 0000:07:00.0"); None for one the driver was told to leave alone ("GPU Excluded: Yes")."""
    fields = {}
    for line in _read(entry / "information").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if fields.get("GPU Excluded") == "Yes":
        return None
    model = fields.get("Model", "")
    if not model:
        raise BadData(f"{entry / 'information'}: no 'Model:' line")
    bus = pci_address(fields.get("Bus Location") or entry.name)
    return Gpu("NVIDIA", 0, model, pci_bus=bus, uuid=fields.get("GPU UUID", ""),
               architecture=architecture("NVIDIA", model), driver_version=version, framework="CUDA")
