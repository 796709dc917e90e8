"""Verified stage-out against ``cp``, and the looping scan against ``find -newermt``, side by side.

(a) One file (1 GiB; ``--quick`` 256 MiB) of random bytes in a fresh directory under /tmp,
staged out to another one: ``stage_out`` with the pilot's own ``cp`` (``PilotCopy``: checksum
while copying, destination verified once), ``stage_out`` with a plain command ``cp`` (what any
non-pilot tool gets: checksum of the source, copy, checksum of the destination), and the same
three steps with the checksum code of ``--before`` (default: the commit before this change,
``git show``, read-only), against ``cp --remove-destination -T`` of the same file.  The
runs alternate; each figure is the best of ``--reps``.  The source stays in the page cache for
all of them (it was just written), as a payload's fresh output usually is.  Every run writes
the same destination, removed before it (untimed).  The files are deleted at the end.

(b) A tree of 100,000 files (``--quick`` 20,000) in 100-file directories, with some of the
looping check's excluded names, every time in the past, scanned with nothing newer than
``since`` (the silent payload: a full walk, the case that costs): ``newest_activity`` with the
looping check's exclusions (``find`` since this change), the same with ``floor`` set to the
previous answer (as every looping check after the first calls it: ``find`` then prints only
the newest entries), ``scan_newest`` (the scandir walk with the new exclusion predicate), and
``newest_activity`` of ``--before``, against ``find TREE -newermt @since``.

    .venv/bin/python -m bench.bench_stage_scan [--quick] [--part stage|scan|both] [--reps 5]
        [--algo adler32|md5] [--before COMMIT]

adler32 is zlib's (CPython's); the table's notes say which version ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, print_table
from hpcpilot.config import StageConfig
from hpcpilot.monitor import diskscan
from hpcpilot.stageio import copytools

PLAIN_CP = "cp-command"
BEFORE = "7fa0ea6"  # the last commit before the checksum-while-copying and the find scan


def before_module(commit: str, path: str) -> ModuleType:
    """``path`` of ``commit`` as a module of its own (read-only ``git show``)."""
    text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout
    module = ModuleType(f"before_{Path(path).stem}")
    exec(compile(text, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def old_stage_out(old: ModuleType, source: Path, dst: Path, algo: str) -> None:
    """What ``_stage_out_one`` did before with ``cp``: checksum, copy, size, checksum of the copy."""
    value = old.compute(source, algo)
    copytools.run_command(["cp", "--remove-destination", "-T", str(source), str(dst)], 3600.0)
    assert dst.stat().st_size == source.stat().st_size
    old.verify_output(dst, algo, value)


def best_of(reps: int, runs: dict[str, Callable[[], object]],
            settle: Callable[[], object] | None = None) -> dict[str, float]:
    """The best wall time of each run over ``reps`` rounds, the runs alternating within a round;
    ``settle`` runs, untimed, before each run."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(reps):
        for name, run in runs.items():
            if settle is not None:
                settle()
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _write_random(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for index in range(size >> 20):
            handle.write(block[index % 7:] + block[: index % 7])  # no two blocks alike, cheap to make


def _settle(destination: Path) -> None:
    """No destination: each run creates it, none pays for removing the one before (untimed).

    On this VM the copy into fresh page-cache pages (``copy_folio_from_iter_atomic`` under
    perf) takes 0.2 s or 1.7 s for the same 1 GiB write, whoever writes: best-of-N is what
    compares the code.  A ``sync`` before each run made the slow case more frequent.
    """
    destination.unlink(missing_ok=True)


def bench_stage(size: int, reps: int, algo: str, before: str) -> None:
    """Part (a): one file of ``size`` bytes staged out three ways and copied by ``cp``; prints the table."""
    base = Path(tempfile.mkdtemp(prefix="bench-stage-", dir="/tmp"))
    try:
        work, out = base / "work", base / "out"
        work.mkdir()
        out.mkdir()
        source = work / "HITS.pool.root"
        _write_random(source, size)
        copytools.register_copytool(copytools.CommandTool(PLAIN_CP, ["cp", "--remove-destination", "-T"]))
        cfg = StageConfig(checksum_type=algo)
        plain = StageConfig(checksum_type=algo, copytool_out=PLAIN_CP)
        old = before_module(before, "hpcpilot/stageio/checksum.py")
        runs = {
            "cp": lambda: subprocess.run(["cp", "--remove-destination", "-T", str(source), str(out / "x.root")],
                                         check=True),
            "stage_out (pilot cp)": lambda: copytools.stage_out([(source, "x.root")], out, cfg),
            "stage_out (two reads)": lambda: copytools.stage_out([(source, "x.root")], out, plain),
            f"before ({before})": lambda: old_stage_out(old, source, out / "x.root", algo),
        }
        best = best_of(reps, runs, settle=lambda: _settle(out / "x.root"))
    finally:
        shutil.rmtree(base)
    rows = [[name, f"{value:.3f} s", f"{best['cp']:.3f} s", f"{value / best['cp']:.2f}",
             "at most 1.3" if "pilot" in name else "-"] for name, value in best.items() if name != "cp"]
    name = "zlib " + zlib.ZLIB_RUNTIME_VERSION
    cores = len(os.sched_getaffinity(0))
    print_table(f"verified stage-out of {size >> 20} MiB, {algo}",
                [f"best of {reps}, alternating; adler32 from {name}; {cores} cores; /tmp on this machine's disk"],
                ["run", "wall", "cp (same run)", "ratio", "target"], rows)


def make_tree(top: Path, files: int) -> None:
    """``files`` empty files in 100-file directories, some with excluded names; times from 1000 s on,
    a second apart in walk order (a payload's files are not all of one second)."""
    for index in range(files // 100):
        sub = top / f"g{index // 100}" / f"d{index}"
        sub.mkdir(parents=True)
        for name in range(97):
            (sub / f"f{name}.dat").touch()
        for name in ("pandaJob.json", "run.py", "prmon.txt"):
            (sub / name).touch()
    stamp = 1000.0
    for root, dirs, names in os.walk(top):
        for name in dirs + names:
            stamp += 1.0
            os.utime(os.path.join(root, name), (stamp, stamp))


def bench_scan(files: int, reps: int, before: str) -> None:
    """Part (b): a tree of ``files`` files scanned four ways and by ``find -newermt``; prints the table."""
    base = Path(tempfile.mkdtemp(prefix="bench-scan-", dir="/tmp"))
    try:
        top = base / "work"
        make_tree(top, files)
        exclude = diskscan.default_looping_exclude(stdout_is_activity=False)
        since = 5e8
        old = before_module(before, "hpcpilot/monitor/diskscan.py")
        old_exclude = old.default_looping_exclude(stdout_is_activity=False)
        newest = diskscan.newest_activity(top, since, exclude)  # what the looping check's next scan knows
        runs = {
            "find -newermt": lambda: subprocess.run(["find", str(top), "-newermt", f"@{since}"],
                                                    stdout=subprocess.DEVNULL, check=True),
            "newest_activity (find)": lambda: diskscan.newest_activity(top, since, exclude),
            "newest_activity (find), floor: the last answer": lambda: diskscan.newest_activity(top, since, exclude,
                                                                                                 floor=newest),
            "scan_newest (scandir walk)": lambda: diskscan.scan_newest(top, since, exclude),
            f"before ({before})": lambda: old.newest_activity(top, since, old_exclude),
        }
        answers = {diskscan.newest_activity(top, since, exclude), diskscan.scan_newest(top, since, exclude),
                   old.newest_activity(top, since, old_exclude)}
        best = best_of(reps, runs)
    finally:
        shutil.rmtree(base)
    baseline = best["find -newermt"]
    rows = [[name, f"{value * 1e3:.1f} ms", f"{baseline * 1e3:.1f} ms", f"{value / baseline:.2f}",
             "at most 1.5" if "(find)" in name else "-"] for name, value in best.items() if name != "find -newermt"]
    print_table(f"looping scan of {files:,} files, nothing newer than since",
                [f"best of {reps}, alternating; the scans answered {sorted(answers)} (one value: all the same)"],
                ["run", "wall", "find -newermt (same run)", "ratio", "target"], rows)


def main() -> None:
    """Parse the options and run the parts asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB and 20,000 files")
    parser.add_argument("--part", choices=["stage", "scan", "both"], default="both")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--algo", choices=["adler32", "md5"], default="adler32")
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--before", default=BEFORE, metavar="COMMIT", help=f"the 'before' code ({BEFORE})")
    args = parser.parse_args()
    size = (args.size_mib or (256 if args.quick else 1024)) << 20
    files = args.files or (20_000 if args.quick else 100_000)
    if args.part in ("stage", "both"):
        bench_stage(size, args.reps, args.algo, args.before)
    if args.part in ("scan", "both"):
        bench_scan(files, args.reps, args.before)


if __name__ == "__main__":
    main()
