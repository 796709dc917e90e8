"""The looping scan by ``find`` gives what the scandir walk gives, on random trees.

Excluded names and patterns (files and pruned directories), symlinks (to files, to directories,
dangling), odd names, unreadable directories and entries that vanish during the walk.  Where
something is newer than ``since`` each walk may stop at a different entry (their orders differ),
so both must return the time of *some* kept entry newer than ``since``; otherwise the very same
float.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcpilot.monitor import diskscan, findscan

REPO = Path(__file__).resolve().parents[2]
EXCLUDE = diskscan.default_looping_exclude(stdout_is_activity=False)
NAMES = ["a", "b.dat", "log.EVNT", "pandaJob.json", "x.py", "x.pyc", "pilotlog.txt", "hpcpilot.1.log",
         "prmon.txt", "payload.stdout", "__pycache__", "job.lib.tgz", "sp ace", "-name", "st*r", "br[ck",
         "nl\nname", "é.root", "back\\slash", "memory_monitor_output.txt", "x\nprmon", "dir.py", "q(u)o+te.py"]


def _mtime(rng: random.Random) -> float:
    return rng.choice([1000.0, 2000.5, 4999.999999, 5000.0, 5000.0000004, 7000.25, 9000.123456789]) + rng.randint(0, 9)


def _make(root: Path, rng: random.Random, depth: int = 0) -> None:
    """A random tree; times are set bottom-up so that directories keep theirs."""
    for name in rng.sample(NAMES, rng.randint(1, 7)):
        path = root / name
        roll = rng.random()
        if roll < 0.25 and depth < 3:
            path.mkdir()
            _make(path, rng, depth + 1)
        elif roll < 0.35:
            target = rng.choice(["/nonexistent", "/etc", str(root), "a"])
            os.symlink(target, path)
        else:
            path.write_text("x")
        os.utime(path, (1.0, _mtime(rng)), follow_symlinks=False)


def _kept_times(top: str) -> set[float]:
    """Every mtime the walk may answer: kept entries, excluded directories pruned."""
    times: set[float] = set()
    stack = [""]
    while stack:
        relative_dir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(top, relative_dir)))
        except OSError:
            continue
        for entry in entries:
            relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            if not EXCLUDE(relative):
                times.add(entry.stat(follow_symlinks=False).st_mtime)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(relative)
    return times


def _check(top: str, since: float, kept: set[float], floor: float | None = None) -> None:
    old = diskscan.scan_newest(top, since, EXCLUDE)
    decided, new = findscan.scan_with_find(top, since, EXCLUDE, floor)
    if not math.isfinite(since):
        assert (decided, diskscan.newest_activity(top, since, EXCLUDE, floor)) == (False, old)
        return
    assert decided
    if old is not None and old > since:
        assert new is not None and new > since and new in kept
    else:
        assert new == old
    assert diskscan.newest_activity(top, since, EXCLUDE, floor) == new


@pytest.mark.skipif(shutil.which("find") is None, reason="no find")
@pytest.mark.parametrize("seed", range(40))
def test_find_scan_equals_the_walk_on_random_trees(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    top = tmp_path / "work"
    top.mkdir()
    _make(top, rng)
    kept = _kept_times(str(top))
    for since in [0.0, 4999.999999, 5000.0, 7000.25, 9005.0, math.inf, rng.uniform(1000, 9010), *kept]:
        _check(str(top), since, kept)
    for floor in [0.0, 1e10, rng.uniform(1000, 9010), *kept]:  # any floor: the answer does not change
        _check(str(top), 9005.0, kept, floor)
        _check(str(top), rng.choice([*kept, 5000.0]), kept, floor)


def test_a_floor_prints_only_the_newest(tmp_path: Path) -> None:
    for index in range(20):
        (tmp_path / f"f{index}").write_text("x")
        os.utime(tmp_path / f"f{index}", (1.0, 1000.0 + index))
    argv = findscan.find_argv(str(tmp_path), 5000.0, EXCLUDE, floor=1018.0)
    printed = subprocess.run(argv, capture_output=True, check=True).stdout.split()
    assert sorted(printed) == [b"1018.0000000000", b"1019.0000000000"]
    assert findscan.scan_with_find(str(tmp_path), 5000.0, EXCLUDE, floor=1018.0) == (True, 1019.0)
    assert findscan.scan_with_find(str(tmp_path), 5000.0, EXCLUDE, floor=2000.0) == (True, 1019.0)  # gone: again


def test_an_exclude_that_is_not_by_name_walks_in_python(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("x")
    os.utime(tmp_path / "keep", (1.0, 3000.0))
    (tmp_path / "skip").write_text("x")
    assert diskscan.newest_activity(tmp_path, 5000.0, lambda path: path == "skip") == 3000.0


def test_find_argv_prunes_with_one_regex_or_with_names_where_it_must() -> None:
    argv = findscan.find_argv("w", 5000.0, findscan.NameExclude(["st*r", "a.b"], ["*.py", "x?"]))
    assert argv[argv.index("-newermt") + 1] == "@5000.000000000"
    assert argv[argv.index("-regex") + 1] == r".*/(a\.b|st\*r|[^/]*\.py|x[^/])"
    argv = findscan.find_argv("w", 5000.0, findscan.NameExclude(["st*r"], ["*.py", "[ab]*"]))
    assert "-regex" not in argv
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "-name"] == ["st\\*r", "*.py", "[ab]*"]


@pytest.mark.parametrize("seed", range(10))
def test_the_name_tests_agree_with_the_regex(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    top = tmp_path / "work"
    top.mkdir()
    _make(top, rng)
    bracketed = findscan.NameExclude(EXCLUDE.names, [*EXCLUDE.patterns, "[ab]*"])
    assert "-regex" not in findscan.find_argv(str(top), 0.0, bracketed)
    assert findscan.scan_with_find(str(top), 9005.0, bracketed) == (True, diskscan.scan_newest(top, 9005.0, bracketed))


def test_a_failing_find_leaves_the_answer_to_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_text("x")
    os.utime(tmp_path / "f", (1.0, 3000.0))
    monkeypatch.setattr(findscan, "find_argv", lambda *_: ["false"])
    assert findscan.scan_with_find(str(tmp_path), 5000.0, EXCLUDE) == (False, None)
    assert diskscan.newest_activity(tmp_path, 5000.0, EXCLUDE) == 3000.0


def test_a_stop_that_is_not_newer_is_left_to_the_walk() -> None:
    assert findscan.newest_of(b"1000.0\nN5000.0000000000\n", 5000.0) == (False, None)
    assert findscan.newest_of(b"1000.0\nN5000.0000010000\n", 5000.0) == (True, 5000.000001)
    assert findscan.newest_of(b"3000.0000000010\n3000.0000000020\n", 9000.0) == (True, 3000.000000002)


_SCAN_BOTH = """
import json, sys
from hpcpilot.monitor import diskscan, findscan
top, since = sys.argv[1], float(sys.argv[2])
exclude = diskscan.default_looping_exclude(stdout_is_activity=False)
print(json.dumps([diskscan.scan_newest(top, since, exclude), findscan.scan_with_find(top, since, exclude)]))
"""


def _without_root_reads() -> list[str]:
    """A command prefix under which root, too, is refused a mode-0 directory (no CAP_DAC_* bypass)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root reads every directory and setpriv is not there to drop that")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(shutil.which("find") is None, reason="no find")
