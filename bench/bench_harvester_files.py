"""Cost of the Harvester access point's big files at rank 0: the event_status report and the range feed.

Two tables, the baseline measured in the same run:

* ms per 100-range report to ``event_status.dump.json`` while 10k or 1M entries wait in it (Harvester
  keeps an earlier ``.read``, so nothing is taken): the ``EventStatusFile.add`` of the code before the
  change, ``git show BASELINE_COMMIT:hpcpilot/harvester/files.py`` (bench/_common.py; or ``--baseline
  FILE``), against this tree's.  Target: the new cost flat in what waits (1M/10k about 1).
* rank-0 memory per range for a range feed of 1M ranges (``--quick``: 200k): the baseline parses the
  feed whole (``load_json_object``, as the old source did, and keeps the ranges); the new source
  checks it and leases 2 x 128 ranges.  Each is measured in a fresh process as peak RSS over the RSS
  before the feed is read.  Target: a 1M-range job within 100 MB of rank-0 RSS.

Not a test: nothing is asserted.

    .venv/bin/python -m bench.bench_harvester_files [--quick] [--reps 50] [--old-reps 3] [--baseline FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BASELINE_COMMIT, REPO, print_table

REPORT = 100
LEASE = 128


def baseline_source(path: str | None) -> str:
    """The old files.py: a file given, else the last commit's (read-only ``git show``)."""
    if path:
        return Path(path).read_text()
    return subprocess.run(["git", "show", f"{BASELINE_COMMIT}:hpcpilot/harvester/files.py"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout


def load_module(name: str, text: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    sys.modules[name] = module  # dataclasses and annotations look their module up
    exec(compile(text, module.__file__, "exec"), module.__dict__)  # our own last commit
    return module


def entries(first: int, n: int) -> dict[str, list[dict[str, Any]]]:
    return {"7": [{"eventRangeID": f"1-7-1-{i}-1", "eventStatus": "finished", "path": "/w/es/z.zip",
                   "type": "zip_output", "fsize": 123456, "chksum": "0badcafe",
                   "guid": "5c2f6b5e-4d7c-4f2a-9b1e-0d3c2a1b4e5f"} for i in range(first, first + n)]}


def ms_per_report(module: types.ModuleType, directory: Path, waiting: int, reps: int) -> float:
    """Median ms of one 100-range add with ``waiting`` entries already in the file.

    The waiting entries are written straight into the file (as an earlier pilot would have left
    them), then one untimed add lets the code read it back once, as it would at a restart.
    """
    directory.mkdir()
    dump = directory / "event_status.dump.json"
    with dump.open("w") as out:
        out.write('{"7": [')
        for first in range(0, waiting, 10_000):
            items = entries(first, min(10_000, waiting - first))["7"]
            out.write(("," if first else "") + ",".join(json.dumps(e) for e in items))
        out.write("]}")
    status = module.EventStatusFile(dump)
    status.add(entries(waiting, 1))
    waiting += 1
    times = []
    for rep in range(reps):
        start = time.perf_counter()
        status.add(entries(waiting + rep * REPORT, REPORT))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def write_feed(ap: Path, count: int) -> None:
    ap.mkdir()
    from tests.pilotrun import make_job

    (ap / "HPCJobs.json").write_text(json.dumps({"7": make_job(7, "true", eventService="True")}))
    with (ap / "JobsEventRanges.json").open("w") as out:
        out.write('{"7": [')
        for i in range(count):
            out.write(("," if i else "") + json.dumps(
                {"eventRangeID": f"1-7-1-{i}-1", "startEvent": i, "lastEvent": i, "scope": "mc23_13p6TeV",
                 "LFN": "EVNT.01234._000001.pool.root.1", "GUID": "5C2F6B5E-4D7C-4F2A-9B1E-0D3C2A1B4E5F",
                 "PFN": "/lustre/atlas/EVNT.01234._000001.pool.root.1"}))
        out.write("]}")


def child_memory(kind: str, ap: Path, baseline: Path) -> None:
    """In a fresh process: peak RSS growth (bytes) while the feed is read, printed as JSON."""
    import psutil

    if kind == "old":
        module = load_module("baseline_files", baseline.read_text())
    else:
        from hpcpilot.config import HarvesterConfig
        from hpcpilot.harvester import HarvesterSource
        from hpcpilot.records import JobSpec
        from tests.pilotrun import make_job
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if kind == "old":
        feed = module.load_json_object(ap / "JobsEventRanges.json", "JobsEventRanges.json")
        held = [r for items in feed.values() for r in items]
        del feed
        held = held[2 * LEASE:]  # leased, as the old source did (del in_hand[:n])
    else:
        source = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0))
        spec = JobSpec.from_wire(make_job(7, "true", eventService="True"))
        held = source.fetch_event_ranges(spec, LEASE).leased + source.fetch_event_ranges(spec, LEASE).leased
    seconds = time.perf_counter() - start
    print(json.dumps({"peak": high_water_rss() - before, "seconds": seconds, "held": len(held)}))


def high_water_rss() -> int:
    """Peak RSS of this process image (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory(kind: str, ap: Path, baseline: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.bench_harvester_files", "--child", kind, str(ap), str(baseline)]
    result = subprocess.run(argv, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="waiting 10k and 100k, a 200k-range feed")
    parser.add_argument("--reps", type=int, default=50, help="reports timed per case (new code)")
    parser.add_argument("--old-reps", type=int, default=3, help="reports timed per case (old code: seconds each)")
    parser.add_argument("--baseline", help="the old hpcpilot/harvester/files.py"
                        " (default: git show BASELINE_COMMIT:..., bench/_common.py)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    from hpcpilot.harvester import files as new

    old_text = baseline_source(args.baseline)
    old = load_module("baseline_files", old_text)
    sizes = (10_000, 100_000) if args.quick else (10_000, 1_000_000)
    feed_size = 200_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench_harvester_") as tmp:
        root = Path(tmp)
        rows, flat = [], {}
        for waiting in sizes:
            before = ms_per_report(old, root / f"old{waiting}", waiting, args.old_reps)
            after = ms_per_report(new, root / f"new{waiting}", waiting, args.reps)
            flat[waiting] = after
            rows.append([f"{waiting:,} waiting", before, after, f"{before / after:.0f}x"])
        rows.append([f"{sizes[1]:,}/{sizes[0]:,}", "-", f"{flat[sizes[1]] / flat[sizes[0]]:.2f}", "target about 1"])
        print_table(f"event_status.dump.json: ms per {REPORT}-range report (median; Harvester takes nothing)",
                    [f"baseline: {'--baseline ' + args.baseline if args.baseline else f'git show {BASELINE_COMMIT}'}"],
                    ["case", "old ms", "new ms", "old/new"], rows)

        baseline = root / "baseline_files.py"
        baseline.write_text(old_text)
        write_feed(root / "ap", feed_size)
        size = (root / "ap" / "JobsEventRanges.json").stat().st_size
        old_mem, new_mem = memory("old", root / "ap", baseline), memory("new", root / "ap", baseline)
        rows = [[name, m["peak"] / feed_size, m["peak"] / 2**20, m["seconds"]]
                for name, m in (("old: parsed whole", old_mem), ("new: streamed", new_mem))]
        rows.append(["old/new", old_mem["peak"] / max(new_mem["peak"], 1), "-", "-"])
        print_table(f"rank-0 memory for a {feed_size:,}-range feed ({size / 2**20:.0f} MiB), 2 x {LEASE} leased",
                    ["peak RSS growth in a fresh process; target: 1M ranges within 100 MB"],
                    ["source", "B per range", "MiB", "s to take"], rows)


if __name__ == "__main__":
    main()
