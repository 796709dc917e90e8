"""``hpcpilot serve`` answers as the real panda-server releases do (issue 21; panda-wire A.5, A.7).

Each answer asserted here was read off a running panda-server 1.0.4 and 0.8.1 (../shared/realpanda, the
same requests with curl) and from the servers' code: the status look-ups accept only the forms the code
reads (``panda_id``, repeated ``job_ids``, whitespace-joined legacy ``ids``) and refuse the others with the
real servers' words; 1.0 answers every legacy path 403; v1 update_event_ranges answers 500 after committing
on both.  The real-server tier (tests/realpanda) checks the pilot against the servers themselves.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pytest
import requests

from hpcpilot.panda import wire
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import job_definitions

JSON = {"Accept": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
DB_ERROR = {"success": False, "message": "database error in the PanDA server", "data": None}


@pytest.fixture(params=["1.0", "0.8"])
def server(tmp_path, request):
    srv = PandaTestServer(tmp_path / "state.sqlite", release=request.param).start()
    srv.load_jobs(job_definitions(2, start_id=100, es=True), ranges_per_job=3)
    yield srv
    srv.close()


def _get(server, path, params):
    return requests.get(f"{server.url}/api/v1/{path}", params=params, headers=JSON, timeout=5)


def _post(server, path, fields):
    return requests.post(f"{server.url}/api/v1/{path}", json=fields, headers=JSON, timeout=5)


def _lease_and_finish_one(server) -> str:
    assert _post(server, "pilot/acquire_jobs", {"site_name": "Q", "n_jobs": 2}).json()["success"]
    ranges = _post(server, "event/acquire_event_ranges", {"job_id": 100, "n_ranges": 2}).json()["data"]
    done = [{"eventRangeID": ranges[0]["eventRangeID"], "eventStatus": "finished"}]
    reply = _post(server, "event/update_event_ranges", {"event_ranges": json.dumps(done), "version": 0})
    assert reply.status_code == 500  # committed, then 500: on every release
    return ranges[0]["eventRangeID"]


def test_range_status_look_up_reads_panda_id_and_refuses_the_docstrings_job_id(server):
    finished = _lease_and_finish_one(server)
    task = int(finished.split("-")[0])
    docstring = [{"task_id": task, "job_id": 100}]
    assert _get(server, "event/get_event_range_statuses", {"job_task_ids": json.dumps(docstring)}).json() == DB_ERROR
    both = [{"task_id": task, "panda_id": 100, "job_id": 100}, {"task_id": task, "panda_id": 555}]
    data = _get(server, "event/get_event_range_statuses", {"job_task_ids": json.dumps(both)}).json()["data"]
    assert set(data) == {"100", "555"} and data["555"] == {}  # every asked job, {} for one with no ranges
    assert data["100"][finished]["status"] == "finished"
    assert sorted(v["status"] for v in data["100"].values()) == ["finished", "ready", "sent"]
    wrong_task = [{"task_id": task + 1, "panda_id": 100}]
    assert _get(server, "event/get_event_range_statuses",
                {"job_task_ids": json.dumps(wrong_task)}).json()["data"] == {"100": {}}
    for garbage in ("not json", "[1]", '[{"panda_id": 100}]'):
        assert _get(server, "event/get_event_range_statuses", {"job_task_ids": garbage}).json() == DB_ERROR
    posted = requests.post(f"{server.url}/api/v1/event/get_event_range_statuses", json={"job_task_ids": "[]"},
                           headers=JSON, timeout=5).json()
    assert posted == {"success": False, "message": "expecting GET, received POST", "data": None}


def test_job_status_look_up_takes_repeated_job_ids_only(server):
    _post(server, "pilot/acquire_jobs", {"site_name": "Q", "n_jobs": 1})
    reply = _get(server, "pilot/get_job_status", [("job_ids", "100"), ("job_ids", "7")]).json()
    assert reply["data"] == [{"job_id": 100, "status": "sent", "attempt_number": 1},
                             {"job_id": 7, "status": "not found", "attempt_number": 0}]
    refused = _get(server, "pilot/get_job_status", {"job_ids": "[100,7]"}).json()
    assert refused == {"success": False, "data": None, "message":
                       "Type error: 'job_ids' with value '['[100,7]']' could not be casted to type List from list."}


def test_v1_update_event_ranges_answers_500_on_both_releases_also_for_garbage(server):
    reply = _post(server, "event/update_event_ranges", {"event_ranges": "[nope", "version": 0})
    assert reply.status_code == 500
    broken = requests.post(f"{server.url}/api/v1/event/update_event_ranges", data=b"{nope",
                           headers={**JSON, "Content-Type": "application/json"}, timeout=5)
    assert broken.status_code == 500 and broken.text.startswith("ERROR : received invalid JSON")


@pytest.mark.parametrize("method", [*wire.METHODS, *wire.LOOKUPS, "getProxy"])
def test_legacy_paths_on_1_0_are_all_forbidden(tmp_path, method):
    with PandaTestServer(tmp_path / "state.sqlite", release="1.0").start() as srv:
        reply = requests.post(f"{srv.url}/server/panda/{method}", data={"siteName": "Q"}, headers=FORM, timeout=5)
        assert (reply.status_code, reply.text) == (403, f"ERROR : method {method} is forbidden")


def test_legacy_look_ups_on_0_8(tmp_path):
    with PandaTestServer(tmp_path / "state.sqlite", release="0.8").start() as srv:
        srv.load_jobs(job_definitions(2, start_id=100))

        def legacy(method, fields):
            return requests.post(f"{srv.url}/server/panda/{method}", data=fields, headers=FORM, timeout=5)

        legacy("getJob", {"siteName": "Q", "nJobs": "1"})
        spaced = dict(parse_qsl(legacy("getStatus", {"ids": "100 101 9"}).text))
        assert spaced == {"StatusCode": "0", "status": "sent+activated+notfound", "attemptNr": "1+1+0"}
        commas = dict(parse_qsl(legacy("getStatus", {"ids": "100,101"}).text))  # one unknown id (A.5)
        assert commas["status"] == "notfound"
        assert legacy("get_events_status", {"ids": json.dumps([{"task_id": 1, "job_id": 100}])}).text == "null"
        assert legacy("get_events_status", {"ids": json.dumps([{"task_id": 1, "panda_id": 100}])}).json() == {
            "100": {}}
