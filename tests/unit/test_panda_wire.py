"""PanDA wire formats: name mapping and request encoding (replies: test_panda_replies.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from hpcpilot.panda import replies, wire
from hpcpilot.records import JobRecord
from hpcpilot.states import JobState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "panda"


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_v1_names_from_job_record():
    record = JobRecord(
        panda_id=42,
        state=JobState.FINISHED,
        attempt_nr=2,
        max_rss=1234,
        meta_data="{}",
        output_report={"out.root": {"guid": "g", "fsize": 1, "adler32": "0a"}},
        start_time="2026-01-02 03:04:05",
    )
    v1 = wire.to_v1(wire.UPDATE_JOB, wire.prepare_update(record.to_wire()))
    assert v1["job_id"] == 42 and v1["job_status"] == "finished" and v1["attempt_nr"] == 2
    assert v1["max_rss"] == 1234 and v1["meta_data"] == "{}"
    assert json.loads(v1["job_output_report"])["out.root"]["guid"] == "g"
    assert v1["start_time"] == "2026-01-02 03:04:05"
    assert not any(k[0].isupper() or any(c.isupper() for c in k) for k in v1)


def test_v1_names_for_get_job_and_ranges_drop_unknown_fields():
    v1 = wire.to_v1(wire.GET_JOB, {"siteName": "Q", "mem": 2000, "cpu": 2400, "nJobs": "3", "diskSpace": 10})
    assert v1 == {"site_name": "Q", "memory": 2000, "n_jobs": 3, "disk_space": 10}
    v1 = wire.to_v1(wire.GET_EVENT_RANGES, {"pandaID": 5, "jobsetID": None, "taskID": 7, "nRanges": 2})
    assert v1 == {"job_id": 5, "task_id": 7, "n_ranges": 2}
    assert wire.from_v1(wire.GET_EVENT_RANGES, v1) == {"pandaID": 5, "taskID": 7, "nRanges": 2}
    assert wire.from_v1(wire.UPDATE_JOB, {"job_id": 5, "job_status": "running"}) == {
        "jobId": 5,
        "state": "running",
    }


def test_legacy_encoding_is_all_strings():
    body = wire.encode_legacy({"jobId": 5, "flag": True, "skip": None, "xml": {"a": 1}})
    assert dict(parse_qsl(body.decode())) == {"jobId": "5", "flag": "True", "xml": '{"a": 1}'}
    assert json.loads(gzip.decompress(wire.encode_legacy_json_gzip({"a": 1, "b": None}))) == {"a": 1}


def test_v1_encoding_gzips_large_bodies():
    body, headers = wire.encode_v1({"a": 1})
    assert json.loads(body) == {"a": 1} and "Content-Encoding" not in headers
    body, headers = wire.encode_v1({"meta_data": "x" * 10000})
    assert (
        headers["Content-Encoding"] == "gzip"
        and json.loads(gzip.decompress(body))["meta_data"] == "x" * 10000
    )


def test_times_and_limits():
    assert wire.format_time(0) == "1970-01-01 00:00:00"
    assert wire.format_time("1700000000.5") == "2023-11-14 22:13:20"
    assert wire.format_time("2026-01-02 03:04:05") == "2026-01-02 03:04:05"
    assert wire.format_time("2026-01-02T03:04:05+01:00") == "2026-01-02 02:04:05"
    with pytest.raises(wire.WireError):
        wire.format_time("yesterday")
    fields = wire.prepare_update(
        {"pilotErrorDiag": "d" * 600, "stdout": "a" * 3000 + "END", "endTime": 0, "jobMetrics": "m" * 501}
    )
    assert len(fields["pilotErrorDiag"]) == 500 and len(fields["jobMetrics"]) == 500
    assert len(fields["stdout"]) == 2048 and fields["stdout"].endswith("END")
    assert fields["endTime"] == "1970-01-01 00:00:00"


def test_range_ids_of_versions():
    assert wire.range_ids_of([{"eventRangeID": "a"}, {"eventRangeID": "b"}]) == ["a", "b"]
    assert wire.range_ids_of([{"zipFile": {}, "eventRanges": [{"eventRangeID": "c"}]}]) == ["c"]
    assert replies.split_commands("NULL") == [] and replies.split_commands(None) == []
