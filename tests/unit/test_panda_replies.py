"""What a PanDA reply proves (panda-wire A.5): the captured real replies, every refusal, and the whole
class of answers that prove nothing -- for every endpoint, not one example text."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcpilot.panda import replies, wire
from hpcpilot.panda.replies import Unproven
from hpcpilot.records import JobSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "panda"
PARSERS = {
    "jobs": replies.parse_jobs,
    "job_update": replies.parse_job_update,
    "ranges": replies.parse_ranges,
    "range_update": replies.parse_range_update,
    "range_statuses": replies.parse_range_statuses,
    "job_statuses": lambda reply, v1: replies.parse_job_statuses(reply, v1, [1]),
}


def _fixture(name: str) -> dict:
    return replies.decode_body((FIXTURES / name).read_bytes())


# ---- the captured replies of a real panda-server 0.8.1 ----------------------------------------

def test_captured_get_job_replies():
    flat = replies.parse_jobs(_fixture("getJob-urlencoded.txt"), v1=False)
    assert flat.status == 0 and len(flat.jobs) == 1
    job = flat.jobs[0]
    assert job["PandaID"] == "1" and job["taskID"] == "NULL" and job["ioIntensity"] == "None"
    spec = JobSpec.from_wire(job)
    assert spec.panda_id == 1 and spec.task_id is None and spec.log_file is not None
    assert replies.parse_jobs(_fixture("getJob-4.json"), v1=False).jobs[0]["PandaID"] == 4
    assert [j["PandaID"] for j in replies.parse_jobs(_fixture("acquire_jobs.json"), v1=True).jobs] == [3]


def test_captured_range_replies():
    for name, v1 in (("getEventRanges-urlencoded.txt", False), ("getEventRanges.json", False),
                     ("acquire_event_ranges.json", True)):
        answer = replies.parse_ranges(_fixture(name), v1)
        assert answer.status == 0 and len(answer.ranges) == 2
    update = replies.parse_range_update(_fixture("updateEventRanges.json"), v1=False)
    assert (update.status, update.returns, update.commands) == (0, [None, False], {})
    update = replies.parse_range_update(_fixture("updateEventRanges-urlencoded.txt"), v1=False)
    assert update.returns == [True, True, False]  # A.6.5: the extra trailing false


def test_captured_update_job_reply():
    answer = replies.parse_job_update(_fixture("update_job.json"), v1=True)
    assert answer.status == 0 and answer.commands == []


# ---- acknowledgements that are real -------------------------------------------------------------

def test_acknowledgements_with_their_data():
    assert replies.parse_jobs({"StatusCode": "0", "jobs": '[{"PandaID": 1}, {"PandaID": 2}]'}, False).jobs == [
        {"PandaID": 1}, {"PandaID": 2}]
    assert replies.parse_jobs({"success": True, "data": [{"PandaID": 7}]}, True).jobs == [{"PandaID": 7}]
    job = replies.parse_job_update({"success": True, "data": {"StatusCode": 0, "command": "debug,tobekilled",
                                                             "pilotSecrets": "s3cr3t"}}, True)
    assert job.commands == ["debug", "tobekilled"] and job.secrets == "s3cr3t"
    assert replies.parse_job_update({"StatusCode": "0", "command": "NULL"}, False).commands == []
    ranges = replies.parse_range_update({"StatusCode": 0, "Returns": "[true]", "Command": '{"12": "softkill"}'},
                                        False)
    assert ranges.returns == [True] and ranges.commands == {12: ["softkill"]}
    v1 = replies.parse_range_update({"success": True, "data": {"Returns": [True], "Commands": {"5": "tobekilled"}}},
                                    True)
    assert v1.commands == {5: ["tobekilled"]}


def test_status_lookups():
    v1 = {"success": True, "data": {"7": {"1-7-1-1-1": {"status": "finished", "error": None, "dialog": None},
                                          "1-7-1-2-1": {"status": "sent"}}}}
    assert replies.parse_range_statuses(v1, True) == {"1-7-1-1-1": "finished", "1-7-1-2-1": "sent"}
    assert replies.parse_range_statuses({"success": True, "data": {}}, True) == {}
    assert replies.parse_range_statuses({"7": {"a": {"status": "failed"}}}, False) == {"a": "failed"}
    jobs = {"success": True, "data": [{"job_id": 7, "status": "holding", "attempt_number": 1}]}
    assert replies.parse_job_statuses(jobs, True, [7]) == {7: "holding"}
    legacy = replies.decode_body(b"StatusCode=0&status=running%2Bholding&attemptNr=1%2B2")
    assert replies.parse_job_statuses(legacy, False, [1, 2]) == {1: "running", 2: "holding"}


# ---- refusals and "no jobs": only the server's explicit answers --------------------------------

def test_only_explicit_answers_mean_no_jobs():
    assert replies.parse_jobs({"success": False, "message": "No jobs in PanDA", "data": None}, True).status == 20
    assert replies.parse_jobs({"StatusCode": 20, "errorDialog": "no jobs in PanDA"}, False).status == 20
    assert replies.parse_jobs(replies.decode_body(b"StatusCode=20"), False).status == 20
    refused = replies.parse_jobs({"success": False, "message": "no production/pilot role in VOMS FQANs"}, True)
    assert refused.status == wire.STATUS_FAILED
    assert replies.parse_jobs({"success": False, "message": "Timed out", "data": None}, True).status == 10
    assert replies.parse_job_update({"success": False, "message": "Timed out"}, True).status == 10


# ---- the whole class of answers that prove nothing ------------------------------------------------

UNPROVEN_V1 = [
    {"success": True},  # an ack without data
    {"success": True, "message": "", "data": None},
    {"success": "true", "data": {"StatusCode": 0}},  # success is not a boolean
    {"data": {"StatusCode": 0, "jobs": []}},  # no success at all
    {"success": True, "data": {"StatusCode": "zero", "jobs": [], "Returns": [], "command": "NULL"}},
    {"success": True, "data": "ok"},
    {"success": True, "data": 0},
]
UNPROVEN_LEGACY = [
    {"StatusCode": "zero", "jobs": "[]", "eventRanges": "[]", "Returns": "[]", "status": "running"},
    {"StatusCode": None},
    {"StatusCode": True},
    {"StatusCode": 0.0},
    {"StatusCode": [0]},
    {"message": "ok"},
    {},
]
UNPROVEN_BODIES = [
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"success": true, "data": {"StatusCode": 0, "jo',  # truncated JSON
    b"{not json",
    b"",
    b"[1, 2]",
    b"hello world",
    b"\xff\xfe\x00garbage",
    b"[" * 3000 + b"]" * 3000,
]


@pytest.mark.parametrize("endpoint", sorted(PARSERS))
@pytest.mark.parametrize("reply", UNPROVEN_V1, ids=lambda r: json.dumps(r)[:40])
def test_v1_answers_that_prove_nothing(endpoint, reply):
    with pytest.raises(Unproven) as info:
        PARSERS[endpoint](reply, True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("endpoint", sorted(set(PARSERS) - {"range_statuses"}))
@pytest.mark.parametrize("reply", UNPROVEN_LEGACY, ids=lambda r: json.dumps(r)[:40])
def test_legacy_answers_that_prove_nothing(endpoint, reply):
    with pytest.raises(Unproven):
        PARSERS[endpoint](reply, False)


@pytest.mark.parametrize("body", UNPROVEN_BODIES, ids=lambda b: repr(b[:20]))
def test_bodies_that_are_not_replies(body):
    with pytest.raises(Unproven) as info:
        replies.decode_body(body)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_status_zero_without_the_endpoint_fields_proves_nothing():
    with pytest.raises(Unproven):
        replies.parse_jobs({"StatusCode": 0}, False)
    with pytest.raises(Unproven):
        replies.parse_ranges({"StatusCode": 0}, False)
    with pytest.raises(Unproven, match="Returns"):  # A.6.4: the server could not parse the input
        replies.parse_range_update(replies.decode_body(b"StatusCode=0&Returns=%22&Command=E"), False)
    with pytest.raises(Unproven):
        replies.parse_jobs({"success": True, "data": {"StatusCode": 0, "jobs": [1, 2]}}, True)
    with pytest.raises(Unproven):
        replies.parse_job_statuses(replies.decode_body(b"StatusCode=0&status=running"), False, [1, 2])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4),
                    max_leaves=12)
KEYS = st.sampled_from(["success", "data", "message", "StatusCode", "jobs", "eventRanges", "Returns", "Command",
                        "Commands", "command", "status", "PandaID", "pilotSecrets"])


@settings(max_examples=300, deadline=None)
@given(reply=st.dictionaries(KEYS | st.text(max_size=6), JSON, max_size=6), v1=st.booleans(),
       endpoint=st.sampled_from(sorted(PARSERS)))
def test_fuzzed_replies_either_parse_or_prove_nothing(reply, v1, endpoint):
    try:
        PARSERS[endpoint](reply, v1)
    except Unproven as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_bodies_decode_or_prove_nothing(body):
    with contextlib.suppress(Unproven):
        assert isinstance(replies.decode_body(body), dict)
