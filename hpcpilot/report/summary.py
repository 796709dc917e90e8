"""The text summary ``hpcpilot report`` prints: jobs and failures, events, CPU, memory, leaks."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.leakfit import format_metric
from hpcpilot.report.defaults import KIB_PER_MIB
from hpcpilot.report.read import RunData
from hpcpilot.report.stats import FINAL_STATES, JobStats, LeakPolicy, cpu_efficiency, job_stats


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
