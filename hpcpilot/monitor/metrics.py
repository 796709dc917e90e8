"""Pure monitoring math: per-job limits, the verdict on one report, and series statistics.

No I/O and no clock: time arrives inside the samples and reports, so rank 0's decisions
can be tested by constructing reports by hand (architecture lesson 11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcpilot.config import MonitorConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.samples import MonitorReport, TreeSample

MEMORY_FIELDS = ("vmem", "pss", "rss", "swap")
IO_FIELDS = ("rchar", "wchar", "read_bytes", "write_bytes")


@dataclass(frozen=True)
class Limits:
    """What one job may use; 0 switches a check off."""

    memory_kb: int
    looping_limit: float
    stdout_kb: int
    workdir_mb: float
    output_mb: float
    free_space_mb: float
    gpu_memory_kb: int = 0
    """GPU memory the payload may hold on any one of its GPUs ([gpu] memory_limit_mb)."""


@dataclass(frozen=True)
class Verdict:
    """A check that failed: the job's error code and a one-line diagnostic for PanDA."""

    code: ErrorCode
    diag: str


def limits_for_job(min_ram_count_mb: int, core_count: int, looping_check: bool,
                   cfg: MonitorConfig, gpu_memory_mb: int = 0) -> Limits:
    """The limits of one job from its definition and the site's monitor config.

    Memory follows pilot3's fallback rule: the job's minRamCount (the server sends the
    job's total, not a per-core figure) times the RSS grace; a job without minRamCount
    gets ``default_ram_per_core_mb`` per core.  Both are in MB, the limit is in kB.
    """
    cores = max(core_count, 1)
    ram_mb = min_ram_count_mb if min_ram_count_mb > 0 else cfg.default_ram_per_core_mb * cores
    memory_kb = int(ram_mb * (1.0 + cfg.rss_grace_percent / 100.0) * 1024)
    workdir_mb = cfg.max_workdir_mb * (1.0 + cfg.workdir_grace_percent / 100.0)
    return Limits(
        memory_kb=memory_kb,
        looping_limit=cfg.looping_limit if looping_check else 0.0,
        stdout_kb=cfg.stdout_limit_kb,
        workdir_mb=workdir_mb,
        output_mb=float(cfg.max_output_file_mb),
        free_space_mb=float(cfg.free_space_running_mb),
        gpu_memory_kb=max(gpu_memory_mb, 0) * 1024,
    )


def _free_space(report: MonitorReport, limits: Limits) -> Verdict | None:
    if limits.free_space_mb > 0 and report.free_space_mb < limits.free_space_mb:
        return Verdict(ErrorCode.NOLOCALSPACE, f"free local space {report.free_space_mb:.0f} MB "
                       f"is below the limit of {limits.free_space_mb:.0f} MB")
    return None


def _stdout(report: MonitorReport, limits: Limits) -> Verdict | None:
    if limits.stdout_kb > 0 and report.stdout_kb > limits.stdout_kb:
        return Verdict(ErrorCode.STDOUTTOOBIG, f"payload stdout is {report.stdout_kb} kB, "
                       f"over the limit of {limits.stdout_kb} kB")
    return None


def _workdir(report: MonitorReport, limits: Limits) -> Verdict | None:
    if limits.workdir_mb > 0 and report.workdir_mb > limits.workdir_mb:
        return Verdict(ErrorCode.USERDIRTOOLARGE, f"work directory is {report.workdir_mb:.0f} MB, "
                       f"over the limit of {limits.workdir_mb:.0f} MB")
    return None


def _output(report: MonitorReport, limits: Limits) -> Verdict | None:
    if limits.output_mb > 0 and report.max_output_mb > limits.output_mb:
        return Verdict(ErrorCode.OUTPUTFILETOOLARGE, f"largest output file is {report.max_output_mb:.0f} MB,"
                       f" over the limit of {limits.output_mb:.0f} MB")
    return None


def memory_used_kb(report: MonitorReport) -> int:
    """PSS + swap of the tree, or the cgroup's usage when that is larger (it sees page cache too)."""
    used = report.tree.pss + report.tree.swap
    if report.cgroup is not None and report.cgroup.current_kb > used:
        return report.cgroup.current_kb
    return used


def _memory(report: MonitorReport, limits: Limits) -> Verdict | None:
    used = memory_used_kb(report)
    if limits.memory_kb > 0 and used > limits.memory_kb:
        return Verdict(ErrorCode.PAYLOADEXCEEDMAXMEM, f"payload uses {used} kB (PSS+swap), "
                       f"over the limit of {limits.memory_kb} kB")
    return None


