"""Start-up cost of the pilot: ``mpiexec -n 8 hpcpilot run`` over an empty access point, launch to exit.

Why: on a node every second of start-up is a second of allocation with no payload running, times
every rank.  The baseline is what no MPI pilot can avoid, ``mpiexec -n 8 python -c "from mpi4py
import MPI"``, measured in the same run, alternating with the pilot so that the machine's noise
hits both alike.  Target: pilot / baseline <= 1.5 (medians; issue 26, it was 2).  Every pilot
run must exit 0 and leave a summary.json.  A second table shows where a rank's start-up goes: the
imports of rank 0 and of a worker rank (``PYTHONPROFILEIMPORTTIME``), with the hpcpilot module that
pulled in each heavy one.
Not a test: nothing is asserted.

With ``--before COMMIT`` the pilot of that commit (a ``git worktree`` in the scratch directory, first on
PYTHONPATH) runs too, alternating with the other two, so a change is measured against its baseline in
the same run.

    .venv/bin/python -m bench.bench_startup [--reps 9] [--ranks 8] [--quick] [--no-bytecode-cache]
                                            [--before COMMIT] [--nodes N]

With ``--nodes N`` (root) the ranks are spread over N nodes made on this machine by tests/nodes/netns.py
(``mpiexec -hosts ... -ppn ranks/N -launcher ssh -launcher-exec AGENT``), pilot and baseline alike: e.g.
``--nodes 3 --ranks 6``, the issue-24 figure.  The import profile is left out there.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    bench_dir,
    bench_env,
    bytecode_note,
    check_pilot_run,
    launch,
    make_access_point,
    median,
    mpi_argv,
    pilot_argv,
    print_table,
    summary_span,
)

TARGET_RATIO = 1.5
BASELINE = [sys.executable, "-c", "from mpi4py import MPI"]
HEAVY = ("mpi4py.MPI", "numpy", "h5py", "requests", "ssl", "sqlite3", "http.server", "tomllib")
IMPORT_LINE = re.compile(r"^\[(\d+)\]\s*import time:\s*(\d+)\s*\|\s*(\d+)\s*\|( *)(\S+)")


def time_pilot(tmp: Path, name: str, ranks: int, env: dict[str, str], hosts: Sequence[str] = ()
               ) -> tuple[float, float]:
    """Wall seconds of one pilot run over an empty access point, and of its controller loop (from
    summary.json: the collective start-up phase and the wind-down); raises unless it ended cleanly."""
    run_dir = tmp / name
    access_point = make_access_point(run_dir / "access_point", [])
    with launch(pilot_argv(ranks, access_point, run_dir, log_dir=False, hosts=hosts), run_dir, env) as run:
        code = run.wait(timeout=300)
    problem = check_pilot_run(run, code, jobs=0)
    if problem:
        raise RuntimeError(f"pilot run {name}: {problem}")
    assert run.wall is not None
    return run.wall, summary_span(run)


def time_baseline(tmp: Path, name: str, ranks: int, env: dict[str, str], hosts: Sequence[str] = ()) -> float:
    """Wall seconds of ``mpiexec -n ranks python -c 'from mpi4py import MPI'``."""
    with launch(mpi_argv(ranks, BASELINE, hosts), tmp / name, env) as run:
        code = run.wait(timeout=300)
    if code != 0:
        raise RuntimeError(f"baseline {name}: exit status {code}: {run.output()[-400:]}")
    assert run.wall is not None
    return run.wall


def before_env(tmp: Path, commit: str, env: dict[str, str]) -> dict[str, str]:
    """The environment that runs the pilot of ``commit``: its tree (a detached git worktree in ``tmp``)
    first on PYTHONPATH, with its ``serve`` package."""
    tree = tmp / f"before-{commit}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), commit], check=True)
    return {**env, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "serve"), env["PYTHONPATH"]])}


def drop_before(tmp: Path, commit: str) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / f"before-{commit}")],
                   check=False)


def measure(tmp: Path, reps: int, ranks: int, env: dict[str, str], old_env: dict[str, str] | None = None,
            hosts: Sequence[str] = ()) -> tuple[list[float], list[float], list[float], list[float]]:
    """``reps`` alternating runs of each after one discarded warm-up of each (fills the .pyc cache);
    the last list is the ``--before`` pilot's wall times (empty without it)."""
    time_baseline(tmp, "warmup-baseline", ranks, env, hosts)
    time_pilot(tmp, "warmup-pilot", ranks, env, hosts)
    if old_env is not None:
        time_pilot(tmp, "warmup-before", ranks, old_env, hosts)
    pilot, loop, baseline, before = [], [], [], []
    for rep in range(reps):
        baseline.append(time_baseline(tmp, f"baseline-{rep}", ranks, env, hosts))
        if old_env is not None:
            before.append(time_pilot(tmp, f"before-{rep}", ranks, old_env, hosts)[0])
        wall, span = time_pilot(tmp, f"pilot-{rep}", ranks, env, hosts)
        pilot.append(wall)
        loop.append(span)
    return pilot, loop, baseline, before


