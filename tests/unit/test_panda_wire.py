"""PanDA wire formats: decoding the captured real-server replies, name mapping, request encoding."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from hpcpilot.panda import wire
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.states import JobState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "panda"


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_urlencoded_get_job_is_flat_with_strings_and_null():
    reply = wire.decode_body(_fixture("getJob-urlencoded.txt"))
    status, jobs = wire.parse_get_job(reply)
    assert status == 0 and len(jobs) == 1
    job = jobs[0]
    assert job["PandaID"] == "1" and job["taskID"] == "NULL" and job["ioIntensity"] == "None"
    spec = JobSpec.from_wire(job)
    assert spec.panda_id == 1 and spec.task_id is None and spec.max_walltime is None
    assert spec.log_file is not None and spec.log_file.guid == job["logGUID"]


def test_json_get_job_and_v1_acquire_jobs():
    status, jobs = wire.parse_get_job(wire.decode_body(_fixture("getJob-4.json")))
    assert status == 0 and jobs[0]["PandaID"] == 4
    status, jobs, _message = wire.parse_acquire_jobs(wire.decode_body(_fixture("acquire_jobs.json")))
    assert status == 0 and [j["PandaID"] for j in jobs] == [3]
    JobSpec.from_wire(jobs[0])


def test_v1_acquire_jobs_variants():
    assert wire.parse_acquire_jobs({"success": False, "message": "No jobs in PanDA", "data": None})[0] == 20
    assert wire.parse_acquire_jobs({"success": True, "data": [{"PandaID": 7}]})[1] == [{"PandaID": 7}]
    assert (
        wire.parse_acquire_jobs({"success": False, "message": "no production role"})[0] == wire.STATUS_FAILED
    )


def test_legacy_get_job_with_njobs_json_string_and_no_jobs():
    body = b"StatusCode=0&jobs=" + json.dumps([{"PandaID": 1}, {"PandaID": 2}]).replace(" ", "").encode()
    assert [j["PandaID"] for j in wire.parse_get_job(wire.decode_body(body))[1]] == [1, 2]
    assert wire.parse_get_job(wire.decode_body(b'{"StatusCode": 20, "errorDialog": "no jobs in PanDA"}')) == (
        20,
        [],
    )
    assert wire.parse_get_job(wire.decode_body(b"StatusCode=20")) == (20, [])


def test_event_ranges_replies_all_forms():
    for name, v1 in (
        ("getEventRanges-urlencoded.txt", False),
        ("getEventRanges.json", False),
        ("acquire_event_ranges.json", True),
    ):
        status, ranges, _ = wire.parse_get_event_ranges(wire.decode_body(_fixture(name)), v1)
        assert status == 0 and len(ranges) == 2
        assert all(isinstance(r["startEvent"], int) and r["eventRangeID"].count("-") == 4 for r in ranges)


def test_update_event_ranges_nested_json_strings_and_trailing_false():
    status, returns, commands = wire.parse_update_event_ranges(
        wire.decode_body(_fixture("updateEventRanges.json")), v1=False
    )
    assert (status, returns, commands) == (0, [None, False], {})
    status, returns, commands = wire.parse_update_event_ranges(
        wire.decode_body(_fixture("updateEventRanges-urlencoded.txt")), v1=False
    )
    assert returns == [True, True, False] and commands == {}
    reply = {"StatusCode": 0, "Returns": "[true]", "Command": '{"12": "softkill", "13": null}'}
    assert wire.parse_update_event_ranges(reply, v1=False)[2] == {12: ["softkill"]}
    v1 = {"success": True, "data": {"Returns": [True], "Commands": {"5": "tobekilled"}}}
    assert wire.parse_update_event_ranges(v1, v1=True) == (0, [True], {5: ["tobekilled"]})


def test_update_event_ranges_garbage_with_status_zero_is_a_one_line_error():
    reply = wire.decode_body(b"StatusCode=0&Returns=%22&Command=E")
    assert wire.status_of(reply) == 0
    with pytest.raises(wire.WireError) as info:
        wire.parse_update_event_ranges(reply, v1=False)
    assert "Returns" in str(info.value) and "\n" not in str(info.value)


def test_update_job_replies():
    assert wire.parse_update_job(wire.decode_body(_fixture("update_job.json")), v1=True)[:2] == (0, [])
    assert wire.parse_update_job(wire.decode_body(b"StatusCode=0&command=tobekilled"), v1=False)[1] == [
        "tobekilled"
    ]
    assert wire.parse_update_job({"StatusCode": "0", "command": "debug,tobekilled"}, v1=False)[1] == [
        "debug",
        "tobekilled",
    ]
    status, commands, secrets, _ = wire.parse_update_job(
        {"success": True, "data": {"StatusCode": 0, "command": None, "pilotSecrets": "s3cr3t-value"}}, v1=True
    )
    assert (status, commands, secrets) == (0, [], "s3cr3t-value")


@pytest.mark.parametrize(
    "body", [b"<html><body>502 Bad Gateway</body></html>", b"{not json", b"", b"[1, 2]", b"hello world"]
)
def test_garbage_replies_raise_one_line_errors(body):
    with pytest.raises(wire.WireError) as info:
        wire.decode_body(body)
    assert "\n" not in str(info.value)


def test_missing_status_code_is_an_error():
    with pytest.raises(wire.WireError):
        wire.status_of({"command": "NULL"})
    assert wire.status_of({"StatusCode": "20"}) == 20


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
    assert wire.split_commands("NULL") == [] and wire.split_commands(None) == []
