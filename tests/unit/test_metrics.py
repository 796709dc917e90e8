"""Pure monitoring math: limits, each check of check_report, and series statistics."""

from __future__ import annotations

import dataclasses

import pytest

from hpcpilot.cgroups import CgroupMemory
from hpcpilot.config import MonitorConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.metrics import Limits, SeriesStats, check_report, limits_for_job, memory_used_kb
from hpcpilot.monitor.samples import MonitorReport, TreeSample

START = 1_700_000_000.0
LIMITS = Limits(memory_kb=4_000_000, looping_limit=7200.0, stdout_kb=2_097_152, workdir_mb=10_000.0,
                output_mb=512_000.0, free_space_mb=1024.0)


def tree(time: float = START + 60, pss: int = 1000, swap: int = 0, **changes: float) -> TreeSample:
    base = TreeSample(time=time, pss=pss, rss=2 * pss, swap=swap, vmem=4 * pss, utime=1.0, stime=0.5,
                      nprocs=2, nthreads=3, rchar=100, wchar=200, read_bytes=300, write_bytes=400)
    return base._replace(**changes)


def report(**changes: object) -> MonitorReport:
    base = MonitorReport(panda_id=7, time=START + 60, tree=tree(), cgroup=None, stdout_kb=10,
                         workdir_mb=100.0, max_output_mb=50.0, free_space_mb=50_000.0,
                         last_activity=START + 30, payload_running=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_healthy_report_passes() -> None:
    assert check_report(report(), LIMITS, START) is None


@pytest.mark.parametrize(("changes", "code", "words"), [
    ({"free_space_mb": 500.0}, ErrorCode.NOLOCALSPACE, ("500 MB", "1024 MB")),
    ({"stdout_kb": 3_000_000}, ErrorCode.STDOUTTOOBIG, ("3000000 kB", "2097152 kB")),
    ({"workdir_mb": 12_345.0}, ErrorCode.USERDIRTOOLARGE, ("12345 MB", "10000 MB")),
    ({"max_output_mb": 600_000.0}, ErrorCode.OUTPUTFILETOOLARGE, ("600000 MB", "512000 MB")),
    ({"tree": tree(pss=3_900_000, swap=200_000)}, ErrorCode.PAYLOADEXCEEDMAXMEM,
     ("4100000 kB", "4000000 kB")),
    ({"time": START + 8000, "last_activity": START + 10}, ErrorCode.LOOPINGJOB, ("7990 s", "7200 s")),
])
def test_each_limit(changes: dict[str, object], code: ErrorCode, words: tuple[str, str]) -> None:
    verdict = check_report(report(**changes), LIMITS, START)
    assert verdict is not None and verdict.code == code
    assert "\n" not in verdict.diag
    for word in words:
        assert word in verdict.diag


def test_checks_run_in_order() -> None:
    bad = report(free_space_mb=1.0, stdout_kb=9_999_999, tree=tree(pss=9_999_999), time=START + 99_999)
    assert check_report(bad, LIMITS, START).code == ErrorCode.NOLOCALSPACE  # type: ignore[union-attr]
    bad = dataclasses.replace(bad, free_space_mb=50_000.0)
    assert check_report(bad, LIMITS, START).code == ErrorCode.STDOUTTOOBIG  # type: ignore[union-attr]
    bad = dataclasses.replace(bad, stdout_kb=1)
    assert check_report(bad, LIMITS, START).code == ErrorCode.PAYLOADEXCEEDMAXMEM  # type: ignore[union-attr]


def test_cgroup_usage_counts_when_larger() -> None:
    cgroup = CgroupMemory(version=2, current_kb=5_000_000, peak_kb=5_000_000, swap_kb=0)
    assert memory_used_kb(report(cgroup=cgroup)) == 5_000_000
    verdict = check_report(report(cgroup=cgroup), LIMITS, START)
    assert verdict is not None and verdict.code == ErrorCode.PAYLOADEXCEEDMAXMEM
    small = cgroup._replace(current_kb=10)
    assert memory_used_kb(report(cgroup=small)) == 1000


def test_zero_limits_switch_checks_off() -> None:
    off = Limits(memory_kb=0, looping_limit=0.0, stdout_kb=0, workdir_mb=0.0, output_mb=0.0,
                 free_space_mb=0.0)
    bad = report(free_space_mb=0.0, stdout_kb=10**9, workdir_mb=1e9, max_output_mb=1e9,
                 tree=tree(pss=10**9), time=START + 10**6, last_activity=None)
    assert check_report(bad, off, START) is None


def test_looping_counts_from_payload_start_without_activity() -> None:
    assert check_report(report(time=START + 7000, last_activity=None), LIMITS, START) is None
    verdict = check_report(report(time=START + 7300, last_activity=None), LIMITS, START)
    assert verdict is not None and verdict.code == ErrorCode.LOOPINGJOB


def test_activity_before_payload_start_does_not_count() -> None:
    early = report(time=START + 7000, last_activity=START - 10_000)
    assert check_report(early, LIMITS, START) is None


def test_no_looping_verdict_once_payload_stopped() -> None:
    assert check_report(report(time=START + 99_999, payload_running=False), LIMITS, START) is None


def test_limits_for_job_from_min_ram_count() -> None:
    cfg = MonitorConfig()
    limits = limits_for_job(min_ram_count_mb=2000, core_count=8, looping_check=True, cfg=cfg)
    assert limits.memory_kb == 2000 * 2 * 1024
    assert limits.looping_limit == 7200.0
    assert limits.stdout_kb == 2097152
    assert limits.workdir_mb == 0.0
    assert limits.output_mb == 512000.0
    assert limits.free_space_mb == 1024.0


def test_limits_for_job_defaults_per_core_and_graces() -> None:
    cfg = MonitorConfig(default_ram_per_core_mb=1500, rss_grace_percent=50.0, max_workdir_mb=1000,
                        workdir_grace_percent=20.0)
    limits = limits_for_job(min_ram_count_mb=0, core_count=4, looping_check=False, cfg=cfg)
    assert limits.memory_kb == int(1500 * 4 * 1.5 * 1024)
    assert limits.workdir_mb == pytest.approx(1200.0)
    assert limits.looping_limit == 0.0
    assert limits_for_job(0, 0, True, cfg).memory_kb == int(1500 * 1.5 * 1024)


def test_series_stats_max_avg_and_last_counters() -> None:
    stats = SeriesStats(start=START)
    stats.add(tree(time=START + 10, pss=100, swap=10, utime=1.0, rchar=1000, nprocs=1))
    stats.add(tree(time=START + 20, pss=300, swap=30, utime=3.0, rchar=3000, nprocs=4, nthreads=9))
    stats.add(TreeSample.empty(START + 30))
    summary = stats.to_prmon_summary()
    assert stats.count == 2
    assert summary["Max"]["pss"] == 300 and summary["Avg"]["pss"] == 200.0
    assert summary["Max"]["swap"] == 30 and summary["Avg"]["swap"] == 20.0
    assert summary["Max"]["rss"] == 600 and summary["Max"]["vmem"] == 1200
    assert summary["Max"]["nprocs"] == 4 and summary["Max"]["nthreads"] == 9
    assert summary["Max"]["utime"] == 3.0 and summary["Max"]["rchar"] == 3000
    assert summary["Max"]["wtime"] == 20.0
    assert summary["Avg"]["rchar"] == 150.0  # bytes per second, as prmon
    expected = {"vmem", "pss", "rss", "swap", "rchar", "wchar", "read_bytes", "write_bytes",
                "nprocs", "nthreads"}
    assert expected <= set(summary["Max"]) and expected <= set(summary["Avg"])
    assert {"utime", "stime"} <= set(summary["Max"])


def test_series_stats_empty() -> None:
    summary = SeriesStats().to_prmon_summary()
    assert summary["Max"]["pss"] == 0 and summary["Avg"]["pss"] == 0.0 and summary["Max"]["wtime"] == 0.0
