"""GPU use of one payload, from NVML in the rank's own process: what prmon's nvidiamon measures.

Per sample, for the GPUs the rank's payloads see: the GPU memory of the payload's processes (NVML's per-process
``usedGpuMemory`` of the tree's pids) and the utilisation of the GPUs those processes are on.  The columns are
prmon's -- ``ngpus`` (GPUs with a process of the tree), ``gpusmpct`` and ``gpumempct`` (SM and memory-controller
utilisation, %, summed over those GPUs), ``gpufbmem`` (the tree's GPU memory, kB) -- and ``HW.gpu`` of its summary
names the GPUs (``nGPU``, ``gpu_<i>``: name, SM clock, total memory).  The rank owns its GPUs unless the site shares
them (``[gpu] share``), so a GPU's utilisation is its payload's.

Costs nothing where there is nothing to measure: no GPU (a CPU rank), no NVIDIA GPU, or no ``pynvml`` module
(``nvidia-ml-py``): ``NvmlMonitor.open`` then answers None, without importing anything, and no sample is taken.
Never a subprocess: one NVML call per GPU and quantity per sample.  AMD and Intel GPUs are not measured yet.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

from hpcpilot.gpu.model import Gpu

log = logging.getLogger(__name__)

GPU_COLUMNS = ("ngpus", "gpusmpct", "gpumempct", "gpufbmem")
"""prmon's GPU columns (nvidiamon), in its order, after the process columns of the text file."""
NVML_MODULE = "pynvml"
_told: set[str] = set()  # why no GPU is measured, said once per rank process


class GpuSample(NamedTuple):
    """A payload's GPU use at one instant (prmon's units: %, kB)."""

    ngpus: int
    gpusmpct: int
    gpumempct: int
    gpufbmem: int
    max_gpu_kb: int  # the most memory the payload holds on any one of its GPUs (the site limit's measure)
    max_gpu: str  # which GPU that is (its index), for the limit's message


def _say_once(why: str) -> None:
    if why not in _told:
        _told.add(why)
        log.info("GPU use of payloads not measured: %s", why)


class NvmlMonitor:
    """NVML handles of a rank's NVIDIA GPUs, opened once per payload and closed with it."""

    def __init__(self, nvml: Any, gpus: Sequence[Gpu]) -> None:
        self.nvml = nvml
        self.gpus = tuple(gpus)
        nvml.nvmlInit()
        self.handles = [self._handle(gpu) for gpu in self.gpus]

    @classmethod
    def open(cls, gpus: Sequence[Gpu]) -> NvmlMonitor | None:
        """A monitor of the NVIDIA GPUs among ``gpus``, or None (CPU rank, other vendors, no pynvml, NVML failing)."""
        nvidia = [gpu for gpu in gpus if gpu.vendor == "NVIDIA"]
        if not nvidia:
            return None
        if importlib.util.find_spec(NVML_MODULE) is None:
            _say_once(f"no {NVML_MODULE} module (pip install nvidia-ml-py)")
            return None
        nvml = importlib.import_module(NVML_MODULE)
        try:
            return cls(nvml, nvidia)
        except nvml.NVMLError as exc:
            _say_once(f"NVML: {exc}")
            return None

    def _handle(self, gpu: Gpu) -> Any:
        """By UUID where the inventory has one (NVML's index order need not be CUDA's), else by index."""
        if gpu.uuid:
            return self.nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
        return self.nvml.nvmlDeviceGetHandleByIndex(gpu.index)

    def sample(self, pids: Collection[int]) -> GpuSample:
        """The payload's GPU use now; a GPU NVML cannot answer for counts as unused this time."""
        tree = set(pids)
        ngpus = sm = mem = total_kb = max_kb = 0
        max_gpu = ""
        for gpu, handle in zip(self.gpus, self.handles, strict=True):
            try:
                ours = [p for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid in tree]
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle) if ours else None
            except self.nvml.NVMLError as exc:
                log.debug("NVML on GPU %s: %s", gpu.index, exc)
                continue
            if rates is None:  # none of the payload's processes is on this GPU
                continue
            kb = sum(int(p.usedGpuMemory or 0) for p in ours) // 1024  # None: not available (NVML)
            ngpus, sm, mem, total_kb = ngpus + 1, sm + int(rates.gpu), mem + int(rates.memory), total_kb + kb
            if kb > max_kb or not max_gpu:
                max_kb, max_gpu = max(kb, max_kb), str(gpu.index)
        return GpuSample(ngpus, sm, mem, total_kb, max_kb, max_gpu)

    def hardware(self) -> dict[str, Any]:
        """prmon's ``HW.gpu``: ``nGPU`` and, per GPU, its name, SM clock (MHz) and total memory (kB)."""
        out: dict[str, Any] = {"nGPU": len(self.gpus)}
        for i, (gpu, handle) in enumerate(zip(self.gpus, self.handles, strict=True)):
            try:
                clock = int(self.nvml.nvmlDeviceGetMaxClockInfo(handle, self.nvml.NVML_CLOCK_SM))
                total_kb = int(self.nvml.nvmlDeviceGetMemoryInfo(handle).total) // 1024
            except self.nvml.NVMLError:
                clock, total_kb = 0, gpu.vram_mb * 1024
            out[f"gpu_{i}"] = {"name": gpu.model, "sm_freq": clock, "total_mem": total_kb}
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError as exc:
            log.debug("NVML shutdown: %s", exc)


class GpuStats:
    """Max and average of a payload's GPU samples (prmon's summary keys), in O(1) memory."""

    def __init__(self) -> None:
        self.count = 0
        self.max: dict[str, int] = dict.fromkeys(GPU_COLUMNS, 0)
        self.sum: dict[str, int] = dict.fromkeys(GPU_COLUMNS, 0)

    def add(self, sample: GpuSample) -> None:
        self.count += 1
        for name in GPU_COLUMNS:
            value = getattr(sample, name)
            self.max[name] = max(self.max[name], value)
            self.sum[name] += value

    def summary(self) -> dict[str, dict[str, float]]:
        """``{"Max": {...}, "Avg": {...}}`` of the GPU columns, to merge into the prmon summary."""
        average = {name: round(self.sum[name] / self.count, 2) if self.count else 0.0 for name in GPU_COLUMNS}
        return {"Max": dict(self.max), "Avg": average}


def gpu_job_metrics(gpus: Sequence[Gpu]) -> dict[str, str]:
    """jobMetrics' ``GPU_name`` and ``nGPU`` as pilot3 writes them (the first GPU's name, blanks as '_'); empty
    without GPUs."""
    if not gpus:
        return {}
    return {"GPU_name": gpus[0].model.replace(" ", "_"), "nGPU": str(len(gpus))}
