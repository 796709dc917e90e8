"""The PanDA test server speaks the real server's wire behaviour (panda-wire A.1-A.6)."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from urllib.parse import parse_qsl

import pytest
import requests

from hpcpilot_serve.cli import add_serve_parser, run_serve
from hpcpilot_serve.server import PandaTestServer
from hpcpilot_serve.state import dump_state
from tests.fixtures.panda.panda_helpers import job_definitions

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Accept": "application/json"}


@pytest.fixture
def panda_server(tmp_path):
    server = PandaTestServer(tmp_path / "state.sqlite", release="0.8").start()
    server.load_jobs(job_definitions(2, start_id=100, es=True), ranges_per_job=3, events_per_range=10)
    yield server
    server.close()


def _legacy(server, method, fields, accept_json=False):
    headers = {**FORM, **(JSON if accept_json else {})}
    return requests.post(f"{server.url}/server/panda/{method}", data=fields, headers=headers, timeout=5)


def _v1(server, path, fields):
    return requests.post(f"{server.url}/api/v1/{path}", json=fields, headers=JSON, timeout=5)


def test_get_job_urlencoded_flat_and_json_list(panda_server):
    reply = _legacy(panda_server, "getJob", {"siteName": "Q"})
    flat = dict(parse_qsl(reply.text, keep_blank_values=True))
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert flat["StatusCode"] == "0" and flat["PandaID"] == "100" and flat["attemptNr"] == "1"
    reply = _legacy(panda_server, "getJob", {"siteName": "Q", "nJobs": "5"}, accept_json=True).json()
    assert [j["PandaID"] for j in reply["jobs"]] == [101]
    assert _legacy(panda_server, "getJob", {"siteName": "Q"}, accept_json=True).json() == {
        "StatusCode": 20,
        "errorDialog": "no jobs in PanDA",
    }
    assert (
        _legacy(panda_server, "getJob", {"siteName": "Q"}).text
        == "StatusCode=20&errorDialog=no+jobs+in+PanDA"
    )


def test_v1_acquire_and_no_jobs(panda_server):
    reply = _v1(panda_server, "pilot/acquire_jobs", {"site_name": "Q", "n_jobs": 2}).json()
    assert reply["success"] and reply["data"]["StatusCode"] == 0 and len(reply["data"]["jobs"]) == 2
    assert _v1(panda_server, "pilot/acquire_jobs", {"site_name": "Q"}).json() == {
        "success": False,
        "message": "No jobs in PanDA",
        "data": None,
    }


def test_update_job_quirks(panda_server):
    _legacy(panda_server, "getJob", {"siteName": "Q"})
    # A.6.1: unknown job, wrong attemptNr -> tobekilled with StatusCode 0
    assert (
        _legacy(panda_server, "updateJob", {"jobId": "999", "state": "running"}).text
        == "StatusCode=0&command=tobekilled"
    )
    assert (
        _legacy(panda_server, "updateJob", {"jobId": "100", "state": "running", "attemptNr": "7"}).text
        == "StatusCode=0&command=tobekilled"
    )
    # A.6.2: invalid state -> status 0, nothing changes
    assert (
        _legacy(panda_server, "updateJob", {"jobId": "100", "state": "bogus"}).text
        == "StatusCode=0&command=NULL"
    )
    assert panda_server.dump()["jobs"][0]["status"] == "sent"
    assert (
        _legacy(
            panda_server,
            "updateJob",
            {"jobId": "100", "state": "finished", "attemptNr": "1", "pilotErrorCode": "0"},
        ).text
        == "StatusCode=0&command=NULL"
    )
    # archived job -> tobekilled
    assert "tobekilled" in _legacy(panda_server, "updateJob", {"jobId": "100", "state": "running"}).text
    job = panda_server.dump()["jobs"][0]
    assert job["status"] == "finished" and job["pilotErrorCode"] == 0 and job["states"] == ["finished"]


def test_commands_are_delivered(panda_server):
    _legacy(panda_server, "getJob", {"siteName": "Q"})
    panda_server.set_command(100, "debug")
    assert _legacy(panda_server, "updateJob", {"jobId": "100", "state": "running"}).text.endswith(
        "command=debug"
    )
    assert _legacy(panda_server, "updateJob", {"jobId": "100", "state": "running"}).text.endswith(
        "command=NULL"
    )
    panda_server.set_command(100, "tobekilled")
    for _ in range(2):
        assert _legacy(panda_server, "updateJob", {"jobId": "100", "state": "running"}).text.endswith(
            "tobekilled"
        )
    assert _legacy(panda_server, "getEventRanges", {"pandaID": "100"}, True).json() == {
        "StatusCode": 0,
        "eventRanges": [],
    }


def test_event_ranges_and_their_quirks(panda_server):
    _legacy(panda_server, "getJob", {"siteName": "Q", "nJobs": "2"})
    # A.6.3: unknown job -> empty list, status 0
    assert _legacy(panda_server, "getEventRanges", {"pandaID": "5"}, True).json() == {
        "StatusCode": 0,
        "eventRanges": [],
    }
    reply = dict(parse_qsl(_legacy(panda_server, "getEventRanges", {"pandaID": "100", "nRanges": "2"}).text))
    ranges = json.loads(reply["eventRanges"])
    assert [r["eventRangeID"] for r in ranges] == ["77-100-1-1-2", "77-100-1-2-2"]
    assert (ranges[1]["startEvent"], ranges[1]["lastEvent"]) == (10, 19)
    # A.6.4: non-JSON input -> garbage with status 0
    assert (
        _legacy(panda_server, "updateEventRanges", {"eventRanges": "not json"}).text
        == "StatusCode=0&Returns=%22&Command=E"
    )
    updates = [
        {"eventRangeID": "77-100-1-1-2", "eventStatus": "finished"},
        {"eventRangeID": "77-100-1-2-2", "eventStatus": "running"},
        {"eventRangeID": "bad-id", "eventStatus": "finished"},
    ]
    reply = _legacy(panda_server, "updateEventRanges", {"eventRanges": json.dumps(updates)}, True).json()
    # JSON mode still nests JSON strings; A.6.5: the extra trailing false
    assert reply == {"StatusCode": 0, "Returns": "[true, null, false, false]", "Command": '{"100": null}'}
    states = {r["eventRangeID"]: r["status"] for r in panda_server.dump()["event_ranges"]}
    assert states["77-100-1-1-2"] == "finished" and states["77-100-1-2-2"] == "sent"


def test_v1_update_event_ranges_answers_500_after_committing(panda_server):
    _v1(panda_server, "pilot/acquire_jobs", {"site_name": "Q"})
    ranges = _v1(panda_server, "event/acquire_event_ranges", {"job_id": 100, "n_ranges": 1}).json()["data"]
    payload = [
        {
            "zipFile": {"lfn": "z.tar", "objstoreID": 3, "numEvents": 10},
            "eventRanges": [{"eventRangeID": ranges[0]["eventRangeID"], "eventStatus": "finished"}],
        }
    ]
    reply = _v1(
        panda_server, "event/update_event_ranges", {"event_ranges": json.dumps(payload), "version": 1}
    )
    assert reply.status_code == 500 and reply.text == "unhashable type: 'list'"  # version 1 (A.5)
    stored = panda_server.dump()["event_ranges"][0]
    assert stored["status"] == "finished" and stored["zipFile"]["lfn"] == "z.tar"
    ranges = _v1(panda_server, "event/acquire_event_ranges", {"job_id": 100, "n_ranges": 1}).json()["data"]
    flat = [{"eventRangeID": ranges[0]["eventRangeID"], "eventStatus": "failed", "errorCode": 1220}]
    reply = _v1(panda_server, "event/update_event_ranges", {"event_ranges": json.dumps(flat), "version": 0})
    assert reply.status_code == 500 and "Type not serializable" in reply.text  # version 0 (A.5)
    assert panda_server.dump()["event_ranges"][1]["status"] == "failed"


def test_v1_form_post_fails_type_check_and_unknown_method_is_forbidden(panda_server):
    reply = requests.post(
        f"{panda_server.url}/api/v1/pilot/update_job", data={"job_id": "100"}, headers=FORM, timeout=5
    ).json()
    assert reply == {
        "success": False,
        "message": "Type error: 'job_id' must be of type int, got str.",
        "data": None,
    }
    reply = _legacy(panda_server, "getProxy", {})
    assert reply.status_code == 403 and reply.text == "ERROR : method getProxy is forbidden"


def test_legacy_gzip_json_body(panda_server):
    body = gzip.compress(json.dumps({"siteName": "Q", "nJobs": 1, "getProxyKey": False}).encode())
    reply = requests.post(
        f"{panda_server.url}/server/panda/getJob",
        data=body,
        timeout=5,
        headers={"Content-Type": "application/json", **JSON},
    ).json()
    assert reply["jobs"][0]["PandaID"] == 100
    assert panda_server.requests("getJob")[-1]["fields"]["getProxyKey"] == "False"


def test_faults_and_admin_endpoint(panda_server):
    requests.post(f"{panda_server.url}/admin/fault", json={"kind": "5xx", "count": 2}, timeout=5)
    assert [_legacy(panda_server, "getJob", {}).status_code for _ in range(3)] == [503, 503, 200]
    panda_server.set_fault("garbage", count=1)
    assert _legacy(panda_server, "getJob", {}).text.startswith("<html>")
    requests.post(
        f"{panda_server.url}/admin/command", json={"PandaID": 101, "command": "softkill"}, timeout=5
    )
    dump = requests.get(f"{panda_server.url}/admin/dump", timeout=5).json()
    assert {j["PandaID"]: j["command"] for j in dump["jobs"]} == {100: None, 101: "softkill"}


def test_restart_keeps_state_and_dump_reads_the_file(tmp_path, panda_server):
    _legacy(panda_server, "getJob", {"siteName": "Q"})
    port = panda_server.port
    panda_server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.post(f"http://127.0.0.1:{port}/server/panda/getJob", timeout=2)
    panda_server.start()
    assert panda_server.port == port
    assert _legacy(panda_server, "getJob", {}, True).json()["PandaID"] == 101
    dump = dump_state(tmp_path / "state.sqlite")
    assert [j["status"] for j in dump["jobs"]] == ["sent", "sent"] and len(dump["event_ranges"]) == 6


def test_serve_cli_dump_and_run(tmp_path):
    jobs_file = tmp_path / "HPCJobs.json"
    jobs_file.write_text(json.dumps({str(j["PandaID"]): j for j in job_definitions(2, es=True)}))
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    state = tmp_path / "serve.sqlite"
    assert run_serve(parser.parse_args(["serve", "--dump", str(state)])) == 2  # no such file yet
    code = (
        "import sys; from hpcpilot_serve.cli import add_serve_parser, run_serve; import argparse; "
        "p = argparse.ArgumentParser(); add_serve_parser(p.add_subparsers()); "
        "sys.exit(run_serve(p.parse_args(sys.argv[1:])))"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "serve",
            "--port",
            "0",
            "--state",
            str(state),
            "--jobs",
            str(jobs_file),
            "--ranges-per-job",
            "4",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = line.split()[-1]
        assert line.startswith("serving") and url.startswith("http://127.0.0.1:")
        reply = requests.post(
            f"{url}/api/v1/pilot/acquire_jobs", json={"site_name": "Q", "n_jobs": 1}, headers=JSON, timeout=5
        ).json()
        assert reply["data"]["jobs"][0]["PandaID"] == 1000
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert run_serve(parser.parse_args(["serve", "--dump", str(state)])) == 0
    dump = dump_state(state)
    assert [j["status"] for j in dump["jobs"]] == ["sent", "activated"] and len(dump["event_ranges"]) == 8
