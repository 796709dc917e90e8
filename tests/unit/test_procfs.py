"""procfs tree reader: parser cases on fake /proc trees, accuracy cases on real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hpcpilot.monitor.procfs import CLK_TCK, TreeReader, list_tree_pids, read_tree

# --------------------------------------------------------------------------- fake /proc


def fake_proc(
    procfs: Path,
    pid: int,
    ppid: int,
    *,
    comm: str = "payload",
    state: str = "S",
    ticks: tuple[int, int, int, int] = (0, 0, 0, 0),
    threads: int = 1,
    vsize_kb: int = 1000,
    rollup: tuple[int, int, int] | None = (100, 200, 0),
    status: tuple[int, int] | None = (200, 0),
    io: tuple[int, int, int, int] | None = (0, 0, 0, 0),
    children: list[int] | None = None,
) -> None:
    """Write the /proc/<pid> files the reader uses; None leaves a file out."""
    base = procfs / str(pid)
    base.mkdir(parents=True)
    utime, stime, cutime, cstime = ticks
    fields = [state, ppid, pid, pid, 0, -1, 4194304, 10, 0, 0, 0, utime, stime, cutime, cstime,
              20, 0, threads, 0, 12345, vsize_kb * 1024, 50] + [0] * 28
    (base / "stat").write_text(f"{pid} ({comm}) " + " ".join(str(f) for f in fields) + "\n")
    if rollup is not None:
        pss, rss, swap = rollup
        (base / "smaps_rollup").write_text(
            "00400000-7fff00000000 ---p 00000000 00:00 0    [rollup]\n"
            f"Rss:  {rss} kB\nPss:  {pss} kB\nPss_Anon:  1 kB\nShared_Clean:  0 kB\n"
            f"Swap:  {swap} kB\nSwapPss:  0 kB\n")
    if status is not None:
        rss, swap = status
        (base / "status").write_text(f"Name:\t{comm}\nVmSize:\t{vsize_kb} kB\nVmRSS:\t{rss} kB\n"
                                     f"VmSwap:\t{swap} kB\nThreads:\t{threads}\n")
    if io is not None:
        rchar, wchar, rb, wb = io
        (base / "io").write_text(f"rchar: {rchar}\nwchar: {wchar}\nsyscr: 1\nsyscw: 1\n"
                                 f"read_bytes: {rb}\nwrite_bytes: {wb}\ncancelled_write_bytes: 0\n")
    if children is not None:
        task = base / "task" / str(pid)
        task.mkdir(parents=True)
        (task / "children").write_text(" ".join(str(c) for c in children) + (" " if children else ""))


@pytest.fixture
def procfs(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "self").mkdir()  # non-numeric entries must be ignored
    (root / "meminfo").write_text("MemTotal: 1 kB\n")
    return root


def test_comm_with_spaces_and_parentheses(procfs: Path) -> None:
    fake_proc(procfs, 100, 1, comm="evil ) (name) 7 8 9", ticks=(300, 100, 50, 25), threads=4,
              vsize_kb=5000, rollup=(1000, 2000, 30), io=(11, 22, 33, 44))
    sample = read_tree(100, str(procfs), now=42.0)
    assert sample.time == 42.0
    assert sample.utime == pytest.approx(350 / CLK_TCK)
    assert sample.stime == pytest.approx(125 / CLK_TCK)
    assert (sample.pss, sample.rss, sample.swap, sample.vmem) == (1000, 2000, 30, 5000)
    assert (sample.nprocs, sample.nthreads) == (1, 4)
    assert (sample.rchar, sample.wchar, sample.read_bytes, sample.write_bytes) == (11, 22, 33, 44)


def test_tree_by_parent_scan_sums_descendants_only(procfs: Path) -> None:
    fake_proc(procfs, 100, 1, ticks=(100, 0, 500, 0), rollup=(10, 20, 1), io=(1, 2, 3, 4))
    fake_proc(procfs, 101, 100, ticks=(100, 100, 0, 0), rollup=(10, 20, 1), io=(1, 2, 3, 4))
    fake_proc(procfs, 205, 101, threads=3, rollup=(10, 20, 1), io=(1, 2, 3, 4))
    fake_proc(procfs, 300, 1, ticks=(9999, 9999, 0, 0), rollup=(9999, 9999, 9))  # not ours
    sample = read_tree(100, str(procfs), now=1.0)
    assert (sample.nprocs, sample.nthreads) == (3, 5)
    assert (sample.pss, sample.rss, sample.swap) == (30, 60, 3)
    assert sample.utime == pytest.approx(700 / CLK_TCK)
    assert sample.stime == pytest.approx(100 / CLK_TCK)
    assert sample.rchar == 3 and sample.write_bytes == 12
    assert list_tree_pids(100, str(procfs)) == [100, 101, 205]


def test_scan_sees_new_children_and_forgets_dead_ones(procfs: Path) -> None:
    reader = TreeReader(100, str(procfs))
    fake_proc(procfs, 100, 1)
    fake_proc(procfs, 300, 1)
    assert reader.pids() == [100]
    fake_proc(procfs, 101, 100)
    fake_proc(procfs, 102, 101)
    assert reader.pids() == [100, 101, 102]
    for name in ("stat", "smaps_rollup", "status", "io"):
        (procfs / "102" / name).unlink()
    (procfs / "102").rmdir()
    assert reader.read(now=0.0).nprocs == 2


def test_vanished_processes_are_skipped(procfs: Path) -> None:
    # 101: smaps_rollup unreadable, status still there -> memory from status (pss = rss).
    # 102: stat was there, then everything else vanished -> skipped.
    # 999: listed as a child but has no directory -> skipped.
    fake_proc(procfs, 100, 1, children=[101, 102, 999], rollup=(10, 20, 0))
    fake_proc(procfs, 101, 100, children=[], rollup=None, status=(500, 7), ticks=(100, 0, 0, 0))
    fake_proc(procfs, 102, 100, children=[], rollup=None, status=None, io=None, ticks=(100, 0, 0, 0))
    sample = read_tree(100, str(procfs), now=0.0)
    assert sample.nprocs == 2
    assert (sample.pss, sample.rss, sample.swap) == (510, 520, 7)
    assert sample.utime == pytest.approx(100 / CLK_TCK)
    assert list_tree_pids(100, str(procfs)) == [100, 101, 102]


def test_children_files_are_walked_recursively(procfs: Path) -> None:
    fake_proc(procfs, 100, 1, children=[101])
    fake_proc(procfs, 101, 100, children=[102])
    fake_proc(procfs, 102, 101, children=[])
    fake_proc(procfs, 500, 102, children=[])  # ppid says ours, but the children files are authoritative
    assert list_tree_pids(100, str(procfs)) == [100, 101, 102]


def test_missing_io_and_zombies(procfs: Path) -> None:
    fake_proc(procfs, 100, 1, io=None, rollup=(10, 10, 0))
    fake_proc(procfs, 101, 100, state="Z", ticks=(200, 100, 0, 0), rollup=None, status=None, io=None)
    sample = read_tree(100, str(procfs), now=0.0)
    assert sample.nprocs == 2
    assert sample.pss == 10 and sample.rchar == 0
    assert sample.utime == pytest.approx(200 / CLK_TCK)
    assert list_tree_pids(100, str(procfs)) == [100]


def test_missing_root_gives_an_empty_sample(procfs: Path) -> None:
    sample = read_tree(4242, str(procfs), now=3.0)
    assert sample.nprocs == 0 and sample.pss == 0 and sample.time == 3.0
    assert list_tree_pids(4242, str(procfs)) == []


def test_garbage_stat_is_skipped(procfs: Path) -> None:
    fake_proc(procfs, 100, 1)
    (procfs / "100" / "stat").write_text("not a stat line")
    assert read_tree(100, str(procfs)).nprocs == 0


@pytest.mark.parametrize("bad", [0, -5, True, "12"])
def test_bad_root_pid_is_one_line_error(bad: object) -> None:
    with pytest.raises(ValueError, match="root pid must be a positive integer"):
        TreeReader(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- real processes


def _kill_tree(pid: int) -> None:
    for member in reversed(list_tree_pids(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            _kill_tree(proc.pid)
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _start(spawn: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    spawn.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


BURN_AND_REAP = """
import os, sys
child = os.fork()
if child == 0:
    total = 0
    for i in range(10_000_000):
        total += i * i
    os._exit(0)
