"""``hpcpilot report RUN.h5``: what happened in a pilot run, from its HDF5 run record.

The summary lists jobs finished and failed, failures by pilot error code, events, CPU
efficiency per rank and overall, memory peaks per job, and the jobs flagged as leaking.
With matplotlib installed (``pip install 'hpcpilot[plots]'``) it also writes PNG plots:
memory (PSS+swap) per rank over time with the leak fits, CPU efficiency per rank, and
events per second over time.  In the memory plot every line is labelled with its rank,
PandaID and fitted leak (the ``leak=`` of jobMetrics, kB/s); a job with one sample is a
marker; the job's memory limit (``memoryLimitKB`` of its row, limits_for_job) is a dotted line,
or a note when it is far above the memory used; a rank running a leaking job gets a red panel
and title, and the verdict is also the PNG's ``Description`` text chunk.  Units are the same
everywhere: memory MiB, memory rates kB/s, times s (seconds since the run's start), events/s.

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

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.leakfit import LeakFit, fit_leak, format_metric
from hpcpilot.records import CPU_SECONDS_KEY

# numpy, h5py and hpcpilot.runrecord (which imports both) are imported inside the functions that
# use them: the command line imports this module on every rank of every run for
# ``add_report_parser``, and ~130 ms of numpy + h5py per worker rank tripled the pilot's start-up.
if TYPE_CHECKING:
    import numpy as np

DEFAULT_LEAK_MIB_PER_MIN = 1.0
DEFAULT_LEAK_GROWTH_PERCENT = 10.0
FINAL_STATES = frozenset({"finished", "failed", "holding", "closed", "cancelled"})
MAX_MEMORY_PANELS = 16
KIB_PER_MIB = 1024.0
# one unit per quantity across the summary and the plots: memory MiB, memory rates kB/s (jobMetrics' leak=),
# time s (every time axis: seconds since the run's start), CPU s, events per second
TIME_LABEL = "s since run start"
ONE_SAMPLE_MARKER = "o"
LIMIT_COLOUR = "tab:purple"
LIMIT_ZOOM = 4.0  # a limit more than this many times the memory peak is noted, not drawn on the scale


class RunFileError(Exception):
    """The run record cannot be read; the message is one line naming the file and the problem."""


@dataclass
class JobSeries:
    """The samples and event-range updates of one job on one rank."""

    rank: int
    panda_id: int
    samples: np.ndarray  # rows of runrecord.SAMPLE_DTYPE, in time order
    event_updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunData:
    path: Path
    attrs: dict[str, Any]
    nodes: dict[int, dict[str, Any]]
    series: dict[tuple[int, int], JobSeries]
    jobs: list[dict[str, Any]]


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
        return self.mib_per_min * KIB_PER_MIB / 60.0

    def describe(self) -> str:
        return f">= {self.kb_per_s:.1f} kB/s and >= {self.growth_percent:g} % growth over the fit window"


# -- loading ----------------------------------------------------------------------------


def _json_rows(dataset: Any) -> list[dict[str, Any]]:
    return [json.loads(text) for text in dataset.asstr()[:]]


def _attr_value(value: Any) -> Any:
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_rank(rank_group: Any, rank: int, run: RunData) -> None:
    import numpy as np

    from hpcpilot.runrecord import SAMPLE_DTYPE

    if "node" in rank_group:
        attrs = {key: _attr_value(v) for key, v in rank_group["node"].attrs.items()}
        run.nodes[rank] = json.loads(attrs["info"]) if "info" in attrs else attrs
    for name, job in rank_group.get("jobs", {}).items():
        samples = job["samples"][:] if "samples" in job else np.zeros(0, dtype=SAMPLE_DTYPE)
        samples = samples[np.argsort(samples["time"], kind="stable")]
        updates = _json_rows(job["event_ranges"]) if "event_ranges" in job else []
        run.series[(rank, int(name))] = JobSeries(rank, int(name), samples, updates)


def load_run(path: str | Path) -> RunData:
    """Read a run record; raises RunFileError with a one-line message when it cannot."""
    import h5py

    from hpcpilot.runrecord import FORMAT

    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: no such file")
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != FORMAT:
                raise RunFileError(f"{path}: not an hpcpilot run record (format attribute is "
                                   f"{_attr_value(f.attrs.get('format'))!r})")
            run = RunData(path, {k: _attr_value(v) for k, v in f.attrs.items()}, {}, {}, [])
            run.jobs = _json_rows(f["jobs"]) if "jobs" in f else []
            for name, rank_group in f.get("ranks", {}).items():
                _read_rank(rank_group, int(name), run)
    except RunFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise RunFileError(f"{path}: unreadable run record ({reason})") from None
    return run


# -- analysis ---------------------------------------------------------------------------


def _epoch(value: Any) -> float | None:
    """An epoch time from a number or a 'YYYY-MM-DD HH:MM:SS' (UTC) / ISO string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value > 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _number(record: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    try:
        value = float(record.get(key, default))
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


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
        return int(_number(update, "nEvents", 1))
    if "startEvent" in update and "lastEvent" in update:
        return max(1, int(_number(update, "lastEvent")) - int(_number(update, "startEvent")) + 1)
    return 1


def _peak(samples: np.ndarray, name: str, record: Mapping[str, Any], wire: str) -> int:
    return max(int(samples[name].max()) if len(samples) else 0, int(_number(record, wire)))


def _one_job(series: JobSeries, record: Mapping[str, Any], policy: LeakPolicy) -> JobStats:
    from hpcpilot.runrecord import MEMORY_LIMIT_KEY

    samples = series.samples
    state = str(record.get("state", "no final record"))
    times, memory = memory_series(series)
    fit = fit_leak(times, memory, final=state in FINAL_STATES)
    start, end = _epoch(record.get("startTime")), _epoch(record.get("endTime"))
    if start is not None and end is not None and end >= start:
        wall = end - start
    else:
        wall = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    cpu = job_cpu_seconds(record, samples)
    return JobStats(
        panda_id=series.panda_id, rank=series.rank, state=state,
        error_code=int(_number(record, "pilotErrorCode")),
        cores=max(1, int(_number(record, "coreCount", 1))), cpu_s=cpu, wall_s=wall,
        max_pss=_peak(samples, "pss", record, "maxPSS"), max_rss=_peak(samples, "rss", record, "maxRSS"),
        max_vmem=_peak(samples, "vmem", record, "maxVMEM"),
        max_swap=_peak(samples, "swap", record, "maxSWAP"),
        n_events=int(_number(record, "nEvents")), n_samples=len(samples), fit=fit,
        leaking=_is_leaking(fit, times, policy), memory_limit_kb=int(_number(record, MEMORY_LIMIT_KEY)))


def job_cpu_seconds(record: Mapping[str, Any], samples: np.ndarray) -> float:
    """The job's CPU time, s: the record's unrounded ``cpuSeconds`` (wait4 at the payload's end), else PanDA's
    whole-second ``cpuConsumptionTime``, else the last ``utime + stime`` of its samples (a job without a final
    record).  ``cpuConsumptionTime`` alone would make every job under 0.5 s of CPU look idle."""
    import numpy as np

    for key in (CPU_SECONDS_KEY, "cpuConsumptionTime"):
        cpu = _number(record, key)
        if cpu > 0:
            return cpu
    return float(np.max(samples["utime"] + samples["stime"])) if len(samples) else 0.0


def job_stats(run: RunData, policy: LeakPolicy | None = None) -> list[JobStats]:
    """One JobStats per job seen in samples or job records, by rank then PandaID."""
    import numpy as np

    from hpcpilot.runrecord import SAMPLE_DTYPE

    policy = policy or LeakPolicy()
    rank_of = {panda_id: rank for rank, panda_id in run.series}
    records = {}
    for record in run.jobs:
        panda_id = int(_number(record, "jobId"))
        rank = int(_number(record, "rank", rank_of.get(panda_id, 0)))  # a record without rank: where it ran
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
                stamp = _epoch(update.get("recordedAt"))
                if stamp is not None:
                    out.append((stamp, series.rank, _event_count(update)))
    return sorted(out)


# -- summary ----------------------------------------------------------------------------


def _error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return "unknown code"


def _mib(kb: float) -> str:
    return f"{kb / KIB_PER_MIB:.1f}"


def _job_states(stats: list[JobStats]) -> dict[int, str]:
    """One state per PandaID: an event-service job runs on several ranks, but only one of them holds its final
    record, so the others' "no final record" must not count as jobs of their own."""
    states: dict[int, str] = {}
    for job in stats:
        if job.panda_id not in states or states[job.panda_id] not in FINAL_STATES:
            states[job.panda_id] = job.state
    return states


def _summary_header(run: RunData, stats: list[JobStats]) -> list[str]:
    created = run.attrs.get("created")
    when = datetime.fromtimestamp(float(created), UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if created else "?"
    ranks = sorted({job.rank for job in stats} | set(run.nodes))
    hosts = sorted({str(info.get("hostname", info.get("node", "?"))) for info in run.nodes.values()})
    states = Counter(_job_states(stats).values())
    version = run.attrs.get("hpcpilot_version", "?")
    lines = [f"hpcpilot run record {run.path} (created {when}, hpcpilot {version})",
             f"ranks: {len(ranks)}  nodes: {', '.join(hosts) if hosts else 'none recorded'}",
             "jobs: " + (", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none")]
    failures: dict[int, list[int]] = defaultdict(list)
    for job in stats:
        if job.state == "failed" or job.error_code:
            failures[job.error_code].append(job.panda_id)
    lines.append("failures by error code:" + ("" if failures else " none"))
    for code, ids in sorted(failures.items()):
        lines.append(f"  {code:>5} {_error_name(code):<24} {len(ids)} job(s): {', '.join(map(str, ids))}")
    return lines


def _summary_events(run: RunData, stats: list[JobStats]) -> list[str]:
    status = Counter(str(u.get("eventStatus", "?")).lower()
                     for series in run.series.values() for u in series.event_updates)
    ranges = ", ".join(f"{n} {state}" for state, n in sorted(status.items())) or "none"
    return [f"events: {sum(job.n_events for job in stats)} (nEvents of job records); event ranges: {ranges}"]


def _summary_cpu(stats: list[JobStats]) -> list[str]:
    per_rank, overall = cpu_efficiency(stats)
    lines = ["CPU efficiency (CPU time / (wall x cores)):"]
    for rank, eff in per_rank.items():
        jobs = [j for j in stats if j.rank == rank and j.wall_s > 0]
        cpu, wall = sum(j.cpu_s for j in jobs), sum(j.wall_s * j.cores for j in jobs)
        lines.append(f"  rank {rank:>4}: {eff * 100:5.1f} %  (CPU {cpu:.3f} s / {wall:.1f} core-s)")
    lines.append(f"  overall  : {overall * 100:5.1f} %" if overall is not None
                 else "  overall  : no job with wall time")
    return lines


def _summary_jobs(stats: list[JobStats]) -> list[str]:
    """CPU, wall and the memory limit of every job: cpuSeconds is to the microsecond, so a 0.3 s job shows it."""
    lines = ["CPU time per job (s) and memory limit (MiB):",
             f"  {'PandaID':>12} {'rank':>5} {'cores':>5} {'CPU s':>10} {'wall s':>10} {'limit MiB':>10}"]
    for job in stats:
        limit = _mib(job.memory_limit_kb) if job.memory_limit_kb else "-"
        lines.append(f"  {job.panda_id:>12} {job.rank:>5} {job.cores:>5} {job.cpu_s:>10.3f} {job.wall_s:>10.1f} "
                     f"{limit:>10}")
    return lines


def _summary_memory(stats: list[JobStats]) -> list[str]:
    lines = ["memory peaks per job (MiB):",
             f"  {'PandaID':>12} {'rank':>5} {'state':<16} {'maxPSS':>8} {'maxRSS':>8} {'maxVMEM':>9} "
             f"{'maxSwap':>8} {'leak kB/s':>10} {'samples':>7}"]
    for job in stats:
        leak = format_metric(job.fit.slope) if job.fit else "-"
        lines.append(f"  {job.panda_id:>12} {job.rank:>5} {job.state:<16} {_mib(job.max_pss):>8} "
                     f"{_mib(job.max_rss):>8} {_mib(job.max_vmem):>9} {_mib(job.max_swap):>8} {leak:>10} "
                     f"{job.n_samples:>7}")
    return lines


def _summary_leaks(stats: list[JobStats], policy: LeakPolicy) -> list[str]:
    flagged = [job for job in stats if job.leaking]
    lines = [f"memory leaks (fit of PSS+swap vs time, flagged when {policy.describe()}):"]
    if not flagged:
        lines.append("  none flagged")
    for job in flagged:
        lines.append(f"  LEAK: job {job.panda_id} on rank {job.rank}: PSS+swap grows "
                     f"(leak={format_metric(job.fit.slope)} kB/s, chi2={format_metric(job.fit.chi2)}, "
                     f"{job.fit.n_points} points)")
    return lines


def summarize(run: RunData, policy: LeakPolicy | None = None) -> str:
    """The text summary of a run."""
    policy = policy or LeakPolicy()
    stats = job_stats(run, policy)
    lines = (_summary_header(run, stats) + _summary_events(run, stats) + _summary_cpu(stats)
             + _summary_jobs(stats) + _summary_memory(stats) + _summary_leaks(stats, policy))
    return "\n".join(lines) + "\n"


# -- plots ------------------------------------------------------------------------------


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _run_start(run: RunData) -> float:
    """The first thing the record saw: a sample, a finished range or a job's startTime."""
    starts = [float(s.samples["time"][0]) for s in run.series.values() if len(s.samples)]
    starts += [t for t, _, _ in event_times(run)[:1]]
    starts += [t for t in (_epoch(record.get("startTime")) for record in run.jobs) if t is not None]
    return min(starts) if starts else 0.0


def _job_label(job: JobStats, n_samples: int) -> str:
    """Legend entry of one job's memory line: where it ran and its fitted leak (the jobMetrics number)."""
    leak = f"leak={format_metric(job.fit.slope)} kB/s" if job.fit is not None else "no leak fit"
    one = " (one sample)" if n_samples == 1 else ""
    return f"rank {job.rank} job {job.panda_id}: {leak}{one}" + (" LEAKING" if job.leaking else "")


def _leak_verdict(leaks: list[JobStats]) -> str:
    if not leaks:
        return "no leak flagged"
    return "leaking: " + ", ".join(f"rank {j.rank} (job {j.panda_id}, leak={format_metric(j.fit.slope)} kB/s)"
                                   for j in leaks if j.fit is not None)


def _job_memory_line(ax: Any, job: JobStats, series: JobSeries, origin: float) -> float:
    """One job's PSS+swap (and its leak fit); returns its peak, MiB."""
    import numpy as np

    times, memory = memory_series(series)
    x, y = times - origin, memory / KIB_PER_MIB
    style: dict[str, Any] = {"color": "tab:red", "linewidth": 2.2} if job.leaking else {"linewidth": 1.2}
    if len(x) == 1:  # a short job's one sample is no line: a marker, and the legend says so
        style.update(marker=ONE_SAMPLE_MARKER, markersize=8, linestyle="none")
    ax.plot(x, y, label=_job_label(job, len(x)), gid=f"memory-{job.panda_id}", **style)
    if job.fit is not None:
        window = times[job.fit.start:job.fit.stop]
        fitted = np.array([job.fit.value(t) for t in window]) / KIB_PER_MIB
        ax.plot(window - origin, fitted, linestyle="--", color="black", linewidth=1.0)
    if job.leaking and job.fit is not None:
        ax.annotate(f"LEAK rank {job.rank} job {job.panda_id}: leak={format_metric(job.fit.slope)} kB/s",
                    xy=(x[-1], y[-1]), xytext=(0.98, 0.08), textcoords="axes fraction",
                    ha="right", va="bottom", color="tab:red", fontweight="bold", fontsize=10,
                    arrowprops={"arrowstyle": "->", "color": "tab:red"})
    return float(y.max())


def _memory_panel(ax: Any, rank: int, jobs: list[JobStats], run: RunData, origin: float) -> float:
    """One rank's jobs; returns the panel's peak, MiB (0 when none of its jobs has a sample)."""
    peak = 0.0
    for job in jobs:
        series = run.series.get((rank, job.panda_id))
        if series is not None and len(series.samples):
            peak = max(peak, _job_memory_line(ax, job, series, origin))
    if not peak:
        ax.text(0.5, 0.5, "no memory samples of this rank's jobs", ha="center", va="center", color="0.4",
                transform=ax.transAxes)
    leaking = [job for job in jobs if job.leaking and job.fit is not None]
    if leaking:
        names = ", ".join(f"job {job.panda_id} leak={format_metric(job.fit.slope)} kB/s" for job in leaking)
        ax.set_title(f"rank {rank}: LEAKING ({names})", color="tab:red", fontweight="bold", fontsize=10,
                     loc="left")
        ax.set_facecolor("#fff1f0")
    else:
        ax.set_title(f"rank {rank}: no leak", color="0.35", fontsize=10, loc="left")
    ax.set_ylabel("PSS+swap [MiB]")
    ax.grid(True, alpha=0.3)
    return peak


def _limit_lines(ax: Any, jobs: list[JobStats], top: float, peak: float) -> None:
    """The memory limit of the panel's jobs: a dotted line when it is on the (shared) scale, else the same line
    off the axis plus a note saying how far above the peak it is, so a small job's curve is not flattened."""
    for limit_kb in sorted({job.memory_limit_kb for job in jobs if job.memory_limit_kb}):
        limit = limit_kb / KIB_PER_MIB
        on_scale = limit <= top
        ax.axhline(limit, color=LIMIT_COLOUR, linestyle=":", linewidth=1.8, gid="memory-limit",
                   label=f"memory limit {limit:.0f} MiB" if on_scale else "_memory limit")
        if not on_scale:
            ratio = f" ({limit / peak:.0f}x the peak)" if peak > 0 else ""
            ax.text(0.99, 0.96, f"memory limit {limit:.0f} MiB: above the axis{ratio}", ha="right", va="top",
                    color=LIMIT_COLOUR, fontsize=8, transform=ax.transAxes)


def memory_figure(run: RunData, stats: list[JobStats], figure_cls: Any) -> Any:
    """The memory plot as a matplotlib Figure (saved by _plot_memory; tests read its lines)."""
    by_rank: dict[int, list[JobStats]] = defaultdict(list)
    for job in stats:
        by_rank[job.rank].append(job)
    ranks = sorted(by_rank, key=lambda r: (not any(j.leaking for j in by_rank[r]), r))[:MAX_MEMORY_PANELS]
    ranks = sorted(ranks) or [0]
    origin = _run_start(run)
    fig = figure_cls(figsize=(12, 1.2 + 2.1 * len(ranks)), layout="constrained")
    # one y scale for all ranks, so the misbehaving rank stands out at a glance
    axes = fig.subplots(len(ranks), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    peaks = [_memory_panel(ax, rank, by_rank.get(rank, []), run, origin) for ax, rank in zip(axes, ranks,
                                                                                              strict=True)]
    peak = max(peaks, default=0.0)
    limits = [job.memory_limit_kb / KIB_PER_MIB for rank in ranks for job in by_rank.get(rank, [])
              if job.memory_limit_kb]
    on_scale = [limit for limit in limits if peak <= 0 or limit <= LIMIT_ZOOM * peak]
    top = max([peak, *on_scale]) * 1.12 or 1.0
    axes[0].set_ylim(0.0, top)
    for ax, rank in zip(axes, ranks, strict=True):
        _limit_lines(ax, by_rank.get(rank, []), top, peak)
        if ax.get_legend_handles_labels()[0]:  # beside the panel: inside, it would hide the curves
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0.0)
    axes[-1].set_xlabel(TIME_LABEL)
    verdict = _leak_verdict([job for job in stats if job.leaking])
    shown = "" if len(ranks) == len(by_rank) else f" (showing {len(ranks)} of {len(by_rank)} ranks)"
    fig.suptitle(f"Memory per rank, dashed: leak fit, dotted: memory limit - {verdict}{shown}",
                 color="tab:red" if verdict != "no leak flagged" else "black", fontweight="bold")
    return fig


def _plot_memory(run: RunData, stats: list[JobStats], outdir: Path, figure_cls: Any) -> Path:
    fig = memory_figure(run, stats, figure_cls)
    path = outdir / "memory_per_rank.png"
    # the verdict in the PNG's text chunks too, for tools that index plots without looking at them
    verdict = _leak_verdict([job for job in stats if job.leaking])
    fig.savefig(path, dpi=100, metadata={"Title": "hpcpilot memory per rank", "Description": verdict})
    return path


def _plot_cpu(stats: list[JobStats], outdir: Path, figure_cls: Any) -> Path:
    per_rank, overall = cpu_efficiency(stats)
    fig = figure_cls(figsize=(max(8.0, 0.4 * len(per_rank) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    ranks = list(per_rank)
    values = [per_rank[r] * 100 for r in ranks]
    colors = ["tab:green" if v >= 70 else "tab:orange" if v >= 40 else "tab:red" for v in values]
    bars = ax.bar([str(r) for r in ranks], values, color=colors)
    ax.bar_label(bars, labels=[f"{v:.0f} %" for v in values], fontsize=9)
    if overall is not None:
        ax.axhline(overall * 100, color="black", linestyle="--", linewidth=1,
                   label=f"overall {overall * 100:.1f} %")
        ax.legend(loc="upper right")
    if not ranks:
        ax.text(0.5, 0.5, "no job with wall time in this run", ha="center", transform=ax.transAxes)
    ax.set_xlabel("rank")
    ax.set_ylabel("CPU time / (wall x cores) [%]")
    ax.set_ylim(0, max([100.0, *values]) * 1.15)
    ax.set_title("CPU efficiency per rank\n(green >= 70 %, orange >= 40 %, red below 40 %)", fontsize=11)
    path = outdir / "cpu_efficiency.png"
    fig.savefig(path, dpi=100)
    return path


def _plot_events(run: RunData, outdir: Path, figure_cls: Any) -> Path:
    import numpy as np

    origin = _run_start(run)
    events = event_times(run)
    fig = figure_cls(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    if events:
        times = np.array([t for t, _, _ in events])
        span = max(float(times[-1] - origin), 1.0)
        width = max(1.0, span / 60.0)
        edges = origin + width * np.arange(math.ceil(span / width) + 2)
        centres = edges[:-1] + width / 2 - origin
        ranks = sorted({r for _, r, _ in events})
        rates = []
        for rank in ranks:
            sel = [(t, n) for t, r, n in events if r == rank]
            counts, _ = np.histogram([t for t, _ in sel], bins=edges, weights=[n for _, n in sel])
            rates.append(counts / width)
        # stacked, so every rank's share is visible and the top edge is the total rate
        ax.stackplot(centres, *rates, labels=[f"rank {r}" for r in ranks], step="mid", alpha=0.85)
        ax.step(centres, np.sum(rates, axis=0), where="mid", color="black", linewidth=1.5, label="all ranks")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax.set_title(f"Events per second ({int(sum(n for _, _, n in events))} events in finished ranges, "
                     f"{width:.0f} s bins)")
    else:
        ax.text(0.5, 0.5, "no finished event ranges in this run", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_title("Events per second")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel("events / s")
    ax.grid(True, alpha=0.3)
    path = outdir / "events_per_second.png"
    fig.savefig(path, dpi=100)
    return path


def rank_timeline(run: RunData) -> dict[int, list[tuple[float, float, int, str]]]:
    """Per rank, (start, end, PandaID, state) of every job it ran, in time order: from the job records'
    startTime/endTime, else (an event-service job's other ranks) the span of the rank's samples."""
    spans: dict[int, list[tuple[float, float, int, str]]] = defaultdict(list)
    seen = set()
    for record in run.jobs:
        start, end = _epoch(record.get("startTime")), _epoch(record.get("endTime"))
        panda_id, rank = int(_number(record, "jobId")), int(_number(record, "rank"))
        if start is not None and end is not None and end >= start:
            spans[rank].append((start, end, panda_id, str(record.get("state", "?"))))
            seen.add((rank, panda_id))
    for (rank, panda_id), series in run.series.items():
        if (rank, panda_id) not in seen and len(series.samples):
            times = series.samples["time"]
            spans[rank].append((float(times[0]), float(times[-1]), panda_id, "member"))
    return {rank: sorted(items) for rank, items in sorted(spans.items())}


_TIMELINE_COLOURS = {"finished": "tab:green", "failed": "tab:red", "member": "tab:blue"}


def _plot_timeline(run: RunData, outdir: Path, figure_cls: Any) -> Path:
    timeline = rank_timeline(run)
    origin = _run_start(run)
    fig = figure_cls(figsize=(10, max(3.5, 0.45 * len(timeline) + 1.5)), layout="constrained")
    ax = fig.subplots()
    for row, items in enumerate(timeline.values()):
        bars = [(start - origin, max(end - start, 0.05)) for start, end, _, _ in items]
        colours = [_TIMELINE_COLOURS.get(state, "0.5") for _, _, _, state in items]
        ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=colours, edgecolor="black", linewidth=0.5)
        for (left, width), (_, _, panda_id, _) in zip(bars, items, strict=True):
            ax.text(left + width / 2, row, str(panda_id), ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(timeline)), [f"rank {rank}" for rank in timeline])
    ax.set_xlabel(TIME_LABEL)
    ax.set_title("Jobs per rank over time (green finished, red failed, blue event-service member; gaps are idle)",
                 fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    path = outdir / "rank_timeline.png"
    fig.savefig(path, dpi=100)
    return path


def write_plots(run: RunData, outdir: str | Path, policy: LeakPolicy | None = None,
                figure_cls: Any = None) -> list[Path]:
    """Write the PNG plots into ``outdir`` (created); [] when matplotlib is not installed.  ``figure_cls``
    (default matplotlib's Figure) lets a test keep the figures and read their labels and lines."""
    if not plots_available():
        return []
    if figure_cls is None:
        from matplotlib.figure import Figure as figure_cls

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stats = job_stats(run, policy or LeakPolicy())
    return [_plot_memory(run, stats, outdir, figure_cls), _plot_cpu(stats, outdir, figure_cls),
            _plot_events(run, outdir, figure_cls), _plot_timeline(run, outdir, figure_cls)]


# -- command line -----------------------------------------------------------------------


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report RUN.h5 [--plots DIR] [--no-plots] [--leak-threshold X] [--leak-growth P]``."""
    parser = subparsers.add_parser("report", help="summarize a run record (RUN.h5) and plot it",
                                   description="Summarize an hpcpilot run record and write PNG plots.")
    parser.add_argument("run", type=Path, metavar="RUN.h5", help="the run record written by rank 0")
    parser.add_argument("--plots", type=Path, metavar="DIR", default=None,
                        help="directory for the PNG plots (default: RUN_plots next to RUN.h5)")
    parser.add_argument("--no-plots", action="store_true", help="print the summary only")
    parser.add_argument("--leak-threshold", type=float, default=DEFAULT_LEAK_MIB_PER_MIN,
                        metavar="MIB_PER_MIN",
                        help=f"leak slope to flag, MiB/min (default {DEFAULT_LEAK_MIB_PER_MIN:g}, i.e. "
                             f"{LeakPolicy().kb_per_s:.1f} kB/s, the unit the report prints)")
    parser.add_argument("--leak-growth", type=float, default=DEFAULT_LEAK_GROWTH_PERCENT, metavar="PERCENT",
                        help=f"minimum growth over the fit window to flag, percent "
                             f"(default {DEFAULT_LEAK_GROWTH_PERCENT:g})")
    parser.set_defaults(func=report_main)
    return parser


def report_main(args: argparse.Namespace) -> int:
    """Print the summary and write the plots; 2 with a one-line error when the record is unreadable."""
    policy = LeakPolicy(getattr(args, "leak_threshold", DEFAULT_LEAK_MIB_PER_MIN),
                        getattr(args, "leak_growth", DEFAULT_LEAK_GROWTH_PERCENT))
    try:
        run = load_run(args.run)
        text = summarize(run, policy)
    except RunFileError as exc:
        print(f"hpcpilot report: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if getattr(args, "no_plots", False):
        return 0
    if not plots_available():
        print("hpcpilot report: plots skipped, matplotlib is not installed (pip install 'hpcpilot[plots]')",
              file=sys.stderr)
        return 0
    outdir = getattr(args, "plots", None) or Path(args.run).with_name(Path(args.run).stem + "_plots")
    try:
        paths = write_plots(run, outdir, policy)
    except OSError as exc:
        print(f"hpcpilot report: cannot write plots to {outdir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"plot: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcpilot.report RUN.h5 ...`` without the rest of the command line."""
    parser = argparse.ArgumentParser(prog="hpcpilot")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
    return report_main(args)


if __name__ == "__main__":
    sys.exit(main())
