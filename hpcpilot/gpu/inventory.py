"""A node's GPUs, taken once at a rank's start: sysfs first, then per vendor its library, else its tool.

Order, per vendor present: the vendor library in process (NVML through ``pynvml``, ``amdsmi``), else the vendor
tool (``nvidia-smi -q -x``, ``rocm-smi --json``, ``xpu-smi discovery -j``), else what sysfs said.  Sysfs is read
first, always (hpcpilot.gpu.sysfs: file reads only): where it is there and shows no GPU, nothing else is tried --
no import, no process -- and the node is a CPU node.  Where it is not there at all (a container without /sys),
the libraries that are installed and the tools that are on PATH are tried; none = a CPU node.  A library is
looked up with ``find_spec`` and imported only to be used.

Every rank takes the inventory itself (no collective, no file between ranks): the same inputs give the same
list, and so a consistent binding, on every rank of a node; on a CPU node it costs a few stat calls
(bench/bench_gpu_inventory.py).

Injectable for tests and odd sites: ``HPCPILOT_GPUINV_ROOT`` is the directory that stands for ``/`` (sysfs and
/proc/driver/nvidia are read under it), the tools are looked up on the ``PATH`` given, and
``HPCPILOT_GPUINV_SOURCES`` (comma list of "sysfs", "nvml", "nvidia-smi", "amdsmi", "rocm-smi", "xpu-smi") limits
the sources tried.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from hpcpilot.gpu import sysfs
from hpcpilot.gpu.model import VENDORS, Gpu, NodeGpus
from hpcpilot.gpu.source import BadData, Unavailable

log = logging.getLogger(__name__)

ROOT_VAR = "HPCPILOT_GPUINV_ROOT"
SOURCES_VAR = "HPCPILOT_GPUINV_SOURCES"
"""Not ``HPCPILOT_GPU_*``: that prefix is the [gpu] site section's (``HPCPILOT_<SECTION>_<KEY>``)."""


@dataclass(frozen=True)
class Source:
    """One way to list a vendor's GPUs: a library (found by module name) or a tool (found on PATH), read by
    ``reader`` ("module:function" of hpcpilot.gpu, imported when the source is tried: a CPU node imports none)."""

    name: str
    vendor: str
    reader: str
    library: str = ""
    program: str = ""

    def locate(self, environ: Mapping[str, str]) -> str | None:
        """The library's module name or the program's path if this source is installed here, else None."""
        if self.library:
            try:
                return self.library if importlib.util.find_spec(self.library) is not None else None
            except (ImportError, ValueError):
                return None
        return shutil.which(self.program, path=environ.get("PATH", os.defpath))

    def read(self, located: str, environ: Mapping[str, str]) -> list[Gpu]:
        module, _, function = self.reader.partition(":")
        reader: Callable[[str, Mapping[str, str]], list[Gpu]] = getattr(
            importlib.import_module(f"hpcpilot.gpu.{module}"), function)
        return reader(located, environ)


SOURCES = (
    Source("nvml", "NVIDIA", "nvidia:from_nvml", library="pynvml"),
    Source("nvidia-smi", "NVIDIA", "nvidia:from_smi", program="nvidia-smi"),
    Source("amdsmi", "AMD", "amd:from_amdsmi", library="amdsmi"),
    Source("rocm-smi", "AMD", "amd:from_smi", program="rocm-smi"),
    Source("xpu-smi", "Intel", "intel:from_smi", program="xpu-smi"),
)
"""Per vendor in the order tried: its library, then its tool (the NVML module of nvidia-ml-py is ``pynvml``)."""


def take_inventory(environ: Mapping[str, str] = os.environ, announce: bool = True) -> NodeGpus:
    """The node's GPUs (``source`` "none" on a CPU node).  Bad data from any source is one line and a CPU
    node, never an exception.  ``announce``: say what was found at INFO (the node's first rank) or DEBUG."""
    level = logging.INFO if announce else logging.DEBUG
    try:
        node = _inventory(environ)
    except BadData as exc:
        log.warning("GPU inventory: %s: this node counts as a CPU node", exc)
        return NodeGpus()
    except Exception as exc:  # a source's output in a shape no parser foresaw: still one line, not a dead rank
        log.warning("GPU inventory failed (%s: %s): this node counts as a CPU node", type(exc).__name__, exc)
        return NodeGpus()
    if node.gpus:
        log.log(level, "GPUs (%s): %s", node.source, "; ".join(
            f"{g.vendor} {g.index}: {g.model}, {g.vram_mb} MB" + (f", {g.tiles} tiles" if g.tiles > 1 else "")
            for g in node.gpus))
    else:
        log.log(level, "no GPU found: a CPU node")
    return node


def _inventory(environ: Mapping[str, str]) -> NodeGpus:
    allowed = _allowed(environ)
    seen = sysfs.scan(Path(environ.get(ROOT_VAR) or "/")) if "sysfs" in allowed else None
    if seen == []:
        return NodeGpus()
    vendors = sorted({g.vendor for g in seen}, key=VENDORS.index) if seen else list(VENDORS)
    gpus: list[Gpu] = []
    names: list[str] = []
    for vendor in vendors:
        own = [g for g in seen or () if g.vendor == vendor]
        found = _best(vendor, environ, allowed)
        if found is not None:
            names.append(found[0])
            gpus += _completed(found[1], own)
        elif own:
            names.append("sysfs")
            gpus += own
    return NodeGpus(tuple(gpus), "+".join(dict.fromkeys(names))) if gpus else NodeGpus()


def _allowed(environ: Mapping[str, str]) -> set[str]:
    every = {"sysfs", *(source.name for source in SOURCES)}
    given = environ.get(SOURCES_VAR, "").strip()
    return {name.strip() for name in given.split(",")} & every if given else every


def _best(vendor: str, environ: Mapping[str, str], allowed: set[str]) -> tuple[str, list[Gpu]] | None:
    """The first installed source of ``vendor`` that answers with GPUs, with its name."""
    for source in SOURCES:
        if source.vendor != vendor or source.name not in allowed:
            continue
        located = source.locate(environ)
        if located is None:
            continue
        try:
            gpus = source.read(located, environ)
        except Unavailable as exc:
            log.debug("GPU inventory: %s", exc)
            continue
        if gpus:
            return source.name, gpus
    return None


def _completed(gpus: list[Gpu], seen: list[Gpu]) -> list[Gpu]:
    """The source's GPUs with what it did not say and sysfs did (memory, tiles, UUID, versions), by PCI bus."""
    by_bus = {g.pci_bus: g for g in seen}
    result = []
    for gpu in gpus:
        known = by_bus.get(gpu.pci_bus)
        if known is None:
            result.append(gpu)
            continue
        result.append(replace(gpu, vram_mb=gpu.vram_mb or known.vram_mb, uuid=gpu.uuid or known.uuid,
                              tiles=max(gpu.tiles, known.tiles),
                              architecture=gpu.architecture or known.architecture,
                              driver_version=gpu.driver_version or known.driver_version))
    return result
