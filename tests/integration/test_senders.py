"""Several senders (issue 14): updates of different jobs in flight together, one job's strictly in order.

Concurrency is counted at the test server (``PandaTestServer.concurrency``: calls being served at once),
never inferred from timing; a ``slow`` fault holds each call long enough for the others to arrive.
"""

from __future__ import annotations

import json
import logging

import pytest

from hpcpilot.journal import NEXT_IN_SHARD_QUERY, Journal
from hpcpilot.panda import wire
from hpcpilot.panda.source import PandaSource
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.states import EventRangeStatus, JobState
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import NODE, job_definitions, panda_config

SLOW = 0.3  # seconds each updateJob is held at the server: the other senders' calls arrive meanwhile


@pytest.fixture(autouse=True)
def panda_clean_env(monkeypatch):
    for name in ("PANDA_AUTH_TOKEN", "OIDC_AUTH_TOKEN", "PANDA_AUTH_DIR", "OIDC_AUTH_DIR", "X509_USER_PROXY",
                 "X509_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(tmp_path):
    server = PandaTestServer(tmp_path / "state.sqlite", release="0.8").start()
    server.load_jobs(job_definitions(8, start_id=900) + job_definitions(1, start_id=800, es=True),
                     ranges_per_job=4)
    yield server
    server.close()


def _source(server: PandaTestServer, workdir, senders: int) -> PandaSource:
    config = panda_config(server.url, "legacy", senders=senders, read_timeout=5.0, call_deadline=10.0)
    return PandaSource(config, workdir, NODE, fetch_deadline=5.0, close_deadline=10.0)


def _record(job: dict, state: JobState) -> JobRecord:
    spec = JobSpec.from_wire(job)
    record = JobRecord(panda_id=spec.panda_id, state=state, attempt_nr=spec.attempt_nr, n_events=1,
                       start_time="2026-03-01 10:00:00")
    if state == JobState.FINISHED:
        record.end_time = "2026-03-01 10:05:00"
        record.output_report = {f.lfn: {"fsize": 10, "adler32": "0a0b0c0d"} for f in spec.outputs}
        record.output_report[spec.log_file.lfn] = {"fsize": 20, "adler32": "01020304"}
    return record


def _lease_plain_jobs(source: PandaSource, n: int) -> list[dict]:
    jobs = [j for j in source.fetch_jobs(n + 1).leased if j.get("eventService") != "True"]
    assert len(jobs) >= n, jobs
    return jobs[:n]


def _states_sent(server: PandaTestServer) -> dict[int, list[str]]:
    """PandaID -> the states of its updateJob calls, in the order the server took them."""
    out: dict[int, list[str]] = {}
    for request in server.requests(wire.UPDATE_JOB):
        out.setdefault(int(request["fields"]["jobId"]), []).append(request["fields"]["state"])
    return out


def test_eight_jobs_final_updates_are_in_flight_together_and_each_job_in_order(server, tmp_path):
    source = _source(server, tmp_path / "w", senders=4)
    jobs = _lease_plain_jobs(source, 8)
    server.set_fault("slow", delay=SLOW, method=wire.UPDATE_JOB)
    for job in jobs:
        source.update_job(_record(job, JobState.RUNNING), final=False)
        source.update_job(_record(job, JobState.FINISHED), final=True)
    assert source.flush(60.0)
    server.set_fault(None)
    peak = server.concurrency.peak(wire.UPDATE_JOB)
    delivery = source.delivery()
    source.close()

    assert 2 <= peak <= 4, f"{peak} updateJob call(s) at once with 4 senders"
    ids = [int(job["PandaID"]) for job in jobs]
    assert _states_sent(server) == {pid: ["running", "finished"] for pid in ids}  # heartbeat before final
    server_states = {j["PandaID"]: j["status"] for j in server.dump()["jobs"]}
    assert all(server_states[pid] in ("finished", "holding") for pid in ids), server_states
    assert delivery.owed == 0 and delivery.jobs == dict.fromkeys(ids, "acknowledged")


def test_one_sender_has_one_update_in_flight(server, tmp_path):
    """The baseline the senders are measured against: the counter at the server does see one at a time."""
    source = _source(server, tmp_path / "w", senders=1)
    jobs = _lease_plain_jobs(source, 4)
    server.set_fault("slow", delay=0.05, method=wire.UPDATE_JOB)
    for job in jobs:
        source.update_job(_record(job, JobState.FINISHED), final=True)
    assert source.flush(60.0)
    source.close()
    assert server.concurrency.peak(wire.UPDATE_JOB) == 1
    assert [r["fields"]["jobId"] for r in server.requests(wire.UPDATE_JOB)] == [str(j["PandaID"]) for j in jobs]


def test_range_updates_of_a_job_arrive_in_order_and_before_its_final_update(server, tmp_path):
    source = _source(server, tmp_path / "w", senders=4)
    jobs = source.fetch_jobs(9).leased
    es_job = next(j for j in jobs if j.get("eventService") == "True")
    spec = JobSpec.from_wire(es_job)
    ranges = source.fetch_event_ranges(spec, 4).leased
    assert len(ranges) == 4
    server.set_fault("slow", delay=0.1)
    for job in jobs:
        if job is not es_job:
            source.update_job(_record(job, JobState.FINISHED), final=True)
    for one in ranges:
        source.update_event_ranges(spec, [EventRangeUpdate(one["eventRangeID"], EventRangeStatus.FINISHED)])
    source.update_job(_record(es_job, JobState.FINISHED), final=True)
    assert source.flush(60.0)
    server.set_fault(None)
    source.close()

    log = server.requests()
    es_updates = [r for r in log if r["method"] == wire.UPDATE_EVENT_RANGES]
    sent_ids = [rid for r in es_updates for rid in wire.range_ids_of(_payload(r))]
    assert sent_ids == [one["eventRangeID"] for one in ranges]
    final = next(r for r in log if r["method"] == wire.UPDATE_JOB and r["fields"]["jobId"] == str(spec.panda_id))
    assert final["seq"] > es_updates[-1]["seq"]
    assert server.concurrency.peak(wire.UPDATE_JOB) + server.concurrency.peak(wire.UPDATE_EVENT_RANGES) >= 2


def _payload(request: dict) -> list[dict]:
    return json.loads(request["fields"]["eventRanges"])


def test_an_outage_is_logged_once_by_the_client_not_once_per_sender(server, tmp_path, caplog):
    source = _source(server, tmp_path / "w", senders=4)
    jobs = _lease_plain_jobs(source, 8)
    server.stop()
    caplog.set_level(logging.INFO, logger="hpcpilot.panda.client")
    for job in jobs:
        source.update_job(_record(job, JobState.FINISHED), final=True)
    assert not source.flush(1.5)  # every sender is retrying against a dead server
    server.start()
    assert source.flush(60.0)
    source.close()
    client_lines = [r for r in caplog.records if r.name == "hpcpilot.panda.client"]
    outages = [r for r in client_lines if r.levelno == logging.WARNING and "retrying" in r.getMessage()]
    recoveries = [r for r in client_lines if "answers again" in r.getMessage()]
    assert len(outages) == 1, [r.getMessage() for r in outages]
    assert len(recoveries) == 1
    assert set(_states_sent(server)) == {int(j["PandaID"]) for j in jobs}


# ------------------------------------------------------------------------------------------- journal


def test_next_pending_of_a_shard_is_an_index_search(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", shards=4)
    plan = " ".join(row[-1] for row in journal._db.execute(f"EXPLAIN QUERY PLAN {NEXT_IN_SHARD_QUERY}", (1, 1)))
    assert "SEARCH outbox USING INDEX outbox_shard" in plan and "SCAN" not in plan, plan
    journal.close()


def test_each_shard_gives_its_jobs_oldest_first_and_a_restart_reshards(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", shards=2)
    for panda_id in (1, 2, 3, 4, 5, 6):
        journal.enqueue_job_update(panda_id, {"state": "running"}, final=False)
        journal.enqueue_job_update(panda_id, {"state": "finished"}, final=True)
    assert journal.next_pending(0).panda_id == 2 and journal.next_pending(1).panda_id == 1
    journal.acknowledge(journal.next_pending(1))
    head = journal.next_pending(1)
    assert (head.panda_id, head.body["state"]) == (1, "finished")  # the job's final, not another job's first
    journal.close()

    reopened = Journal(tmp_path / "j.sqlite", shards=3)
    order: dict[int, list[tuple[int, str]]] = {}
    for shard in range(3):
        while (entry := reopened.next_pending(shard)) is not None:
            assert entry.panda_id % 3 == shard
            order.setdefault(shard, []).append((entry.panda_id, entry.body["state"]))
            reopened.acknowledge(entry)
    assert order == {0: [(3, "running"), (3, "finished"), (6, "running"), (6, "finished")],
                     1: [(1, "finished"), (4, "running"), (4, "finished")],
                     2: [(2, "running"), (2, "finished"), (5, "running"), (5, "finished")]}
    assert reopened.pending_count() == 0
    reopened.close()
