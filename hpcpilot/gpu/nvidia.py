"""NVIDIA GPUs from NVML (``pynvml`` of nvidia-ml-py, in process) or from ``nvidia-smi -q -x``.

Both number the GPUs as nvidia-smi does (PCI bus order), the order ``CUDA_VISIBLE_DEVICES`` takes once
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set.  The XML is one call that has everything (driver and CUDA versions, and
per GPU name, UUID, bus, memory); the CSV of ``--query-gpu`` has no CUDA version, so it would take two calls.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpcpilot.gpu.arch import architecture
from hpcpilot.gpu.model import Gpu
from hpcpilot.gpu.source import BadData, Unavailable, pci_address, run_tool

if TYPE_CHECKING:  # imported for real in parse_smi_xml: only a node with nvidia-smi and no NVML parses XML
    import xml.etree.ElementTree as ET

SMI_ARGS = ("-q", "-x")


def from_nvml(library: str, environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs NVML (module ``library``) sees; Unavailable if NVML does not load or the driver does not answer."""
    try:
        nvml: Any = importlib.import_module(library)
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ... and ImportError
        raise Unavailable(f"NVML: {exc}") from None
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = nvml.nvmlSystemGetCudaDriverVersion_v2()
        return [_nvml_gpu(nvml, index, driver, f"{cuda // 1000}.{cuda % 1000 // 10}")
                for index in range(nvml.nvmlDeviceGetCount())]
    except Exception as exc:  # an NVMLError from one query: the library is there but not usable
        raise Unavailable(f"NVML: {exc}") from None
    finally:
        with contextlib.suppress(Exception):  # shutting down what failed half-way: nothing left to do
            nvml.nvmlShutdown()


def _nvml_gpu(nvml: Any, index: int, driver: str, cuda: str) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    model = _text(nvml.nvmlDeviceGetName(handle))
    return Gpu("NVIDIA", index, model, int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20,
               uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
               pci_bus=pci_address(_text(nvml.nvmlDeviceGetPciInfo(handle).busId)),
               architecture=architecture("NVIDIA", model), driver_version=driver, framework="CUDA",
               framework_version=cuda)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def from_smi(program: str, environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs ``nvidia-smi -q -x`` lists."""
    return parse_smi_xml(run_tool([program, *SMI_ARGS], environ))


def parse_smi_xml(text: str) -> list[Gpu]:
    """``nvidia-smi -q -x`` output -> GPUs in document order (nvidia-smi's index order); BadData if it is
    not that document."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise BadData(f"nvidia-smi -q -x: output is not XML ({exc})") from None
    if root.tag != "nvidia_smi_log":
        raise BadData(f"nvidia-smi -q -x: root element <{root.tag}>, not <nvidia_smi_log>")
    driver, cuda = _field(root, "driver_version"), _field(root, "cuda_version")
    return [_smi_gpu(element, index, driver, cuda) for index, element in enumerate(root.findall("gpu"))]


def _smi_gpu(element: ET.Element, index: int, driver: str, cuda: str) -> Gpu:
    model = _field(element, "product_name")
    if not model:
        raise BadData(f"nvidia-smi -q -x: GPU {index} has no <product_name>")
    arch = _field(element, "product_architecture") or architecture("NVIDIA", model)
    return Gpu("NVIDIA", index, model, _mib(_field(element, "fb_memory_usage/total")), uuid=_field(element, "uuid"),
               pci_bus=pci_address(_field(element, "pci/pci_bus_id") or element.get("id", "")),
               architecture=arch, driver_version=driver, framework="CUDA", framework_version=cuda)


def _field(element: ET.Element, path: str) -> str:
    """The text at ``path``, "" where absent or N/A."""
    found = element.find(path)
    text = (found.text or "").strip() if found is not None else ""
    return "" if text in ("N/A", "Not Supported") else text


def _mib(text: str) -> int:
    """``81920 MiB`` -> 81920 ("" -> 0)."""
    if not text:
        return 0
    number, _, unit = text.partition(" ")
    if unit not in ("MiB", "") or not number.isdigit():
        raise BadData(f"nvidia-smi -q -x: memory {text[:40]!r} is not '<n> MiB'")
    return int(number)
