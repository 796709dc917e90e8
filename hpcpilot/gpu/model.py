"""What a node's GPUs are and which of them a rank got: plain data that travels in a rank's Ready message.

The inventory (``hpcpilot.gpu.inventory``) fills ``NodeGpus`` once per node from the vendor library, the vendor tool
or sysfs; the binding (``hpcpilot.gpu.binding``) picks the rank's share and the environment its payloads get. Rank 0
reads both from the node info each rank sends (keys ``NODE_GPUS_KEY`` and ``RANK_GPUS_KEY``) to send PanDA the GPU map
once per node and to ask for jobs whose architecture the rank's GPUs match. Everything here is a dict on the wire, so a
rank and rank 0 need not agree on anything but these field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

NODE_GPUS_KEY = "gpus"
"""node info key: the node's inventory (``NodeGpus.to_dict()``)."""
RANK_GPUS_KEY = "rank_gpus"
"""node info key: the rank's share (``RankGpus.to_dict()``)."""

VENDORS = ("NVIDIA", "AMD", "Intel")


@dataclass(frozen=True)
class Gpu:
    """One GPU (an Intel card with its tiles counts once) as its vendor's tools name it."""

    vendor: str  # one of VENDORS
    index: int  # the id the vendor's visibility variable takes for it (nvidia-smi / rocm-smi / Level Zero order)
    model: str  # "NVIDIA A100-SXM4-40GB", "AMD Instinct MI250X", "Intel(R) Data Center GPU Max 1550"
    vram_mb: int = 0  # total memory, MB (0 = unknown)
    uuid: str = ""
    pci_bus: str = ""
    tiles: int = 1  # Intel sub-devices; 1 elsewhere
    architecture: str = ""  # "Ampere", "CDNA2", "Xe-HPC" ("" = unknown)
    driver_version: str = ""
    framework: str = ""  # "CUDA" | "ROCm" | "Level Zero"
    framework_version: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gpu:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class NodeGpus:
    """A node's GPUs and where the facts came from ("nvml", "nvidia-smi", "amdsmi", "rocm-smi", "sysfs", ...;
    "none" on a CPU node)."""

    gpus: tuple[Gpu, ...] = ()
    source: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "gpus": [asdict(gpu) for gpu in self.gpus]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> NodeGpus:
        if not data:
            return cls()
        return cls(tuple(Gpu.from_dict(g) for g in data.get("gpus", ())), str(data.get("source", "none")))


@dataclass(frozen=True)
class RankGpus:
    """A rank's share of its node's GPUs: the GPUs (their ``Gpu.index``; Intel: ``"card.tile"`` entries too) and
    the variables its payloads get. ``how`` says who decided: "auto", "slurm" (kept Slurm's binding), "none"
    (every rank sees every GPU), "share" (ranks share GPUs, the site asked for it) or "cpu" (no GPU)."""

    devices: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    how: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {"devices": list(self.devices), "env": dict(self.env), "how": self.how}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RankGpus:
        if not data:
            return cls()
        devices = tuple(str(d) for d in data.get("devices", ()))
        return cls(devices, dict(data.get("env", {})), str(data.get("how", "cpu")))
