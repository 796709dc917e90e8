"""The sample and report types the monitoring code passes around.

One tree sample type (lesson 11): the procfs reader fills it, the pure metrics consume it,
the prmon writer prints it.  ``MonitorReport`` is what a worker rank sends to rank 0 every
report interval; it is pickled over MPI, so it holds plain numbers only (no paths, no
handles, no callables) and stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from hpcpilot.cgroups import CgroupMemory
from hpcpilot.monitor.gpu import GpuSample


class TreeSample(NamedTuple):
    """Resource use of a payload process tree at one instant.

    Memory is in kB (prmon's unit), CPU in seconds, I/O in bytes.  CPU and I/O are
    cumulative counters of the live tree (CPU includes the reaped children of live members).
    """

    time: float
    pss: int
    rss: int
    swap: int
    vmem: int
    utime: float
    stime: float
    nprocs: int
    nthreads: int
    rchar: int
    wchar: int
    read_bytes: int
    write_bytes: int

    @classmethod
    def empty(cls, time: float) -> TreeSample:
        """The sample of a tree with no live process (payload gone)."""
        return cls(time, 0, 0, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class MonitorReport:
    """One worker-side measurement of a running job, as rank 0 judges it.

    Disk figures may be up to ``disk_check_interval`` old and ``last_activity`` up to
    ``looping_check_interval`` old: the sampler refreshes them on their own schedules.
    """

    panda_id: int
    time: float
    tree: TreeSample
    cgroup: CgroupMemory | None
    stdout_kb: int
    workdir_mb: float
    max_output_mb: float
    free_space_mb: float
    last_activity: float | None
    payload_running: bool
    gpu: GpuSample | None = None
    """The payload's GPU use (hpcpilot.monitor.gpu); None where it has no GPU or none is measured."""
