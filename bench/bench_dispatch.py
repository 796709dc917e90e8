"""Dispatch rate of the pilot: M no-op jobs (``true``) through ``mpiexec -n 8 hpcpilot run``.

Why: with short jobs the pilot's own work per job - lease, hand-out, the job life (workdir, job
definition backup, payload start and monitoring, log tarball, stage-out, records), report - sets
how many jobs a node gets through.  The pilot runs as a site would run it (site_configs/laptop.toml,
a Harvester access point, logs to files, nothing skipped).  Baseline, in the same run: the same
number of ``subprocess.run(["true"])`` tasks through mpi4py.futures' MPIPoolExecutor on the same 8
ranks (``mpiexec -n 8 python -m mpi4py.futures bench/bench_dispatch.py --pool M``), i.e. bare MPI
task farming.  Reported: jobs/s from launch to exit and inside the dispatch loop, and the CPU time
of rank 0 (polled with psutil until it exits) and of the worker ranks.  Target: hpcpilot at least
as fast as the pool.  Not a test: nothing is asserted.

    .venv/bin/python -m bench.bench_dispatch [--jobs 300] [--ranks 8] [--quick]
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
    CpuTracker,
    Launched,
    bench_dir,
    bench_env,
    bytecode_note,
    check_pilot_run,
    launch,
    make_access_point,
    make_job,
    mpi_argv,
    pilot_argv,
    print_table,
    run_true,
    summary_span,
)

POOL_MARK = "pool-seconds:"


@dataclass(frozen=True)
class Result:
    """One runner's figures: wall from launch to exit, time inside its dispatch loop, CPU seconds."""

    wall: float
    loop: float
    rank0_cpu: float
    worker_cpu: float
    launcher_cpu: float


def tracked_run(argv: list[str], run_dir: Path, env: dict[str, str], timeout: float) -> tuple[Launched, int, Result]:
    """Run to the end while a tracker keeps every process's last CPU reading."""
    with launch(argv, run_dir, env) as run, CpuTracker(run.pid) as tracker:
        code = run.wait(timeout)
    assert run.wall is not None
    return run, code, Result(run.wall, 0.0, tracker.total("rank", 0),
                             tracker.total("rank") - tracker.total("rank", 0), tracker.total("launcher"))


def run_pilot(tmp: Path, jobs: int, ranks: int, env: dict[str, str]) -> Result:
    """The pilot over an access point of ``jobs`` no-op jobs; raises unless every job finished."""
    run_dir = tmp / "pilot"
    access_point = make_access_point(run_dir / "access_point", [make_job(10_000 + n, "true") for n in range(jobs)])
    run, code, result = tracked_run(pilot_argv(ranks, access_point, run_dir), run_dir, env, timeout=30 + jobs)
    problem = check_pilot_run(run, code, jobs)
    tarballs = len(list((run_dir / "outputs").glob("log.*.tgz")))
    if not problem and tarballs != jobs:
        problem = f"{tarballs} log tarballs staged out, {jobs} expected"
    if problem:
        raise RuntimeError(f"{run_dir}: {problem}")
    return Result(result.wall, summary_span(run), result.rank0_cpu, result.worker_cpu, result.launcher_cpu)


def run_pool(tmp: Path, jobs: int, ranks: int, env: dict[str, str]) -> Result:
    """The same number of ``true`` runs as MPIPoolExecutor tasks on the same number of ranks."""
    argv = mpi_argv(ranks, [sys.executable, "-m", "mpi4py.futures", str(Path(__file__).resolve()),
                            "--pool", str(jobs)])
    run, code, result = tracked_run(argv, tmp / "pool", env, timeout=30 + jobs)
    lines = [line for line in run.output("stdout").splitlines() if line.startswith(POOL_MARK)]
    if code != 0 or not lines:
        raise RuntimeError(f"pool run: exit status {code}: {run.output()[-400:]}")
    return Result(result.wall, float(lines[-1].split(":")[1]), result.rank0_cpu, result.worker_cpu,
                  result.launcher_cpu)


def pool_main(jobs: int) -> None:
    """Rank 0 of the pool run: farm out the tasks, print the loop's seconds."""
    from mpi4py.futures import MPIPoolExecutor

    with MPIPoolExecutor() as executor:
        begin = time.perf_counter()
        codes = list(executor.map(run_true, range(jobs)))
        elapsed = time.perf_counter() - begin
    if any(codes):
        raise SystemExit(f"{sum(1 for c in codes if c)} of {jobs} tasks failed")
    print(f"{POOL_MARK}{elapsed:.6f}", flush=True)


def row(label: str, result: Result, jobs: int, pool: Result | None) -> list[object]:
    rate = jobs / result.wall
    ratio = "" if pool is None else f"{rate / (jobs / pool.wall):.3g}"
    met = "" if pool is None else ("yes" if rate >= jobs / pool.wall else "NO")
    return [label, result.wall, rate, jobs / result.loop, result.rank0_cpu, 1000 * result.rank0_cpu / jobs,
            result.worker_cpu, result.launcher_cpu, ratio, "" if pool is None else ">= 1", met]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="no-op jobs for each runner")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="50 jobs (a smoke test, well under a minute)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as set")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (logs, summaries)")
    parser.add_argument("--pool", type=int, metavar="M", help=argparse.SUPPRESS)  # rank 0 of the pool run
    args = parser.parse_args()
    if args.pool is not None:
        pool_main(args.pool)
        return
    jobs = 50 if args.quick else args.jobs
    with bench_dir("hpcpilot-bench-dispatch-", args.keep) as tmp:
        env = bench_env(tmp, not args.no_bytecode_cache)
        run_pool(tmp / "warmup", args.ranks, args.ranks, env)  # fills the .pyc cache; discarded
        run_pilot(tmp / "warmup", args.ranks, args.ranks, env)
        pool = run_pool(tmp, jobs, args.ranks, env)
        pilot = run_pilot(tmp, jobs, args.ranks, env)
    print_table(
        f"Dispatch: {jobs} no-op jobs (`true`) on mpiexec -n {args.ranks} ({args.ranks - 1} worker ranks)",
        ["hpcpilot: site_configs/laptop.toml as is, Harvester access point, --log-dir; every job finished and its",
         "  log tarball was staged out; loop = controller start to last summary (summary.json)",
         "pool: mpi4py.futures MPIPoolExecutor.map of subprocess.run(['true']); loop = map start to last result",
         "CPU = utime+stime polled every 50 ms with psutil until each process exits (payloads excluded)",
         "one discarded warm-up run of each first, with as many jobs as ranks",
         bytecode_note(not args.no_bytecode_cache)],
        ["runner", "wall s", "jobs/s", "jobs/s in loop", "rank 0 CPU s", "rank 0 ms/job", "workers CPU s",
         "launcher CPU s", "ratio", "target", "met"],
        [row("MPIPoolExecutor", pool, jobs, None), row("hpcpilot run", pilot, jobs, pool)])


if __name__ == "__main__":
    main()