def _gpu_memory(report: MonitorReport, limits: Limits) -> Verdict | None:
    """The site's GPU memory limit, per GPU: PAYLOADEXCEEDMAXMEM, pilot3's code for a payload over its memory
    (PanDA has none for GPU memory; the diagnostic says which memory)."""
    gpu = report.gpu
    if limits.gpu_memory_kb > 0 and gpu is not None and gpu.max_gpu_kb > limits.gpu_memory_kb:
        return Verdict(ErrorCode.PAYLOADEXCEEDMAXMEM, f"payload uses {gpu.max_gpu_kb // 1024} MB of GPU memory on "
                       f"GPU {gpu.max_gpu}, over the site's limit of {limits.gpu_memory_kb // 1024} MB")
    return None


def idle_seconds(report: MonitorReport, payload_start: float) -> float:
    """Time since the newest activity; activity before the payload started does not count."""
    last = payload_start if report.last_activity is None else max(report.last_activity, payload_start)
    return report.time - last


def _looping(report: MonitorReport, limits: Limits, payload_start: float) -> Verdict | None:
    if limits.looping_limit <= 0 or not report.payload_running:
        return None
    idle = idle_seconds(report, payload_start)
    if idle > limits.looping_limit:
        return Verdict(ErrorCode.LOOPINGJOB, f"no file in the work directory modified for {idle:.0f} s,"
                       f" over the looping limit of {limits.looping_limit:.0f} s")
    return None


def check_report(report: MonitorReport, limits: Limits, payload_start: float) -> Verdict | None:
    """The first failed check, in pilot3's order of severity for the node, or None."""
    for check in (_free_space, _stdout, _workdir, _output, _memory, _gpu_memory):
        verdict = check(report, limits)
        if verdict is not None:
            return verdict
    return _looping(report, limits, payload_start)


class SeriesStats:
    """Running max/average of a payload's samples, kept in O(1) memory.

    Samples of an empty tree (payload gone) are ignored: they would drag the averages
    down and zero the CPU and I/O counters.  CPU and I/O are cumulative, so their
    largest value is kept; it does not drop when a child leaves the tree.
    """

    def __init__(self, start: float | None = None) -> None:
        self.start = start
        self.count = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.max: dict[str, float] = {}
        self.sum: dict[str, float] = {}

    def add(self, sample: TreeSample) -> None:
        """Account one sample."""
        if sample.nprocs == 0:
            return
        if self.first_time is None:
            self.first_time = sample.time
        self.last_time = sample.time
        self.count += 1
        for name in (*MEMORY_FIELDS, "nprocs", "nthreads", "utime", "stime", *IO_FIELDS):
            value = getattr(sample, name)
            self.max[name] = max(self.max.get(name, value), value)
            self.sum[name] = self.sum.get(name, 0) + value

    def average(self, name: str) -> float:
        """Mean of one field over the accounted samples (0 when there are none)."""
        return self.sum.get(name, 0) / self.count if self.count else 0.0

    def wall_time(self) -> float:
        """Seconds from the start (or the first sample) to the last sample."""
        if self.last_time is None or self.first_time is None:
            return 0.0
        origin = self.start if self.start is not None else self.first_time
        return max(self.last_time - origin, 0.0)

    def to_prmon_summary(self) -> dict[str, Any]:
        """The statistics in prmon's JSON summary shape: Max and Avg, prmon's lower-case keys.

        As in prmon, Max of I/O is the total and Avg of I/O is a rate in bytes per second.
        """
        wtime = self.wall_time()
        maximum: dict[str, Any] = {name: int(self.max.get(name, 0)) for name in (*MEMORY_FIELDS, *IO_FIELDS)}
        maximum.update(nprocs=int(self.max.get("nprocs", 0)), nthreads=int(self.max.get("nthreads", 0)),
                       utime=round(self.max.get("utime", 0.0), 2), stime=round(self.max.get("stime", 0.0), 2),
                       wtime=round(wtime, 2))
        average: dict[str, Any] = {name: round(self.average(name), 2) for name in MEMORY_FIELDS}
        average.update(nprocs=round(self.average("nprocs"), 2), nthreads=round(self.average("nthreads"), 2))
        average.update({name: round(self.max.get(name, 0) / wtime, 2) if wtime > 0 else 0.0
                        for name in IO_FIELDS})
        return {"Max": maximum, "Avg": average}
