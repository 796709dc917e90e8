"""Workdir scans: free space, size, newest activity and the looping exclusion list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcpilot.monitor.diskscan import default_looping_exclude, dir_size_mb, free_space_mb, newest_activity

MIB = 1024 * 1024


def _file(path: Path, size: int = 0, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _age_dirs(top: Path, mtime: float) -> None:
    for directory in [p for p in top.rglob("*") if p.is_dir()]:
        os.utime(directory, (mtime, mtime))


def test_free_space_matches_statvfs(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert free_space_mb(tmp_path) == pytest.approx(st.f_bavail * st.f_frsize / MIB, rel=0.01)
    assert free_space_mb(tmp_path) > 0


def test_dir_size_counts_files_once_and_never_follows_links(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _file(work / "a.root", 2 * MIB)
    _file(work / "sub" / "deeper" / "b.log", MIB // 2)
    outside = _file(tmp_path / "outside.bin", 8 * MIB)
    (work / "link.bin").symlink_to(outside)
    (work / "dirlink").symlink_to(tmp_path)
    assert dir_size_mb(work) == pytest.approx(2.5, abs=0.01)


def test_dir_size_of_missing_directory_is_zero(tmp_path: Path) -> None:
    assert dir_size_mb(tmp_path / "nope") == 0.0


def test_newest_activity_returns_newest_when_nothing_is_fresh(tmp_path: Path) -> None:
    _file(tmp_path / "old1", mtime=1000.0)
    _file(tmp_path / "sub" / "old2", mtime=3000.0)
    _age_dirs(tmp_path, 500.0)
    assert newest_activity(tmp_path, since=5000.0, exclude=lambda _: False) == 3000.0


def test_newest_activity_finds_a_fresh_file_deep_down(tmp_path: Path) -> None:
    _file(tmp_path / "old", mtime=1000.0)
    _file(tmp_path / "a" / "b" / "fresh", mtime=9000.0)
    _age_dirs(tmp_path, 500.0)
    assert newest_activity(tmp_path, since=5000.0, exclude=lambda _: False) == 9000.0


def test_newest_activity_stops_at_the_first_fresh_entry(tmp_path: Path) -> None:
    for index in range(50):
        _file(tmp_path / f"f{index}", mtime=9000.0 + index)
    seen: list[str] = []

    def record(path: str) -> bool:
        seen.append(path)
        return False

    found = newest_activity(tmp_path, since=5000.0, exclude=record)
    assert found is not None and found > 5000.0
    assert len(seen) == 1


def test_newest_activity_honours_exclusions_and_prunes_directories(tmp_path: Path) -> None:
    _file(tmp_path / "old", mtime=1000.0)
    _file(tmp_path / "pilotstuff" / "fresh", mtime=9000.0)
    _file(tmp_path / "memory_monitor_output.txt", mtime=9000.0)
    _age_dirs(tmp_path, 500.0)
    os.utime(tmp_path / "pilotstuff", (9000.0, 9000.0))
    exclude = default_looping_exclude(stdout_is_activity=False)

    def hide(path: str) -> bool:
        return path == "pilotstuff" or exclude(path)

    assert newest_activity(tmp_path, since=5000.0, exclude=hide) == 1000.0


def test_newest_activity_of_empty_or_missing_dir_is_none(tmp_path: Path) -> None:
    assert newest_activity(tmp_path, since=0.0, exclude=lambda _: False) is None
    assert newest_activity(tmp_path / "missing", since=0.0, exclude=lambda _: False) is None


@pytest.mark.parametrize(("path", "hidden"), [
    ("memory_monitor_output.txt", True),
    ("memory_monitor_summary.json", True),
    ("pandaJob.json", True),
    ("job_setup.sh", True),
    ("pilotlog.txt", True),
    ("run_me.py", True),
    ("sub/helper.py", True),
    ("prmon.log", True),
    ("payload.stdout", True),
    ("payload.stderr", True),
    ("log.EVNTtoHITS", False),
    ("jobReport.json", False),
    ("HITS.pool.root", False),
    ("workDir/tmp.stdout.1", False),
])
def test_default_exclusions(path: str, hidden: bool) -> None:
    assert default_looping_exclude(stdout_is_activity=False)(path) is hidden


def test_stdout_counts_as_activity_when_configured() -> None:
    exclude = default_looping_exclude(stdout_is_activity=True)
    assert not exclude("payload.stdout")
    assert not exclude("payload.stderr")
    assert exclude("pandaJob.json")
