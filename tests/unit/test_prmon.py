"""prmon text writer/reader and the atomic JSON summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcpilot.monitor.metrics import SeriesStats
from hpcpilot.monitor.prmon import PRMON_COLUMNS, PrmonWriter, read_prmon_text, write_summary
from hpcpilot.monitor.samples import TreeSample

START = 1_700_000_000.0


def sample(offset: float, pss: int) -> TreeSample:
    return TreeSample(time=START + offset, pss=pss, rss=pss + 5, swap=1, vmem=pss * 3, utime=offset / 2,
                      stime=offset / 4, nprocs=2, nthreads=5, rchar=10 * pss, wchar=20, read_bytes=30,
                      write_bytes=40)


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "memory_monitor_output.txt"
    writer = PrmonWriter(path, start=START)
    for offset, pss in ((10.0, 100), (20.0, 200), (30.0, 300)):
        writer.append(sample(offset, pss))
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == list(PRMON_COLUMNS)
    assert len(lines) == 4
    assert all(len(line.split("\t")) == len(PRMON_COLUMNS) for line in lines)
    data = read_prmon_text(path)
    assert set(data) == set(PRMON_COLUMNS)
    assert data["Time"] == [START + 10, START + 20, START + 30]
    assert data["wtime"] == [10, 20, 30]
    assert data["pss"] == [100, 200, 300]
    assert data["rss"] == [105, 205, 305]
    assert data["vmem"] == [300, 600, 900]
    assert data["utime"] == [5, 10, 15]
    assert data["rchar"] == [1000, 2000, 3000]
    assert data["write_bytes"] == [40, 40, 40]


def test_writer_appends_to_existing_file_without_second_header(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    PrmonWriter(path, START).append(sample(1, 1))
    PrmonWriter(path, START).append(sample(2, 2))
    assert path.read_text().count("Time") == 1
    assert read_prmon_text(path)["pss"] == [1, 2]


PRMON_NEW = (
    "Time\tnprocs\tnthreads\twtime\tstime\tutime\tpss\trss\tswap\tvmem\trchar\tread_bytes\twchar\twrite_bytes"
    "\trx_bytes\trx_packets\ttx_bytes\ttx_packets\tgpufbmem\n"
    "1700000010\t2\t5\t10\t1\t4\t1000\t1200\t0\t5000\t77\t0\t88\t0\t1\t2\t3\t4\t0\n"
    "1700000020\t3\t7\t20\t2\t9\t1500\t1700\t10\t6000\t99\t4096\t111\t8192\t1\t2\t3\t4\t0\n"
)

PRMON_REORDERED = (
    "pss\tTime\tgpu_util\tvmem\trss\tswap\tutime\n"
    "1000\t1700000010\t0\t5000\t1200\t0\t4\n"
    "1500\t1700000020\t0\t6000\t1700\t10\t9\n"
)

MEMORY_MONITOR_OLD = (
    "Time\tVMEM\tPSS\tRSS\tSwap\trchar\twchar\trbytes\twbytes\n"
    "1700000010\t5000\t1000\t1200\t0\t77\t88\t0\t0\n"
    "Time\tVMEM\tPSS\tRSS\tSwap\trchar\twchar\trbytes\twbytes\n"
    "1700000020\t6000\t1500\t1700\t10\t99\t111\t4096\t8192\n"
    "1700000030\t6000\tnan\t1700\n"
)


@pytest.mark.parametrize("text", [PRMON_NEW, PRMON_REORDERED, MEMORY_MONITOR_OLD],
                         ids=["prmon", "reordered", "memorymonitor"])
def test_reader_finds_columns_by_name(tmp_path: Path, text: str) -> None:
    path = tmp_path / "mm.txt"
    path.write_text(text)
    data = read_prmon_text(path)
    assert data["Time"] == [1700000010, 1700000020]
    assert data["pss"] == [1000, 1500]
    assert data["rss"] == [1200, 1700]
    assert data["swap"] == [0, 10]
    assert data["vmem"] == [5000, 6000]
    assert "rx_bytes" not in data and "gpufbmem" not in data and "gpu_util" not in data


def test_old_format_io_names_are_mapped(tmp_path: Path) -> None:
    path = tmp_path / "mm.txt"
    path.write_text(MEMORY_MONITOR_OLD)
    data = read_prmon_text(path)
    assert data["read_bytes"] == [0, 4096] and data["write_bytes"] == [0, 8192]
    assert data["rchar"] == [77, 99] and data["wchar"] == [88, 111]


def test_reader_skips_truncated_and_text_rows(tmp_path: Path) -> None:
    path = tmp_path / "mm.txt"
    path.write_text(PRMON_NEW + "1700000030\t3\tgarbage\n1700000040\t3\t7\t30")
    assert read_prmon_text(path)["Time"] == [1700000010, 1700000020]


def test_reader_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("pss\trss\n1\t2\n")
    with pytest.raises(ValueError, match=r"bad\.txt: no Time column"):
        read_prmon_text(path)
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=r"bad\.txt: empty prmon file"):
        read_prmon_text(path)


def test_write_summary_is_atomic_json(tmp_path: Path) -> None:
    stats = SeriesStats(start=START)
    stats.add(sample(10, 100))
    stats.add(sample(20, 300))
    path = tmp_path / "memory_monitor_summary.json"
    path.write_text("old content")
    write_summary(path, stats)
    summary = json.loads(path.read_text())
    assert summary["Max"]["pss"] == 300 and summary["Avg"]["pss"] == 200
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    write_summary(path, {"Max": {"pss": 1}, "Avg": {}})
    assert json.loads(path.read_text())["Max"]["pss"] == 1