def test_unreadable_directories_are_skipped_by_both(tmp_path: Path) -> None:
    top = tmp_path / "work"
    (top / "closed").mkdir(parents=True)
    (top / "closed" / "fresh").write_text("x")
    (top / "open").write_text("x")
    os.utime(top / "open", (1.0, 3000.0))
    os.utime(top / "closed", (1.0, 2000.0))
    (top / "closed").chmod(0)
    try:
        argv = [*_without_root_reads(), sys.executable, "-c", _SCAN_BOTH, str(top), "5000.0"]
        out = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                             check=True).stdout
    finally:
        (top / "closed").chmod(0o755)
    assert json.loads(out) == [3000.0, [True, 3000.0]]


@pytest.fixture
def churn(tmp_path: Path) -> Iterator[Path]:
    """A stable tree with future times, plus files and directories that come and go (times of now)."""
    top = tmp_path / "work"
    for index in range(30):
        sub = top / f"d{index}"
        sub.mkdir(parents=True)
        for name in ("a", "b", "pandaJob.json"):
            (sub / name).write_text("x")
            os.utime(sub / name, (1.0, 4e9 + index))
        os.utime(sub, (1.0, 4e9))
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for index in range(30):
                victim = top / f"d{index}" / "tmp"
                victim.mkdir(exist_ok=True)
                (victim / "f").write_text("x")
                shutil.rmtree(victim, ignore_errors=True)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    yield top
    stop.set()
    worker.join()


def test_entries_vanishing_during_the_walk_are_skipped_by_both(churn: Path) -> None:
    for _ in range(20):
        assert diskscan.scan_newest(churn, 5e9, EXCLUDE) == 4e9 + 29
        assert findscan.scan_with_find(str(churn), 5e9, EXCLUDE) == (True, 4e9 + 29)
