"""Range updates on a v1 server, whose update_event_ranges answers HTTP 500 after committing (issue 21).

A real ``PandaSource`` against ``hpcpilot serve`` modelling panda-server 1.0 (and 0.8 where said), on
loopback.  What is asserted is what the server received and holds: every range finished exactly once, the
job's final update after its ranges, and how many status look-ups it took (one per job per batch, not one
per update).  The 500 itself is no trouble: said once at INFO, never a warning per update.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from hpcpilot.journal import Journal
from hpcpilot.panda import wire
from hpcpilot.panda.source import JOURNAL_NAME, PandaSource
from hpcpilot.panda.verdict import MAX_UNCONFIRMED_SENDS
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.states import EventRangeStatus, JobState
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import NODE, job_definitions, panda_config

N_RANGES = 40


@pytest.fixture(autouse=True)
def panda_clean_env(monkeypatch):
    for name in ("PANDA_AUTH_TOKEN", "OIDC_AUTH_TOKEN", "PANDA_AUTH_DIR", "OIDC_AUTH_DIR", "X509_USER_PROXY",
                 "X509_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["1.0", "0.8"])
def server(tmp_path, request):
    srv = PandaTestServer(tmp_path / "state.sqlite", release=request.param).start()
    srv.load_jobs(job_definitions(1, start_id=800, es=True), ranges_per_job=N_RANGES)
    yield srv
    srv.close()


def _source(server: PandaTestServer, workdir, api: str = "v1", **overrides) -> PandaSource:
    config = panda_config(server.url, api, read_timeout=5.0, call_deadline=10.0, retry_initial=0.05,
                          retry_max=0.2, **overrides)
    return PandaSource(config, workdir, NODE, fetch_deadline=5.0, close_deadline=10.0)


def _lease(source: PandaSource) -> tuple[dict, JobSpec, list[dict]]:
    job = source.fetch_jobs(1).leased[0]
    spec = JobSpec.from_wire(job)
    ranges = source.fetch_event_ranges(spec, N_RANGES).leased
    assert len(ranges) == N_RANGES
    return job, spec, ranges


def _finished(server: PandaTestServer) -> Counter[str]:
    return Counter(r["status"] for r in server.dump()["event_ranges"])


def _final_record(spec: JobSpec) -> JobRecord:
    return JobRecord(panda_id=spec.panda_id, state=JobState.FINISHED, attempt_nr=spec.attempt_nr, n_events=1,
                     start_time="2026-03-01 10:00:00", end_time="2026-03-01 10:05:00")


def test_every_range_confirmed_by_look_ups_fewer_than_updates_and_the_final_after_them(server, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    source = _source(server, tmp_path / "w")
    _job, spec, ranges = _lease(source)
    for pair in range(0, N_RANGES, 2):
        source.update_event_ranges(spec, [EventRangeUpdate(r["eventRangeID"], EventRangeStatus.FINISHED)
                                          for r in ranges[pair:pair + 2]])
    source.update_job(_final_record(spec), final=True)
    assert source.flush(60.0)
    delivery = source.delivery()
    source.close()

    log = server.requests()
    updates = [r for r in log if r["method"] == wire.UPDATE_EVENT_RANGES]
    lookups = [r for r in log if r["method"] == wire.GET_EVENTS_STATUS]
    assert len(updates) == N_RANGES // 2 and all(r["http_status"] == 500 for r in updates)  # each sent once
    assert 1 <= len(lookups) <= len(updates) // 2 + 2, (len(lookups), len(updates))
    assert all(r["http_status"] == 200 for r in lookups)
    final = next(r for r in log if r["method"] == wire.UPDATE_JOB and r["fields"]["job_id"] == spec.panda_id)
    assert final["seq"] > lookups[-1]["seq"] > updates[-1]["seq"]  # ranges confirmed before the final update
    assert _finished(server) == {"finished": N_RANGES}
    assert all(r["updates"] == 1 for r in server.dump()["event_ranges"])  # none twice
    assert delivery.owed == 0 and delivery.ranges == {spec.panda_id: {"finished": N_RANGES}}
    said = [r for r in caplog.records if "update_event_ranges with HTTP 500" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("hpcpilot.panda")]


def test_a_restart_settles_every_update_of_a_job_with_one_look_up(server, tmp_path):
    """Twenty range updates queued and sent by a run that died before any was confirmed: the next run asks
    once for the job and sends nothing again."""
    workdir = tmp_path / "w"
    source = _source(server, workdir)
    _job, spec, ranges = _lease(source)
    source.close()  # nothing queued yet; the leases stay journaled
    journal = Journal(workdir / JOURNAL_NAME)
    for pair in range(0, N_RANGES, 2):
        updates = [EventRangeUpdate(r["eventRangeID"], EventRangeStatus.FINISHED).to_wire()
                   for r in ranges[pair:pair + 2]]
        journal.enqueue_range_update(spec.panda_id, updates, 0, [u["eventRangeID"] for u in updates])
        server.call(wire.UPDATE_EVENT_RANGES, {"eventRanges": json.dumps(updates), "version": 0})  # it got them
    journal.close()
    before = len(server.requests())

    again = _source(server, workdir)
    assert again.flush(30.0)
    again.close()
    after = server.requests()[before:]
    # one look-up for the twenty updates, then the job the dead run left in flight is reported failed
    assert [r["method"] for r in after] == [wire.GET_EVENTS_STATUS, wire.UPDATE_JOB]
    assert after[1]["fields"]["job_status"] == "failed" and after[1]["fields"]["pilot_error_code"] == 1200
    assert _finished(server) == {"finished": N_RANGES}


def test_what_a_look_up_lacks_is_sent_again_and_confirmed(server, tmp_path):
    """The server lost half of an update (its 500 came before committing): the look-up shows which, only
    those are sent again."""
    source = _source(server, tmp_path / "w")
    _job, spec, ranges = _lease(source)
    server.set_fault("500", count=1, method=wire.UPDATE_EVENT_RANGES)  # 500 before committing: nothing stored
    source.update_event_ranges(spec, [EventRangeUpdate(r["eventRangeID"], EventRangeStatus.FINISHED)
                                      for r in ranges[:10]])
    assert source.flush(30.0)
    source.close()
    updates = server.requests(wire.UPDATE_EVENT_RANGES)
    assert [len(json.loads(r["fields"]["event_ranges"])) for r in updates] == [10, 10]
    assert _finished(server)["finished"] == 10


def test_updates_the_server_never_takes_are_refused_after_a_bound(tmp_path):
    """The job is no longer active at the server (it takes no range update): each send answers 500 and
    every look-up shows the ranges unchanged -- after MAX_UNCONFIRMED_SENDS the update is refused for good
    (kept in the journal), not sent for ever."""
    with PandaTestServer(tmp_path / "state.sqlite", release="1.0").start() as srv:
        srv.load_jobs(job_definitions(1, start_id=800, es=True), ranges_per_job=N_RANGES)
        source = _source(srv, tmp_path / "w")
        _job, spec, ranges = _lease(source)
        srv.call(wire.UPDATE_JOB, {"jobId": spec.panda_id, "state": "failed"})  # the server ended the job
        source.update_event_ranges(spec, [EventRangeUpdate(ranges[0]["eventRangeID"], EventRangeStatus.FINISHED)])
        assert source.flush(30.0)
        rejected = source.journal.rejected()
        source.close()
        assert len(srv.requests(wire.UPDATE_EVENT_RANGES)) == MAX_UNCONFIRMED_SENDS
        assert len(srv.requests(wire.GET_EVENTS_STATUS)) == MAX_UNCONFIRMED_SENDS
        assert len(srv.requests(wire.GET_JOB_STATUS)) == 1  # refused only once the server says the job ended
        assert len(rejected) == 1 and "no longer active there" in rejected[0][3]
