"""PayloadSampler on a real payload process in a real workdir, with rank 0's verdict."""

from __future__ import annotations

import os
import pickle
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcpilot.cgroups import CgroupMemory
from hpcpilot.config import MonitorConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.metrics import Verdict, check_report, limits_for_job
from hpcpilot.monitor.prmon import read_prmon_text
from hpcpilot.monitor.sampler import PayloadSampler

MIB = 1024 * 1024
CFG = MonitorConfig(disk_check_interval=60.0, looping_check_interval=900.0, looping_limit=7200.0)


@pytest.fixture
def payload() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "job"
    work.mkdir()
    return work


def make_sampler(proc: subprocess.Popen[bytes], workdir: Path, cfg: MonitorConfig = CFG,
                 start: float | None = None,
                 cgroup_memory: Callable[[], CgroupMemory | None] | None = None) -> PayloadSampler:
    return PayloadSampler(pid=proc.pid, panda_id=4242, workdir=workdir,
                          stdout_path=workdir / "payload.stdout",
                          output_lfns=["out.root", "missing.root"], cfg=cfg, cgroup_memory=cgroup_memory,
                          prmon_path=workdir / "memory_monitor_output.txt", start=start)


def test_disk_figures_refresh_on_their_interval(payload: subprocess.Popen[bytes], workdir: Path) -> None:
    sampler = make_sampler(payload, workdir)
    t0 = time.time()
    first = sampler.sample(t0)
    assert first.panda_id == 4242 and first.payload_running
    assert first.tree.nprocs == 1 and first.tree.rss > 0
    assert first.cgroup is None
    assert first.free_space_mb > 0 and first.max_output_mb == 0.0 and first.stdout_kb == 0
    assert pickle.loads(pickle.dumps(first)) == first  # it travels over MPI
    (workdir / "out.root").write_bytes(b"x" * (3 * MIB))
    (workdir / "payload.stdout").write_bytes(b"y" * 5000)
    between = sampler.sample(t0 + 30)
    assert between.max_output_mb == 0.0 and between.stdout_kb == 0
    assert between.workdir_mb == first.workdir_mb
    due = sampler.sample(t0 + 60)
    assert due.max_output_mb == pytest.approx(3.0)
    assert due.stdout_kb == 4
    assert due.workdir_mb >= 3.0


def test_prmon_rows_and_summary(payload: subprocess.Popen[bytes], workdir: Path) -> None:
    sampler = make_sampler(payload, workdir)
    t0 = time.time()
    for step in range(3):
        sampler.sample(t0 + 10 * step)
    data = read_prmon_text(workdir / "memory_monitor_output.txt")
    assert len(data["Time"]) == 3 and data["wtime"] == [0, 10, 20]
    assert all(value == 1 for value in data["nprocs"])
    summary = sampler.summary()
    assert summary["Max"]["rss"] > 0 and summary["Avg"]["pss"] > 0
    assert summary["Other"]["samples"] == 3 == sampler.stats.count


def test_final_sample_after_payload_exit(payload: subprocess.Popen[bytes], workdir: Path) -> None:
    sampler = make_sampler(payload, workdir)
    t0 = time.time()
    sampler.sample(t0)
    payload.kill()
    payload.wait()
    (workdir / "out.root").write_bytes(b"x" * MIB)
    final = sampler.sample(t0 + 1, payload_running=False)
    assert final.tree.nprocs == 0 and not final.payload_running
    assert final.max_output_mb == pytest.approx(1.0)
    assert sampler.stats.count == 1
    assert len(read_prmon_text(workdir / "memory_monitor_output.txt")["Time"]) == 1


def test_cgroup_reader_is_used_and_its_failure_tolerated(payload: subprocess.Popen[bytes],
                                                          workdir: Path) -> None:
    cgroup = CgroupMemory(version=1, current_kb=9_000_000, peak_kb=9_500_000, swap_kb=0)
    sampler = make_sampler(payload, workdir, cgroup_memory=lambda: cgroup)
    report = sampler.sample(time.time())
    assert report.cgroup == cgroup
    verdict = check_report(report, limits_for_job(1000, 1, True, CFG), payload_start=report.time)
    assert verdict is not None and verdict.code == ErrorCode.PAYLOADEXCEEDMAXMEM

    def broken() -> CgroupMemory | None:
        raise PermissionError("memory.stat")

    assert make_sampler(payload, workdir, cgroup_memory=broken).sample(time.time()).cgroup is None


def _old_workdir(workdir: Path, mtime: float) -> None:
    for name in ("log.transform", "sub/data.root", "payload.stdout", "pandaJob.json"):
        path = workdir / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
        os.utime(path, (mtime, mtime))
    os.utime(workdir / "sub", (mtime, mtime))


def _verdict(payload: subprocess.Popen[bytes], workdir: Path, now: float,
             looping_check: bool = True) -> Verdict | None:
    start = now - 8000
    sampler = make_sampler(payload, workdir, start=start)
    report = sampler.sample(now)
    return check_report(report, limits_for_job(2000, 1, looping_check, CFG), payload_start=start)


def test_looping_without_fresh_file(payload: subprocess.Popen[bytes], workdir: Path) -> None:
    now = time.time()
    _old_workdir(workdir, now - 7900)
    os.utime(workdir / "payload.stdout")  # the pilot's view: stdout is not activity by default
    os.utime(workdir / "pandaJob.json")
    verdict = _verdict(payload, workdir, now)
    assert verdict is not None and verdict.code == ErrorCode.LOOPINGJOB
    assert "7200 s" in verdict.diag


def test_fresh_file_is_activity(payload: subprocess.Popen[bytes], workdir: Path) -> None:
    now = time.time()
    _old_workdir(workdir, now - 7900)
    os.utime(workdir / "sub" / "data.root")
    assert _verdict(payload, workdir, now) is None


def test_looping_check_off(payload: subprocess.Popen[bytes], workdir: Path) -> None:
    now = time.time()
    _old_workdir(workdir, now - 7900)
    assert _verdict(payload, workdir, now, looping_check=False) is None


def test_looping_scan_runs_on_its_interval(payload: subprocess.Popen[bytes], workdir: Path) -> None:
    now = time.time() - 5  # file timestamps come from a coarse clock that may lag time.time()
    _old_workdir(workdir, now - 7900)
    sampler = make_sampler(payload, workdir, start=now - 8000)
    first = sampler.sample(now)
    assert first.last_activity == pytest.approx(now - 7900)
    (workdir / "new.root").write_text("fresh")
    assert sampler.sample(now + 100).last_activity == first.last_activity
    later = sampler.sample(now + 900)
    assert later.last_activity is not None and later.last_activity > now
