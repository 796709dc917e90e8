"""Worker-side sampling of one running payload into ``MonitorReport``s for rank 0.

Reading the process tree is cheap (a few small /proc files per process), so it happens on
every call.  Walking the workdir is not, so disk figures are refreshed only every
``disk_check_interval`` and the looping scan only every ``looping_check_interval``; in
between the last values are reported again.  The first call does everything, and so does
the final call (``payload_running=False``) for the disk figures, because the job record
wants the final work directory size.

Deciding is rank 0's job (``metrics.check_report``); this class only measures.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpcpilot.cgroups import CgroupMemory
from hpcpilot.config import MonitorConfig
from hpcpilot.monitor import diskscan
from hpcpilot.monitor.gpu import GpuSample, GpuStats, NvmlMonitor
from hpcpilot.monitor.metrics import SeriesStats
from hpcpilot.monitor.prmon import PrmonWriter
from hpcpilot.monitor.procfs import TreeReader
from hpcpilot.monitor.samples import MonitorReport, TreeSample

log = logging.getLogger(__name__)

_MIB = 1024.0 * 1024.0


def _size_or_zero(path: Path) -> int:
    """Size in bytes of a file, 0 when it does not exist (yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _largest_log_bytes(workdir: Path) -> int:
    """Largest top-level ``log.*`` file: pilot3 applies the stdout limit to transform logs too."""
    largest = 0
    try:
        with os.scandir(workdir) as entries:
            for entry in entries:
                if entry.name.startswith("log.") and entry.is_file(follow_symlinks=False):
                    largest = max(largest, entry.stat(follow_symlinks=False).st_size)
    except OSError:
        pass
    return largest


class PayloadSampler:
    """Measures one payload: process tree every call, disk and looping on their own intervals."""

    def __init__(
        self,
        pid: int,
        panda_id: int,
        workdir: Path,
        stdout_path: Path,
        output_lfns: Sequence[str],
        cfg: MonitorConfig,
        cgroup_memory: Callable[[], CgroupMemory | None] | None,
        prmon_path: Path,
        procfs: str = "/proc",
        start: float | None = None,
        gpu: NvmlMonitor | None = None,
    ) -> None:
        self.pid = pid
        self.panda_id = panda_id
        self.workdir = Path(workdir)
        self.stdout_path = Path(stdout_path)
        self.output_lfns = tuple(output_lfns)
        self.cfg = cfg
        self.start = start
        self._cgroup_memory = cgroup_memory
        # Every memory check then sees a Pss at most half a check interval old (procfs docstring).
        self._reader = TreeReader(pid, procfs, pss_max_age=cfg.memory_check_interval / 2)
        self._prmon_path = Path(prmon_path)
        self._writer: PrmonWriter | None = None
        self._exclude = diskscan.default_looping_exclude(cfg.stdout_is_activity)
        self._stats = SeriesStats(start)
        self._disk_at: float | None = None
        self._looping_at: float | None = None
        self._stdout_kb = 0
        self._workdir_mb = 0.0
        self._max_output_mb = 0.0
        self._free_space_mb = math.inf
        self._last_activity: float | None = None
        self._gpu = gpu  # None: no GPU to measure (a CPU rank, or no NVML): nothing is asked
        self._gpu_stats = GpuStats()

    @property
    def stats(self) -> SeriesStats:
        """The running statistics of the samples so far."""
        return self._stats

    @property
    def last_activity(self) -> float | None:
        """Epoch of the newest qualifying workdir modification seen so far."""
        return self._last_activity

    def sample(self, now: float, payload_running: bool = True) -> MonitorReport:
        """Measure now; reuse disk and looping figures that are not due yet."""
        if self.start is None:
            self.start = now
            self._stats.start = now
        tree = self._reader.read(now)
        if _due(self._disk_at, now, self.cfg.disk_check_interval) or not payload_running:
            self._check_disk(now)
        if payload_running and _due(self._looping_at, now, self.cfg.looping_check_interval):
            self._scan_activity(now)
        gpu = None
        if tree.nprocs:
            gpu = self._sample_gpu()
            self._stats.add(tree)
            self._write_row(tree, gpu)
        if not payload_running:
            self.close()
        return MonitorReport(
            panda_id=self.panda_id, time=now, tree=tree, cgroup=self._read_cgroup(),
            stdout_kb=self._stdout_kb, workdir_mb=self._workdir_mb, max_output_mb=self._max_output_mb,
            free_space_mb=self._free_space_mb, last_activity=self._last_activity,
            payload_running=payload_running, gpu=gpu,
        )

    def _sample_gpu(self) -> GpuSample | None:
        """The tree's GPU use (its pids from the tree read just now), or None without a GPU monitor."""
        if self._gpu is None:
            return None
        sample = self._gpu.sample(self._reader.last_pids)
        self._gpu_stats.add(sample)
        return sample

    def prmon_summary(self) -> dict[str, Any]:
        """The prmon JSON summary: Max and Avg of the tree and, with GPUs, of the GPU columns and ``HW.gpu``."""
        summary = self._stats.to_prmon_summary()
        if self._gpu is not None:
            gpu = self._gpu_stats.summary()
            summary["Max"].update(gpu["Max"])
            summary["Avg"].update(gpu["Avg"])
            summary["HW"] = {"gpu": self._gpu.hardware()}
        return summary

    def summary(self) -> dict[str, Any]:
        """prmon-shaped summary ({"Max": ..., "Avg": ...}) plus the final workdir size in MB."""
        summary = self._stats.to_prmon_summary()
        summary["Other"] = {"workdir_mb": round(self._workdir_mb, 3), "samples": self._stats.count}
        return summary

    def close(self) -> None:
        """Release the descriptors kept open on the payload's /proc files (and NVML, after the summary)."""
        self._reader.close()

    def close_gpu(self) -> None:
        """Let NVML go, once the summary (which names the GPUs) is written."""
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None

    def _check_disk(self, now: float) -> None:
        """Refresh stdout size, workdir size, largest output and free space."""
        self._disk_at = now
        stdout_bytes = max(_size_or_zero(self.stdout_path), _largest_log_bytes(self.workdir))
        self._stdout_kb = stdout_bytes // 1024
        self._workdir_mb = diskscan.dir_size_mb(self.workdir)
        sizes = [_size_or_zero(self.workdir / lfn) for lfn in self.output_lfns]
        self._max_output_mb = max(sizes, default=0) / _MIB
        try:
            self._free_space_mb = diskscan.free_space_mb(self.workdir)
        except OSError as exc:
            log.warning("job %s: cannot stat free space of %s: %s", self.panda_id, self.workdir, exc)

    def _scan_activity(self, now: float) -> None:
        """Look for a workdir modification newer than the newest known and recent.

        The walk stops at the first file newer than ``since``.  Requiring that file to be
        from the last check interval too means a file unpacked with an old mtime cannot stand
        in for a fresh one: the reported activity is then never staler than one interval.
        """
        self._looping_at = now
        known = self._last_activity if self._last_activity is not None else (self.start or now)
        since = max(known, now - self.cfg.looping_check_interval)
        newest = diskscan.newest_activity(self.workdir, since, self._exclude, floor=self._last_activity)
        if newest is not None and (self._last_activity is None or newest > self._last_activity):
            self._last_activity = newest

    def _read_cgroup(self) -> CgroupMemory | None:
        """The payload cgroup's memory, or None without a cgroup or when it cannot be read."""
        if self._cgroup_memory is None:
            return None
        try:
            return self._cgroup_memory()
        except OSError as exc:
            log.debug("job %s: cgroup memory unreadable: %s", self.panda_id, exc)
            return None

    def _write_row(self, tree: TreeSample, gpu: GpuSample | None) -> None:
        """Append to the prmon file; a full disk must not stop the monitoring."""
        if self._writer is None:
            self._writer = PrmonWriter(self._prmon_path, self.start if self.start is not None else tree.time,
                                       gpu=self._gpu is not None)
        try:
            self._writer.append(tree, gpu)
        except OSError as exc:
            log.warning("job %s: cannot append to %s: %s", self.panda_id, self._prmon_path, exc)


def _due(last: float | None, now: float, interval: float) -> bool:
    """True on the first call and whenever ``interval`` has passed since the last one."""
    return last is None or now - last >= interval
