"""The durable journal: leases, outbox order, coalescing, acknowledgement, runs, durability."""

from __future__ import annotations

import sqlite3

from hpcpilot.journal import JOB, RANGE, RANGES, Journal


def test_wal_mode_and_run_counter(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    assert journal.run == 1
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    journal.close()
    again = Journal(tmp_path / "j.sqlite")
    assert again.run == 2
    again.close()


def test_leases_are_in_flight_until_reported(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.record_job_lease(1, {"PandaID": 1, "pilotSecrets": "top-secret-value"})
    journal.record_range_leases(1, [{"eventRangeID": "0-1-1-1-1"}, {"eventRangeID": "0-1-1-2-1"}])
    assert [lease.key for lease in journal.in_flight(JOB)] == ["1"]
    assert journal.leased_job(1) == {"PandaID": 1}
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running"}, final=False)
    assert len(journal.in_flight(JOB)) == 1
    journal.enqueue_job_update(1, {"jobId": 1, "state": "finished"}, final=True)
    assert journal.in_flight(JOB) == []
    journal.enqueue_range_update(
        1, [{"eventRangeID": "0-1-1-1-1", "eventStatus": "finished"}], 0, ["0-1-1-1-1"]
    )
    assert [lease.key for lease in journal.in_flight(RANGE)] == ["0-1-1-2-1"]
    journal.close()
    assert b"top-secret-value" not in (tmp_path / "j.sqlite").read_bytes()


def test_outbox_order_acknowledge_and_heartbeat_coalescing(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    starting = journal.enqueue_job_update(1, {"jobId": 1, "state": "starting"}, final=False)
    # a new state is never coalesced into a queued one: the server must see starting, then running
    running = journal.enqueue_job_update(1, {"jobId": 1, "state": "running"}, final=False)
    assert running != starting
    # a heartbeat of the same state replaces the queued one (only its newest numbers matter)
    assert journal.enqueue_job_update(1, {"jobId": 1, "state": "running", "maxRSS": 7}, final=False) == running
    journal.enqueue_job_update(2, {"jobId": 2, "state": "running"}, final=False)
    journal.enqueue_job_update(1, {"jobId": 1, "state": "finished"}, final=True)
    # a heartbeat after a final one is queued separately (it is not coalesced into the final update)
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running"}, final=False)
    journal.enqueue_range_update(2, [{"eventRangeID": "x"}], 1, ["x"])
    entries = journal.pending()
    assert [(e.kind, e.panda_id, e.body.get("state")) for e in entries] == [
        (JOB, 1, "starting"),
        (JOB, 1, "running"),
        (JOB, 2, "running"),
        (JOB, 1, "finished"),
        (JOB, 1, "running"),
        (RANGES, 2, None),
    ]
    assert entries[1].body["maxRSS"] == 7
    assert entries[-1].body == {"payload": [{"eventRangeID": "x"}], "version": 1}
    assert journal.acknowledge(entries[0])
    assert journal.next_pending().panda_id == 1
    assert journal.pending_count() == 5
    journal.close()


def test_acknowledge_keeps_a_heartbeat_replaced_while_sending(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running", "nEvents": 1}, final=False)
    sending = journal.next_pending()
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running", "nEvents": 2}, final=False)
    assert not journal.acknowledge(sending)
    assert journal.next_pending().body["nEvents"] == 2
    journal.close()


def test_reject_and_failures(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.enqueue_job_update(1, {"jobId": 1, "state": "failed"}, final=True)
    entry = journal.next_pending()
    journal.note_failure(entry, "server down")
    assert journal.next_pending().attempts == 1
    journal.reject(journal.next_pending(), "HTTP 403 forbidden")
    assert journal.pending_count() == 0
    assert journal.rejected() == [(entry.seq, JOB, 1, "HTTP 403 forbidden")]
    journal.close()


def test_everything_survives_a_reopen_and_runs_are_told_apart(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.record_job_lease(7, {"PandaID": 7})
    journal.enqueue_job_update(8, {"jobId": 8, "state": "finished"}, final=True)
    # no close(): as after SIGKILL, the committed transactions must be there
    other = sqlite3.connect(str(path))
    assert other.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
    other.close()
    second = Journal(path)
    assert [lease.panda_id for lease in second.in_flight(JOB, before_run=second.run)] == [7]
    assert second.pending_count(before_run=second.run) == 1
    second.record_job_lease(9, {"PandaID": 9})
    assert [lease.panda_id for lease in second.in_flight(JOB, before_run=second.run)] == [7]
    assert {lease.panda_id for lease in second.in_flight(JOB)} == {7, 9}
    second.close()
    journal.close()