os.waitpid(child, 0)
print("ready", flush=True)
sys.stdin.read()
"""


def test_cpu_of_reaped_children_is_counted_once(spawn: list[subprocess.Popen[str]]) -> None:
    proc = _start(spawn, [sys.executable, "-c", BURN_AND_REAP])
    sample = read_tree(proc.pid)
    assert proc.stdin is not None
    proc.stdin.close()
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    measured = sample.utime + sample.stime
    expected = usage.ru_utime + usage.ru_stime
    assert expected > 0.2
    assert measured == pytest.approx(expected, rel=0.10)


HOLD_MEMORY = """
import sys
block = b"x" * (200 * 1024 * 1024)
print("ready", flush=True)
sys.stdin.read()
"""


def test_memory_matches_psutil(spawn: list[subprocess.Popen[str]]) -> None:
    proc = _start(spawn, [sys.executable, "-c", HOLD_MEMORY])
    sample = read_tree(proc.pid)
    full = psutil.Process(proc.pid).memory_full_info()
    assert sample.nprocs == 1
    assert sample.rss >= 190 * 1024
    assert sample.pss == pytest.approx(full.pss / 1024, rel=0.10)
    assert sample.rss == pytest.approx(full.rss / 1024, rel=0.10)
    assert sample.vmem == pytest.approx(full.vms / 1024, rel=0.10)


def test_twenty_process_tree(spawn: list[subprocess.Popen[str]]) -> None:
    script = "for i in $(seq 19); do sleep 300 & done; echo ready; wait"
    proc = _start(spawn, ["/bin/sh", "-c", script])
    pids = list_tree_pids(proc.pid)
    assert len(pids) == 20 and pids[0] == proc.pid
    sample = read_tree(proc.pid)
    assert (sample.nprocs, sample.nthreads) == (20, 20)
    assert sample.rss > 0 and sample.pss > 0
    expected = {proc.pid} | {child.pid for child in psutil.Process(proc.pid).children(recursive=True)}
    assert set(pids) == expected
    _kill_tree(proc.pid)
    proc.wait()
    assert list_tree_pids(proc.pid) == []


# --------------------------------------------------------------------------- what is kept between reads


def _set_rollup(procfs: Path, pid: int, pss: int, rss: int) -> None:
    (procfs / str(pid) / "smaps_rollup").write_text(f"Rss: {rss} kB\nPss: {pss} kB\nSwap: 0 kB\n")


def _set_stat_rss(procfs: Path, pid: int, rss_kb: int) -> None:
    path = procfs / str(pid) / "stat"
    head, rest = path.read_text().rsplit(")", 1)
    fields = rest.split()
    fields[21] = str(rss_kb // (os.sysconf("SC_PAGE_SIZE") // 1024))
    path.write_text(head + ") " + " ".join(fields) + "\n")


def test_pss_is_estimated_between_rollup_readings(procfs: Path) -> None:
    fake_proc(procfs, 100, 1, rollup=(600, 1000, 0))
    _set_stat_rss(procfs, 100, 1000)
    reader = TreeReader(100, str(procfs), pss_max_age=3600)
    assert reader.read(0.0).pss == 600
    _set_rollup(procfs, 100, pss=9999, rss=9999)  # not re-read: stat rss unchanged
    _set_stat_rss(procfs, 100, 1040)
    assert (reader.read(0.0).pss, reader.read(0.0).rss) == (640, 1040)  # growth counted as private
    _set_stat_rss(procfs, 100, 500)  # moved by more than a tenth: re-read
    assert reader.read(0.0).pss == 9999
    fresh = TreeReader(100, str(procfs), pss_max_age=0)
    _set_rollup(procfs, 100, pss=123, rss=500)
    assert fresh.read(0.0).pss == 123


def test_threaded_process_children_of_every_thread(procfs: Path) -> None:
    fake_proc(procfs, 100, 1, threads=2, children=[101])
    (procfs / "100" / "task" / "150").mkdir()
    (procfs / "100" / "task" / "150" / "children").write_text("102 ")
    fake_proc(procfs, 101, 100, children=[])
    fake_proc(procfs, 102, 100, children=[])
    assert sorted(list_tree_pids(100, str(procfs))) == [100, 101, 102]


def test_descriptor_limit_falls_back_to_plain_reads(procfs: Path) -> None:
    fake_proc(procfs, 100, 1, children=[101, 102])
    fake_proc(procfs, 101, 100, children=[])
    fake_proc(procfs, 102, 100, children=[])
    reader = TreeReader(100, str(procfs), keep_open=1)
    assert reader.read(0.0).nprocs == 3
    assert reader.read(0.0).nprocs == 3
    reader.close()
    assert reader.read(0.0).nprocs == 3