def print_startup(pilot: list[float], loop: list[float], baseline: list[float], ranks: int,
                  bytecode_cache: bool, before: list[float], before_commit: str = "", nodes: int = 0) -> None:
    ratio = median(pilot) / median(baseline)
    old = ([[f"hpcpilot run at {before_commit}", median(before), min(before), max(before), "",
             median(before) / median(baseline), "", ""]] if before else [])
    print_table(
        f"Start-up: mpiexec -n {ranks}{f' across {nodes} nodes' if nodes else ''}, launch to exit, "
        f"median of {len(pilot)} alternating runs",
        ["pilot: hpcpilot run --site-config site_configs/laptop.toml, empty access point (HPCJobs.json = {}),",
         "       logs to stderr; every run exited 0 and wrote summary.json",
         "controller s = rank 0's controller loop (summary.json start to end): waiting for every rank's",
         "       check, the empty lease, stopping the ranks; the rest of the wall is start (imports) and exit",
         'baseline: python -c "from mpi4py import MPI"; one discarded warm-up run of each first',
         bytecode_note(bytecode_cache)],
        ["command", "median s", "min s", "max s", "controller s", "ratio", "target", "met"],
        [["baseline (mpi4py import)", median(baseline), min(baseline), max(baseline), "", 1.0, "", ""],
         *old,
         ["hpcpilot run", median(pilot), min(pilot), max(pilot), median(loop), ratio, f"<= {TARGET_RATIO:g}",
          "yes" if ratio <= TARGET_RATIO else "NO"]])


# ---- where the time goes --------------------------------------------------------------------


@dataclass(frozen=True)
class ImportEntry:
    """One line of ``-X importtime``: the module, its nesting level and cumulative microseconds."""

    name: str
    level: int
    cumulative_us: int


