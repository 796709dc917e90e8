"""Cost of one monitoring sample of a 20-process payload tree: procfs.read_tree vs psutil.

Starts real payload trees, times N samples of each method in the same run and prints a
table with the per-sample cost, the ratio and the targets (read_tree >= 10x cheaper than
psutil, < 2 ms per sample).  Two trees: 'sleep' (a shell with 19 sleep children, tiny
address spaces) and 'python' (a python parent with 19 python children holding 20 MB
each, address spaces like a real payload's).  Not a test: nothing is asserted.

    .venv/bin/python -m bench.bench_monitor_sample [--samples 200] [--kind sleep|python|both]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpcpilot.monitor.procfs import TreeReader, list_tree_pids, read_tree

TREE_SIZE = 20
SLEEP_TREE = f"for i in $(seq {TREE_SIZE - 1}); do sleep 600 & done; echo ready; wait"
PYTHON_CHILD = "import sys; block = b'x' * (20 * 1024 * 1024); print('ready', flush=True); sys.stdin.read()"
PYTHON_PARENT = f"""
import subprocess, sys
children = [subprocess.Popen([sys.executable, "-c", {PYTHON_CHILD!r}], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE) for _ in range({TREE_SIZE - 1})]
for child in children:
    child.stdout.readline()
print("ready", flush=True)
sys.stdin.read()
for child in children:
    child.stdin.close()
for child in children:
    child.wait()
"""


@contextlib.contextmanager
def payload_tree(kind: str) -> Iterator[int]:
    """Start a 20-process tree, yield its root pid, and make sure every member is gone after."""
    argv = ["/bin/sh", "-c", SLEEP_TREE] if kind == "sleep" else [sys.executable, "-c", PYTHON_PARENT]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        wait_for_tree(proc.pid)
        yield proc.pid
    finally:
        members = list_tree_pids(proc.pid)
        for pid in reversed(members):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        psutil.wait_procs([p for p in map(_process_or_none, members) if p is not None], timeout=5)


def _process_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def wait_for_tree(root: int) -> None:
    """The shell's sleeps print nothing when started, so poll (with sleeps) until all are there."""
    deadline = time.monotonic() + 30
    while len(list_tree_pids(root)) < TREE_SIZE and time.monotonic() < deadline:
        time.sleep(0.05)


def psutil_sample(root: int) -> tuple[int, int, float]:
    """The psutil way: find the tree, then memory_full_info + cpu_times + num_threads per process."""
    parent = psutil.Process(root)
    pss = threads = 0
    cpu = 0.0
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            pss += proc.memory_full_info().pss
            times = proc.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
            threads += proc.num_threads()
        except psutil.NoSuchProcess:
            continue
    return pss // 1024, threads, cpu


def per_sample_ms(function: Callable[[], object], samples: int) -> float:
    """Mean wall time of one call in ms, after one warm-up call."""
    function()
    begin = time.perf_counter()
    for _ in range(samples):
        function()
    return (time.perf_counter() - begin) * 1000.0 / samples


def bench(kind: str, samples: int) -> None:
    """Time all methods on one tree kind and print its table."""
    with payload_tree(kind) as root:
        sample = read_tree(root)
        pss, threads, _ = psutil_sample(root)
        warm = per_sample_ms(lambda: read_tree(root), samples)
        fresh_reader = TreeReader(root, pss_max_age=0.0)
        fresh = per_sample_ms(fresh_reader.read, samples)
        fresh_reader.close()
        cold = per_sample_ms(lambda: TreeReader(root).read(), samples)
        slow = per_sample_ms(lambda: psutil_sample(root), max(samples // 4, 10))
        nodes = sum(1 for name in os.listdir("/proc") if name.isdigit())
    print(f"\ntree '{kind}': {sample.nprocs} processes, {sample.nthreads} threads, "
          f"PSS {sample.pss} kB (psutil {pss} kB, {threads} threads); {nodes} processes on the node")
    rows = (("procfs.read_tree (kept reader, as the sampler)", warm),
            ("kept reader, smaps_rollup every sample", fresh),
            ("new TreeReader each sample (nothing kept)", cold),
            ("psutil (children + per-process full info)", slow))
    print(f"{'method':<48}{'ms/sample':>10}{'psutil/this':>13}")
    for label, value in rows:
        print(f"{label:<48}{value:>10.3f}{slow / value:>12.1f}x")
    print(f"targets: read_tree >= 10x cheaper than psutil (now {slow / warm:.1f}x), "
          f"< 2 ms per sample (now {warm:.3f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="samples per read_tree method")
    parser.add_argument("--kind", choices=("sleep", "python", "both"), default="both")
    args = parser.parse_args()
    for kind in ("sleep", "python") if args.kind == "both" else (args.kind,):
        bench(kind, args.samples)


if __name__ == "__main__":
    main()
