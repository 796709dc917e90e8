"""What happened in a run, as numbers: per-job statistics, CPU efficiency, leak flags, events, timelines.

Definitions
-----------
* CPU efficiency of a rank = sum of its jobs' CPU time / sum of (wall time x cores).  CPU
  time is the job record's unrounded ``cpuSeconds`` (wait4 at the payload's end), else its
  whole-second ``cpuConsumptionTime``, else the last ``utime + stime`` of its samples;
  wall time is ``endTime - startTime`` of the record, else the span of its samples; cores
  is ``coreCount`` (default 1).  Idle time between jobs does not count.
  Overall is the same ratio over all jobs.
* Leak flag: the final-update leak fit (``hpcpilot.monitor.leakfit``, the established
  pilot's rules; the heartbeat rules for a job without a final record) of PSS+swap against
  time.  A job is flagged when the slope is at least ``--leak-threshold`` (given in MiB/min,
  default 1 MiB/min; printed as 17.1 kB/s, 1.4 GiB a day) *and* the fitted line grows by at least
  ``--leak-growth`` percent (default 10 %) of its own starting value over the fitted
  window.  The first condition ignores slow drifts, the second ignores absolute growth
  that is small next to the payload's footprint (a 2 GB job drifting 1.2 MiB/min for
  20 minutes is not a leak; the same job leaking it for 4 hours is).
* Events: ``nEvents`` of the job records; event ranges by their final status.  Events per
  second count finished event-range updates (``nEvents`` of the update when present, else
  ``lastEvent - startEvent + 1``, else 1) at the time rank 0 recorded them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcpilot.monitor.leakfit import LeakFit, fit_leak
from hpcpilot.records import CPU_SECONDS_KEY
from hpcpilot.report.defaults import DEFAULT_LEAK_GROWTH_PERCENT, DEFAULT_LEAK_MIB_PER_MIN, kb_per_s
from hpcpilot.report.read import JobSeries, RunData, field_number, to_epoch

# numpy, h5py and hpcpilot.runrecord are imported inside the functions that use them: see the start-up
# note in hpcpilot/report/__init__.py
if TYPE_CHECKING:
    import numpy as np

FINAL_STATES = frozenset({"finished", "failed", "holding", "closed", "cancelled"})


@dataclass(frozen=True)
class JobStats:
    """What the report says about one job."""

    panda_id: int
    rank: int
    state: str
    error_code: int
    cores: int
    cpu_s: float
    wall_s: float
    max_pss: int
    max_rss: int
    max_vmem: int
    max_swap: int
    n_events: int
    n_samples: int
    fit: LeakFit | None
    leaking: bool
    memory_limit_kb: int = 0  # the limit the job ran under (run-record row), 0 when unknown


@dataclass(frozen=True)
class LeakPolicy:
    mib_per_min: float = DEFAULT_LEAK_MIB_PER_MIN
    growth_percent: float = DEFAULT_LEAK_GROWTH_PERCENT

    @property
    def kb_per_s(self) -> float:
        """The slope threshold in the report's unit for memory rates (kB/s, jobMetrics' ``leak=``)."""
        return kb_per_s(self.mib_per_min)

    def describe(self) -> str:
        return f">= {self.kb_per_s:.1f} kB/s and >= {self.growth_percent:g} % growth over the fit window"


# -- one job ------------------------------------------------------------------------------


def _is_leaking(fit: LeakFit | None, times: np.ndarray, policy: LeakPolicy) -> bool:
    if fit is None or fit.slope < policy.kb_per_s:
        return False
    first, last = float(times[fit.start]), float(times[fit.stop - 1])
    growth = fit.slope * (last - first)
    level = fit.value(first)
    return level <= 0 or growth >= policy.growth_percent / 100.0 * level


def memory_series(series: JobSeries) -> tuple[np.ndarray, np.ndarray]:
    """(time, pss + swap in kB) of a job."""
    samples = series.samples
    return samples["time"].astype(float), (samples["pss"] + samples["swap"]).astype(float)


def _event_count(update: Mapping[str, Any]) -> int:
    if "nEvents" in update:
        return int(field_number(update, "nEvents", 1))
    if "startEvent" in update and "lastEvent" in update:
        return max(1, int(field_number(update, "lastEvent")) - int(field_number(update, "startEvent")) + 1)
    return 1


def _peak(samples: np.ndarray, name: str, record: Mapping[str, Any], wire: str) -> int:
    return max(int(samples[name].max()) if len(samples) else 0, int(field_number(record, wire)))


def _one_job(series: JobSeries, record: Mapping[str, Any], policy: LeakPolicy) -> JobStats:
    from hpcpilot.runrecord import MEMORY_LIMIT_KEY

    samples = series.samples
    state = str(record.get("state", "no final record"))
    times, memory = memory_series(series)
    fit = fit_leak(times, memory, final=state in FINAL_STATES)
    start, end = to_epoch(record.get("startTime")), to_epoch(record.get("endTime"))
    if start is not None and end is not None and end >= start:
        wall = end - start
    else:
        wall = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    cpu = job_cpu_seconds(record, samples)
    return JobStats(
        panda_id=series.panda_id, rank=series.rank, state=state,
        error_code=int(field_number(record, "pilotErrorCode")),
        cores=max(1, int(field_number(record, "coreCount", 1))), cpu_s=cpu, wall_s=wall,
        max_pss=_peak(samples, "pss", record, "maxPSS"), max_rss=_peak(samples, "rss", record, "maxRSS"),
        max_vmem=_peak(samples, "vmem", record, "maxVMEM"),
        max_swap=_peak(samples, "swap", record, "maxSWAP"),
        n_events=int(field_number(record, "nEvents")), n_samples=len(samples), fit=fit,
        leaking=_is_leaking(fit, times, policy), memory_limit_kb=int(field_number(record, MEMORY_LIMIT_KEY)))


def job_cpu_seconds(record: Mapping[str, Any], samples: np.ndarray) -> float:
    """The job's CPU time, s: the record's unrounded ``cpuSeconds`` (wait4 at the payload's end), else PanDA's
    whole-second ``cpuConsumptionTime``, else the last ``utime + stime`` of its samples (a job without a final
    record).  ``cpuConsumptionTime`` alone would make every job under 0.5 s of CPU look idle."""
    import numpy as np

    for key in (CPU_SECONDS_KEY, "cpuConsumptionTime"):
        cpu = field_number(record, key)
        if cpu > 0:
            return cpu
    return float(np.max(samples["utime"] + samples["stime"])) if len(samples) else 0.0


# -- the run ------------------------------------------------------------------------------


def job_stats(run: RunData, policy: LeakPolicy | None = None) -> list[JobStats]:
    """One JobStats per job seen in samples or job records, by rank then PandaID."""
    import numpy as np

    from hpcpilot.runrecord import SAMPLE_DTYPE

    policy = policy or LeakPolicy()
    rank_of = {panda_id: rank for rank, panda_id in run.series}
    records = {}
    for record in run.jobs:
        panda_id = int(field_number(record, "jobId"))
        rank = int(field_number(record, "rank", rank_of.get(panda_id, 0)))  # a record without rank: where it ran
        records[(rank, panda_id)] = record
    out = []
    for key in sorted(set(records) | set(run.series)):
        series = run.series.get(key) or JobSeries(key[0], key[1], np.zeros(0, dtype=SAMPLE_DTYPE))
        out.append(_one_job(series, records.get(key, {}), policy))
    return out


def cpu_efficiency(stats: list[JobStats]) -> tuple[dict[int, float], float | None]:
    """CPU time / (wall x cores) per rank (ranks with wall time only) and overall."""
    cpu: dict[int, float] = defaultdict(float)
    capacity: dict[int, float] = defaultdict(float)
    for job in stats:
        if job.wall_s > 0:
            cpu[job.rank] += job.cpu_s
            capacity[job.rank] += job.wall_s * job.cores
    per_rank = {rank: cpu[rank] / capacity[rank] for rank in sorted(capacity)}
    total = sum(capacity.values())
    return per_rank, (sum(cpu.values()) / total if total else None)


def event_times(run: RunData) -> list[tuple[float, int, int]]:
    """(recorded time, rank, events) of every finished event-range update."""
    out = []
    for series in run.series.values():
        for update in series.event_updates:
            if str(update.get("eventStatus", "")).lower() == "finished":
                stamp = to_epoch(update.get("recordedAt"))
                if stamp is not None:
                    out.append((stamp, series.rank, _event_count(update)))
    return sorted(out)


def rank_timeline(run: RunData) -> dict[int, list[tuple[float, float, int, str]]]:
    """Per rank, (start, end, PandaID, state) of every job it ran, in time order: from the job records'
    startTime/endTime, else (an event-service job's other ranks) the span of the rank's samples."""
    spans: dict[int, list[tuple[float, float, int, str]]] = defaultdict(list)
    seen = set()
    for record in run.jobs:
        start, end = to_epoch(record.get("startTime")), to_epoch(record.get("endTime"))
        panda_id, rank = int(field_number(record, "jobId")), int(field_number(record, "rank"))
        if start is not None and end is not None and end >= start:
            spans[rank].append((start, end, panda_id, str(record.get("state", "?"))))
            seen.add((rank, panda_id))
    for (rank, panda_id), series in run.series.items():
        if (rank, panda_id) not in seen and len(series.samples):
            times = series.samples["time"]
            spans[rank].append((float(times[0]), float(times[-1]), panda_id, "member"))
    return {rank: sorted(items) for rank, items in sorted(spans.items())}
