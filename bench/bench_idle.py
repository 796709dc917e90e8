"""Idle overhead of the pilot: CPU its own processes use while every worker rank's payload just sleeps.

Why: on a node the pilot shares the cores with the payloads, so whatever it burns while they run is
stolen from them.  ``mpiexec -n N hpcpilot run`` (site_configs/laptop.toml, monitoring as configured
there) gets N-1 jobs of ``sleep 20``, so every worker rank has a payload.  Once all payloads run, and
after a settling time, the CPU time (utime+stime) of the pilot's processes - mpiexec, hydra_pmi_proxy
and the python ranks, never the payloads (sleep and its /bin/sh, the descendants of a rank) - is
taken over a fixed window and divided by the window's wall time: the share of one core.  Target:
<= 1 % of a core per rank.  Baseline, in the same run: the same launch with ranks that only
``from mpi4py import MPI`` and sleep (what mpiexec and Hydra cost anyway).  Not a test: nothing is
asserted.

    .venv/bin/python -m bench.bench_idle [--ranks 4 8] [--report-intervals laptop 10] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Launched,
    ProcCpu,
    bench_dir,
    bench_env,
    bytecode_note,
    check_pilot_run,
    cpu_delta,
    launch,
    make_access_point,
    make_job,
    mpi_argv,
    pilot_argv,
    print_table,
    snapshot,
    wait_for_payloads,
)

TARGET_PERCENT = 1.0
LAPTOP = "laptop"  # --report-intervals value: keep laptop.toml's monitor.report_interval


@dataclass(frozen=True)
class Timing:
    """How long payloads sleep, how long to let the pilot settle, and the measured window (s)."""

    sleep: float
    settle: float
    window: float


@dataclass(frozen=True)
class Share:
    """Per cent of one core over the window: per rank, rank 0, mean worker rank, launcher."""

    per_rank: float
    rank0: float
    worker: float
    launcher: float


def share(delta: dict[int, ProcCpu], ranks: int, window: float) -> Share:
    """Turn per-process CPU seconds over ``window`` into per cent of a core."""
    def percent(cpu: float) -> float:
        return 100.0 * cpu / window

    pilot = [info for info in delta.values() if info.role != "payload"]
    workers = [info.cpu for info in pilot if info.role == "rank" and info.rank not in (None, 0)]
    return Share(per_rank=percent(sum(info.cpu for info in pilot)) / ranks,
                 rank0=percent(sum(info.cpu for info in pilot if info.role == "rank" and info.rank == 0)),
                 worker=percent(sum(workers) / len(workers)) if workers else float("nan"),
                 launcher=percent(sum(info.cpu for info in pilot if info.role == "launcher")))


def measure_window(run: Launched, timing: Timing) -> dict[int, ProcCpu]:
    """CPU used by each process of ``run`` over the window that starts ``settle`` s from now."""
    time.sleep(timing.settle)
    before = snapshot(run.pid, precise=True)
    begin = time.perf_counter()
    time.sleep(timing.window)
    after = snapshot(run.pid, precise=True)
    elapsed = time.perf_counter() - begin
    if abs(elapsed - timing.window) > 0.5:
        print(f"note: window took {elapsed:.2f} s instead of {timing.window:g} s (a busy machine)")
    return cpu_delta(before, after)


def pilot_share(tmp: Path, ranks: int, interval: str, timing: Timing, env: dict[str, str]) -> Share:
    """One pilot run with a sleeping payload on every worker rank; raises if it did not end cleanly."""
    run_dir = tmp / f"pilot-{ranks}-{interval}"
    jobs = [make_job(1000 + n, f"sleep {timing.sleep:g}") for n in range(ranks - 1)]
    access_point = make_access_point(run_dir / "access_point", jobs)
    settings = [] if interval == LAPTOP else [f"monitor.report_interval={interval}"]
    with launch(pilot_argv(ranks, access_point, run_dir, settings), run_dir, env) as run:
        if not wait_for_payloads(run.pid, "sleep", ranks - 1):
            raise RuntimeError(f"{run_dir}: the {ranks - 1} payloads did not all start")
        delta = measure_window(run, timing)
        code = run.wait(timeout=timing.sleep + 120)
    problem = check_pilot_run(run, code, jobs=ranks - 1)
    if problem:
        raise RuntimeError(f"{run_dir}: {problem}")
    return share(delta, ranks, timing.window)


def baseline_share(tmp: Path, ranks: int, timing: Timing, env: dict[str, str]) -> Share:
    """The same launch with ranks that initialise MPI and sleep: the launcher's own floor."""
    code = f"import time; from mpi4py import MPI; time.sleep({timing.settle + timing.window + 3:g})"
    with launch(mpi_argv(ranks, [sys.executable, "-c", code]), tmp / f"baseline-{ranks}", env) as run:
        time.sleep(2.0)  # until every rank has initialised MPI
        delta = measure_window(run, timing)
        run.wait(timeout=60)
    return share(delta, ranks, timing.window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--report-intervals", nargs="+", default=[LAPTOP, "10"],
                        help="monitor.report_interval values; 'laptop' = as in laptop.toml (1 s), 10 = pilot3's")
    parser.add_argument("--quick", action="store_true", help="4 ranks, laptop.toml only, a short window (~40 s)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as set")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (logs, summaries)")
    args = parser.parse_args()
    timing = Timing(sleep=12, settle=2, window=6) if args.quick else Timing(sleep=20, settle=4, window=12)
    ranks_list = [4] if args.quick else args.ranks
    intervals = [LAPTOP] if args.quick else args.report_intervals
    rows = []
    with bench_dir("hpcpilot-bench-idle-", args.keep) as tmp:
        env = bench_env(tmp, not args.no_bytecode_cache)
        for ranks in ranks_list:
            base = baseline_share(tmp, ranks, timing, env)
            for interval in intervals:
                got = pilot_share(tmp, ranks, interval, timing, env)
                label = "1 (laptop.toml)" if interval == LAPTOP else interval
                # The launcher and sleeping ranks usually use nothing measurable: no ratio to a zero.
                ratio = f"{got.per_rank / base.per_rank:.3g}" if base.per_rank >= 0.001 else "- (baseline 0)"
                rows.append([ranks, label, got.per_rank, f"{base.per_rank:.3f}", ratio, got.rank0,
                             got.worker, got.launcher, f"<= {TARGET_PERCENT:g}",
                             "yes" if got.per_rank <= TARGET_PERCENT else "NO"])
    print_table(
        f"Idle overhead: % of one core used by the pilot's own processes, {timing.window:g} s window "
        f"from {timing.settle:g} s after all payloads started",
        [f"payload `sleep {timing.sleep:g}` on every worker rank; site_configs/laptop.toml, other keys as there",
         "pilot processes = mpiexec + hydra_pmi_proxy + python ranks (payloads excluded); CPU = the scheduler's",
         "  ns runtime of each thread (/proc/PID/task/TID/sched), utime+stime ticks where threads changed",
         "baseline = the same mpiexec with ranks that import mpi4py and sleep, same window",
         bytecode_note(not args.no_bytecode_cache)],
        ["ranks", "report s", "%/rank", "baseline %/rank", "ratio", "rank 0 %", "worker %", "launcher %",
         "target %/rank", "met"], rows)


if __name__ == "__main__":
    main()
