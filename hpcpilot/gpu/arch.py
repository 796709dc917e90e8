"""GPU model -> microarchitecture, and PCI ids -> model where only sysfs is there: the one place for these facts.

PanDA matches a task's ``uarch`` against ``architecture`` exactly (panda-server ``hardware_matching.py``), so the
names are those pilot3 sends for NVIDIA (``detect_architecture``: K80 Kepler ... GH200 Grace Hopper) and AMD's and
Intel's own names for theirs (CDNA, CDNA2, CDNA3, CDNA4; Xe-HPC for Data Center GPU Max, Xe-HPG for Flex).  A model
is matched on whole product tokens: "A10" is not "A100", "H200" is not "GH200".
"""

from __future__ import annotations

import re

PCI_VENDORS = {0x10DE: "NVIDIA", 0x1002: "AMD", 0x8086: "Intel"}
"""PCI vendor id -> vendor (``/sys/bus/pci/devices/*/vendor``)."""

_TOKEN = r"(?<![A-Za-z0-9])(?:{})(?![0-9])"

_ARCHITECTURES: dict[str, tuple[tuple[str, str], ...]] = {
    "NVIDIA": (
        ("GH200|GH100", "Grace Hopper"),
        ("GB200|GB300|B200|B100|B300", "Blackwell"),
        ("H100|H200|H800|H20", "Hopper"),
        ("L40S|L40|L4|L20|RTX 6000 Ada|RTX 4000 Ada", "Ada Lovelace"),
        ("A100|A800|A40|A30|A16|A10|A2|RTX A[0-9]+", "Ampere"),
        ("T4|RTX 8000|RTX 6000", "Turing"),
        ("V100S?|TITAN V", "Volta"),
        ("P100|P40|P4", "Pascal"),
        ("M10|M40|M60", "Maxwell"),
        ("K80|K40|K20", "Kepler"),
    ),
    "AMD": (
        ("MI35[0-9]X?", "CDNA4"),
        ("MI3[0-2][0-9][AX]?", "CDNA3"),
        ("MI2[0-9]{2}X?", "CDNA2"),
        ("MI100", "CDNA"),
    ),
    "Intel": (
        ("Max", "Xe-HPC"),
        ("Flex", "Xe-HPG"),
    ),
}

_PCI_MODELS: dict[tuple[int, int], tuple[str, str]] = {
    (0x1002, 0x738C): ("AMD Instinct MI100", "CDNA"),
    (0x1002, 0x740C): ("AMD Instinct MI250X / MI250", "CDNA2"),
    (0x1002, 0x740F): ("AMD Instinct MI210", "CDNA2"),
    (0x1002, 0x74A0): ("AMD Instinct MI300A", "CDNA3"),
    (0x1002, 0x74A1): ("AMD Instinct MI300X", "CDNA3"),
    **{(0x8086, device): ("Intel(R) Data Center GPU Max", "Xe-HPC") for device in range(0x0BD0, 0x0BDC)},
    (0x8086, 0x56C0): ("Intel(R) Data Center GPU Flex 170", "Xe-HPG"),
    (0x8086, 0x56C1): ("Intel(R) Data Center GPU Flex 140", "Xe-HPG"),
}
"""(vendor, device) -> (model, architecture) for sysfs, which has ids, not names (NVIDIA's names come from
``/proc/driver/nvidia``).  From the captures in tests/fixtures/gpu (0x740c, 0x74a1) and the PCI id database."""

_TILES = (("Max 1550", 2), ("Max 1350", 2), ("Max 1100", 1))
"""Intel Data Center GPU Max stacks ("tiles") per card where sysfs does not show them."""


def architecture(vendor: str, model: str) -> str:
    """The microarchitecture of ``model`` ("" where the tables do not know it)."""
    for pattern, name in _ARCHITECTURES.get(vendor, ()):
        if re.search(_TOKEN.format(pattern), model, re.IGNORECASE):
            return name
    return ""


def pci_model(vendor_id: int, device_id: int) -> tuple[str, str]:
    """(model, architecture) for a PCI id; a generic name with the id where the table has none."""
    known = _PCI_MODELS.get((vendor_id, device_id))
    if known is not None:
        return known
    return f"{PCI_VENDORS.get(vendor_id, 'GPU')} [{vendor_id:04x}:{device_id:04x}]", ""


def intel_tiles(model: str) -> int:
    """Tiles of an Intel card by its model name (1 where unknown)."""
    return next((tiles for name, tiles in _TILES if name in model), 1)
