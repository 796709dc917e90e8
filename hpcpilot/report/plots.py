"""The PNG plots of ``hpcpilot report``: memory per rank, CPU efficiency per rank, events per second, and
which rank ran which job when.  The only module of the report that needs matplotlib, and it imports it only
when it draws (``pip install 'hpcpilot[plots]'``; without it ``write_plots`` writes nothing).

In the memory plot every line is labelled with its rank, PandaID and fitted leak (the ``leak=`` of jobMetrics,
kB/s); a job with one sample is a marker; the job's memory limit (``memoryLimitKB`` of its row,
limits_for_job) is a dotted line, or a note when it is far above the memory used; a rank running a leaking job
gets a red panel and title, and the verdict is also the PNG's ``Description`` text chunk.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from hpcpilot.monitor.leakfit import format_metric
from hpcpilot.report.defaults import KIB_PER_MIB
from hpcpilot.report.read import JobSeries, RunData, to_epoch
from hpcpilot.report.stats import (
    JobStats,
    LeakPolicy,
    cpu_efficiency,
    event_times,
    job_stats,
    memory_series,
    rank_timeline,
)

# numpy is imported inside the functions that use it, and matplotlib only when a plot is drawn: see the
# start-up note in hpcpilot/report/__init__.py

MAX_MEMORY_PANELS = 16
# one unit per quantity across the summary and the plots: memory MiB, memory rates kB/s (jobMetrics' leak=),
# time s (every time axis: seconds since the run's start), CPU s, events per second
TIME_LABEL = "s since run start"
ONE_SAMPLE_MARKER = "o"
LIMIT_COLOUR = "tab:purple"
LIMIT_ZOOM = 4.0  # a limit more than this many times the memory peak is noted, not drawn on the scale
_TIMELINE_COLOURS = {"finished": "tab:green", "failed": "tab:red", "member": "tab:blue"}


def plots_available() -> bool:
    """Whether matplotlib can be imported: it is an optional dependency (hpcpilot[plots])."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _run_start(run: RunData) -> float:
    """The first thing the record saw: a sample, a finished range or a job's startTime."""
    starts = [float(s.samples["time"][0]) for s in run.series.values() if len(s.samples)]
    starts += [t for t, _, _ in event_times(run)[:1]]
    starts += [t for t in (to_epoch(record.get("startTime")) for record in run.jobs) if t is not None]
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


# -- memory ---------------------------------------------------------------------------


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


# -- CPU, events, timeline ----------------------------------------------------------


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