def parse_importtime(text: str) -> dict[int, list[ImportEntry]]:
    """The importtime lines of every rank (``mpiexec -l`` prefixes each line with ``[rank]``)."""
    by_rank: dict[int, list[ImportEntry]] = {}
    for line in text.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            rank, _self_us, cumulative, indent, name = match.groups()
            by_rank.setdefault(int(rank), []).append(ImportEntry(name, len(indent) // 2, int(cumulative)))
    return by_rank


def importers(entries: list[ImportEntry], index: int) -> list[str]:
    """The hpcpilot modules whose import pulled in ``entries[index]``, innermost first.

    importtime prints a module after everything it imported, so the importer of a line is the next
    line one level up.
    """
    chain, level = [], entries[index].level
    for entry in entries[index + 1:]:
        if entry.level < level:
            level = entry.level
            if entry.name.startswith("hpcpilot"):
                chain.append(entry.name)
    return chain


def import_rows(by_rank: dict[int, list[ImportEntry]]) -> list[list[object]]:
    """Total import time per rank, then the heavy modules and the largest top-level hpcpilot imports."""
    tops = {rank: {e.name: e for e in entries if e.level == 0} for rank, entries in by_rank.items()}
    rows: list[list[object]] = [["all imports", *(sum(e.cumulative_us for e in tops[r].values()) / 1000
                                                  for r in (0, 1)), ""]]
    for name in HEAVY:
        cells: list[object] = []
        via = ""
        for rank in (0, 1):
            found = [i for i, e in enumerate(by_rank[rank]) if e.name == name]
            cells.append(by_rank[rank][found[0]].cumulative_us / 1000 if found else "-")
            if found and not via:
                via = " < ".join(importers(by_rank[rank], found[0])) or "(from a function)"
        rows.append([name, *cells, via])
    hpcpilot_tops = sorted({name for top in tops.values() for name in top if name.startswith("hpcpilot")},
                           key=lambda n: -max(top[n].cumulative_us if n in top else 0 for top in tops.values()))
    for name in hpcpilot_tops[:8]:
        rows.append([name, *(tops[r][name].cumulative_us / 1000 if name in tops[r] else "-" for r in (0, 1)),
                     "(from a function)"])
    return rows


def profile_imports(tmp: Path, env: dict[str, str], bytecode_cache: bool) -> None:
    """One run with two ranks (so they do not wait for a core) and PYTHONPROFILEIMPORTTIME set."""
    run_dir = tmp / "importtime"
    access_point = make_access_point(run_dir / "access_point", [])
    argv = pilot_argv(2, access_point, run_dir, log_dir=False)
    argv.insert(1, "-l")  # Hydra: prefix every output line with [rank]
    with launch(argv, run_dir, {**env, "PYTHONPROFILEIMPORTTIME": "1"}) as run:
        code = run.wait(timeout=300)
    by_rank = parse_importtime(run.output())
    if code != 0 or set(by_rank) != {0, 1}:
        print(f"\nimport profile failed (exit {code}): {run.output()[-400:]}")
        return
    print_table("Where a rank's start-up goes: imports, ms (cumulative, wall), mpiexec -n 2 -l, "
                "PYTHONPROFILEIMPORTTIME=1",
                ["rank 0 is the controller, rank 1 a worker; '-' = not imported by that rank",
                 "imported by: the hpcpilot modules whose import pulled it in, innermost first",
                 bytecode_note(bytecode_cache)],
                ["module", "rank 0 ms", "rank 1 ms", "imported by"], import_rows(by_rank))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="timed runs of each command")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="3 repetitions (a smoke test, about 20 s)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as set")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (logs, summaries)")
    parser.add_argument("--before", metavar="COMMIT", default="",
                        help="also run the pilot of this commit, alternating with the others")
    parser.add_argument("--nodes", type=int, default=0,
                        help="spread the ranks over this many nodes made on this machine (tests/nodes/netns.py; root)")
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    cache = not args.no_bytecode_cache
    if args.nodes:
        across_nodes(args, reps, cache)
        return
    with bench_dir("hpcpilot-bench-startup-", args.keep) as tmp:
        env = bench_env(tmp, cache)
        old_env = before_env(tmp, args.before, env) if args.before else None
        try:
            pilot, loop, baseline, before = measure(tmp, reps, args.ranks, env, old_env)
        finally:
            if args.before:
                drop_before(tmp, args.before)
        print_startup(pilot, loop, baseline, args.ranks, cache, before, args.before)
        profile_imports(tmp, env, cache)


def across_nodes(args: argparse.Namespace, reps: int, cache: bool) -> None:
    """The same measurement with the ranks spread over ``--nodes`` nodes (namespaces, a bridge, Hydra's ssh
    launcher through the nodes' agent): what a multi-node allocation adds to start-up, pilot and baseline alike.
    The run directories live on the nodes' shared directory: a node's /tmp is its own."""
    from tests.nodes import netns

    reason = netns.probe()
    if reason:
        sys.exit(f"bench_startup --nodes: {reason}")
    if args.ranks % args.nodes:
        sys.exit(f"bench_startup --nodes: {args.ranks} ranks do not spread evenly over {args.nodes} nodes")
    with netns.make_nodes(args.nodes) as cluster:
        tmp = cluster.shared
        env = bench_env(tmp, cache)
        hosts = cluster.mpich_args(args.ranks // args.nodes)
        old_env = before_env(tmp, args.before, env) if args.before else None
        try:
            pilot, loop, baseline, before = measure(tmp, reps, args.ranks, env, old_env, hosts)
        finally:
            if args.before:
                drop_before(tmp, args.before)
        print_startup(pilot, loop, baseline, args.ranks, cache, before, args.before, args.nodes)


if __name__ == "__main__":
    main()
