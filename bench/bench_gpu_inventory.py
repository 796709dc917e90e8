"""What the GPU inventory and binding cost a worker rank at its start, on a CPU node and on GPU nodes' sysfs.

Every worker rank takes the node's inventory itself (hpcpilot/gpu/inventory.py says why); this measures what
that costs, against what each rank already does at its start in the same run: ``node_info`` (CPU model,
memory, free disk).  Cases, each the median of ``--reps`` calls of ``rank_gpus`` (inventory + binding):

* this machine as it is (no /sys/class/drm, no vendor tool or library: the look-ups only);
* a CPU node's sysfs (tests/fixtures/gpu/roots/cpu-bmc-only: one ASPEED card, so nothing else is tried);
* GPU nodes' sysfs (the 4 x A100 and 8-GCD roots), for scale: what a GPU node pays before any vendor tool.

And the imports: the ``hpcpilot.gpu`` modules' share of ``import hpcpilot.worker`` in fresh interpreters
(``-X importtime``, median of ``--imports`` runs).

    .venv/bin/python -m bench.bench_gpu_inventory [--reps 2000] [--imports 9]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import REPO, bench_env, median, print_table
from hpcpilot.config.schema import GpuConfig
from hpcpilot.gpu.inventory import ROOT_VAR
from hpcpilot.gpu.local import LocalRank
from hpcpilot.gpu.rank import rank_gpus
from hpcpilot.node import node_info

ROOTS = REPO / "tests" / "fixtures" / "gpu" / "roots"
CASES = (("this machine (no sysfs, no tools)", None), ("CPU node sysfs (BMC video only)", "cpu-bmc-only"),
         ("4 x A100 (/proc/driver/nvidia)", "nvidia-a100x4"), ("8 MI250X GCDs (drm)", "amd-mi250x-frontier"))


def per_call(call: Callable[[], object], reps: int) -> float:
    """Median seconds per call over ``reps`` calls, timed in batches of 20 (the clock's resolution)."""
    batches = []
    for _ in range(max(1, reps // 20)):
        start = time.perf_counter()
        for _ in range(20):
            call()
        batches.append((time.perf_counter() - start) / 20)
    return median(batches)


def gpu_cost(root: str | None) -> Callable[[], object]:
    environ = dict(os.environ)
    if root is not None:
        environ[ROOT_VAR] = str(ROOTS / root)
    local, config = LocalRank(1, 4, "bench"), GpuConfig()
    return lambda: rank_gpus(config, local, 5, environ)


def import_share(runs: int, tmp: Path) -> tuple[float, float]:
    """(hpcpilot.gpu.* self time, whole ``import hpcpilot.worker``) in ms, medians over fresh interpreters with
    bytecode cached (bench/README.md: a first, discarded run fills the cache)."""
    env = bench_env(tmp)
    gpu, total = [], []
    for run in range(runs + 1):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import hpcpilot.worker"], env=env,
                              capture_output=True, text=True, check=True)
        rows = [line[len("import time:"):].split("|") for line in done.stderr.splitlines()
                if line.startswith("import time:")]
        parsed = [(int(r[0]), int(r[1]), r[2].strip()) for r in rows if r[0].strip().isdigit()]
        if run:
            gpu.append(sum(own for own, _, name in parsed if name.startswith("hpcpilot.gpu")) / 1000)
            total.append(next(cum for _, cum, name in parsed if name == "hpcpilot.worker") / 1000)
    return median(gpu), median(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--imports", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = per_call(lambda: node_info(Path(tmp)), args.reps)
    rows = []
    for label, root in CASES:
        cost = per_call(gpu_cost(root), args.reps)
        rows.append([label, f"{cost * 1e6:.0f} µs", f"{baseline * 1e6:.0f} µs", f"{cost / baseline:.2f}"])
    with tempfile.TemporaryDirectory() as tmp:
        gpu_ms, worker_ms = import_share(args.imports, Path(tmp))
    rows.append(["imports: hpcpilot.gpu.* of `import hpcpilot.worker`", f"{gpu_ms:.1f} ms", f"{worker_ms:.1f} ms",
                 f"{gpu_ms / worker_ms:.3f}"])
    print_table("GPU inventory + binding at a worker rank's start", [
        f"median per call of rank_gpus over {args.reps} calls; baseline: node_info() in the same run",
        f"imports: median of {args.imports} fresh interpreters, self time of the hpcpilot.gpu modules",
        "target: on a CPU node under 1 ms per rank start (next to a ~1 s pilot start-up), no process, no vendor "
        "import"],
        ["case", "measured", "baseline", "ratio"], rows)


if __name__ == "__main__":
    main()
