"""The durable journal: leases, outbox order, coalescing, acknowledgement, runs, durability."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

import pytest

from hpcpilot.journal import IN_FLIGHT_QUERY, JOB, RANGE, RANGES, Journal, Owed, count_ranges


def test_wal_mode_and_run_counter(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    assert journal.run == 1
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # NORMAL: SQLite syncs only at checkpoints; the WAL fsync after each durable commit is WalSync's
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 1
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


# ---- bounded by what is in flight (issue 14) --------------------------------------------------


def _rows(journal: Journal, table: str) -> int:
    return journal._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _lease_and_report(journal: Journal, panda_id: int, first: int, n: int) -> list[str]:
    ids = [f"1-{panda_id}-1-{i}-1" for i in range(first, first + n)]
    journal.record_range_leases(panda_id, [{"eventRangeID": rid, "startEvent": i} for i, rid in enumerate(ids)])
    journal.enqueue_range_update(panda_id, [{"eventRangeID": rid, "eventStatus": "finished"} for rid in ids], 0,
                                 ids)
    return ids


def test_rows_stay_proportional_to_what_is_in_flight(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    for batch in range(50):  # 5,000 ranges leased, reported and acknowledged, 100 at a time
        _lease_and_report(journal, 1, batch * 100, 100)
        journal.acknowledge(journal.next_pending())
        assert _rows(journal, "leases") == 0 and _rows(journal, "outbox") == 0
    journal.record_range_leases(1, [{"eventRangeID": f"1-1-1-{i}-2"} for i in range(7)])  # in flight
    _lease_and_report(journal, 1, 9000, 3)  # reported, not yet acknowledged: the outbox stands for them
    assert _rows(journal, "leases") == 7 and _rows(journal, "outbox") == 1
    journal.close()


def test_a_job_lease_leaves_once_its_final_update_is_acknowledged_or_refused(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    for panda_id in (1, 2, 3):
        journal.record_job_lease(panda_id, {"PandaID": panda_id, "attemptNr": 2})
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running"}, final=False)
    journal.acknowledge(journal.next_pending())
    assert journal.leased_job(1) == {"PandaID": 1, "attemptNr": 2}  # a heartbeat does not end the lease
    journal.enqueue_job_update(1, {"jobId": 1, "state": "finished"}, final=True)
    journal.enqueue_job_update(2, {"jobId": 2, "state": "failed"}, final=True)
    assert journal.leased_job(1) is not None  # queued, not acknowledged: still needed to send it again
    journal.acknowledge(journal.next_pending())
    journal.reject(journal.next_pending(), "HTTP 403")
    assert journal.leased_job(1) is None and journal.leased_job(2) is None
    assert [lease.panda_id for lease in journal.in_flight(JOB)] == [3]
    assert _rows(journal, "leases") == 1
    journal.close()


def test_a_restart_still_finds_every_range_not_yet_acknowledged(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.record_range_leases(5, [{"eventRangeID": "1-5-1-1-1"}, {"eventRangeID": "1-5-1-2-1"}])
    reported = _lease_and_report(journal, 5, 10, 2)  # queued, never acknowledged (the pilot dies)
    _lease_and_report(journal, 5, 20, 2)
    journal.acknowledge(journal.pending()[-1])
    second = Journal(path)  # no close(), as after SIGKILL
    assert [lease.key for lease in second.in_flight(RANGE, before_run=second.run)] == ["1-5-1-1-1", "1-5-1-2-1"]
    owed = second.pending(before_run=second.run)
    assert [r["eventRangeID"] for entry in owed for r in entry.body["payload"]] == reported
    second.close()
    journal.close()


def test_the_restart_query_searches_an_index(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    _lease_and_report(journal, 1, 0, 10)
    plan = " ".join(row[-1] for row in journal._db.execute(f"EXPLAIN QUERY PLAN {IN_FLIGHT_QUERY}", (RANGE, 3)))
    assert "SEARCH leases USING INDEX leases_open" in plan and "SCAN" not in plan, plan
    journal.close()


def _recount(journal: Journal) -> Owed:
    """What ``owed()`` must say, counted the slow way from the outbox rows."""
    entries = journal.pending()
    ranges: dict[int, int] = {}
    for entry in entries:
        if entry.kind == RANGES:
            ranges[entry.panda_id] = ranges.get(entry.panda_id, 0) + count_ranges(entry.body)
    return Owed(len(entries), frozenset(e.panda_id for e in entries if e.kind == JOB and e.final), ranges)


def test_the_owed_tally_matches_the_outbox_through_every_change_and_a_reopen(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    assert journal.owed() == Owed(0, frozenset(), {})
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running"}, final=False)
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running", "nEvents": 3}, final=False)  # coalesced
    journal.enqueue_job_update(2, {"jobId": 2, "state": "finished"}, final=True)
    journal.enqueue_job_update(3, {"jobId": 3, "state": "failed"}, final=True)
    _lease_and_report(journal, 4, 0, 5)
    zipped = [{"zipFile": {"lfn": "z"}, "eventRanges": [{"eventRangeID": f"1-6-1-{i}-1"} for i in range(4)]}]
    journal.enqueue_range_update(6, zipped, 1, [f"1-6-1-{i}-1" for i in range(4)])
    assert journal.owed() == _recount(journal) == Owed(5, frozenset({2, 3}), {4: 5, 6: 4})
    entries = {(e.kind, e.panda_id): e for e in journal.pending()}
    journal.acknowledge(entries[(JOB, 1)])
    journal.reject(entries[(JOB, 3)], "HTTP 403")
    journal.narrow(entries[(RANGES, 4)], {"payload": entries[(RANGES, 4)].body["payload"][:2], "version": 0})
    journal.acknowledge(entries[(RANGES, 6)])
    assert journal.owed() == _recount(journal) == Owed(2, frozenset({2}), {4: 2})
    assert journal.pending_count() == 2
    reopened = Journal(path)
    assert reopened.owed() == journal.owed()
    reopened.close()
    journal.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_journal_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog, damage):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    for panda_id in range(300):
        journal.record_job_lease(panda_id, {"PandaID": panda_id, "jobPars": "x" * 300})
    journal.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a journal\n" * 500)
    with caplog.at_level(logging.WARNING, logger="hpcpilot.journal"):
        fresh = Journal(path)
    assert fresh.run == 1 and fresh.in_flight(JOB) == [] and fresh.pending() == []
    fresh.record_job_lease(1, {"PandaID": 1})
    assert fresh.leased_job(1) == {"PandaID": 1}
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == fresh.lost and "\n" not in warning and "cannot be recovered" in warning
    [aside] = [p for p in tmp_path.iterdir() if ".unreadable-" in p.name]
    assert aside.read_bytes()[:100] == (data[:100] if damage == "truncated" else b"not a journal\n" * 7 + b"no")
    fresh.close()
    again = Journal(path)  # the fresh journal is a good one: the next run reopens it without a word
    assert again.run == 2 and again.lost is None
    again.close()


def test_leases_an_earlier_version_kept_after_their_report_are_dropped_on_open(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.record_job_lease(1, {"PandaID": 1})
    journal.record_job_lease(2, {"PandaID": 2})
    journal.enqueue_job_update(2, {"jobId": 2, "state": "finished"}, final=True)  # queued: its lease stays
    journal.record_range_leases(1, [{"eventRangeID": f"1-1-1-{i}-1"} for i in range(5)])
    old = [("job", "9", 9), *[("range", f"1-9-1-{i}-1", 9) for i in range(50)]]  # as the old code left them
    journal._db.executemany("INSERT INTO leases VALUES (?, ?, ?, '{}', 'reported', 1, 0)", old)
    journal.close()
    reopened = Journal(path)
    assert _rows(reopened, "leases") == 2 + 5
    assert reopened.leased_job(2) == {"PandaID": 2} and reopened.leased_job(9) is None
    reopened.close()


def _fsync_starts(journal: Journal) -> list[int]:
    """Hook the journal's WAL fsync: the list gets, for each fsync as it begins, the last commit made."""
    starts: list[int] = []

    def fsync(fd: int) -> None:
        starts.append(journal._sync.latest())
        os.fsync(fd)

    journal._sync.fsync = fsync
    return starts


def test_durable_call_returns_after_a_wal_fsync_begun_after_its_commit(tmp_path):
    """synchronous=NORMAL does not fsync at COMMIT: every durable call (lease, final update, group end, an
    entry taken to be sent) must have had the WAL fsync'd after its commit; lazy writes need none."""
    journal = Journal(tmp_path / "j.sqlite")
    starts = _fsync_starts(journal)
    journal.record_job_lease(1, {"PandaID": 1})
    assert starts == [journal._sync.latest()]  # one fsync, begun after the lease's commit
    journal.record_range_leases(1, [{"eventRangeID": "r1"}])
    assert starts[-1] == journal._sync.latest() and len(starts) == 2
    journal.enqueue_range_update(1, [{"eventRangeID": "r1", "eventStatus": "finished"}], 0, ["r1"])
    journal.enqueue_job_update(1, {"jobId": 1, "state": "running"}, final=False)
    assert len(starts) == 2  # lazy: neither committed nor fsync'd yet
    entry = journal.next_pending()
    assert entry is not None and len(starts) == 3 and starts[-1] == journal._sync.latest()
    journal.acknowledge(entry)
    assert len(starts) == 3
    with journal.group():
        journal.record_range_leases(1, [{"eventRangeID": "r2"}])
        journal.enqueue_job_update(1, {"jobId": 1, "state": "finished"}, final=True)
        assert len(starts) == 3  # inside the group nothing is committed
    assert len(starts) == 4 and starts[-1] == journal._sync.latest()
    journal.close()


def test_lazily_committed_entry_is_fsynced_before_it_is_sent(tmp_path):
    """The committer thread commits lazy writes without an fsync: taking such an entry waits for one."""
    journal = Journal(tmp_path / "j.sqlite")
    starts = _fsync_starts(journal)
    journal.enqueue_job_update(7, {"jobId": 7, "state": "running"}, final=False)
    with journal._lock:
        journal._commits.commit_now()  # what the committer thread does after COMMIT_WITHIN: commit, no fsync
    assert starts == []
    assert journal.next_pending() is not None
    assert starts == [journal._sync.latest()]
    assert journal.next_pending() is not None and len(starts) == 1  # already covered: no second fsync
    journal.close()


def test_threads_share_one_fsync(tmp_path):
    """Group fsync: commits made while an fsync runs are all covered by the next one, not one each.  The
    first fsync is held until four more threads have committed; then one more fsync covers all four."""
    journal = Journal(tmp_path / "j.sqlite")
    starts = _fsync_starts(journal)
    base, fsyncs = journal._sync.latest(), journal._sync.fsyncs
    all_committed = threading.Event()
    committed = journal._sync.committed

    def count_commits() -> int:
        ticket = committed()
        if ticket == base + 5:
            all_committed.set()
        return ticket

    journal._sync.committed = count_commits  # type: ignore[method-assign]
    first = journal._sync.fsync

    def held_fsync(fd: int) -> None:
        if len(starts) == 0:
            assert all_committed.wait(30)
        first(fd)

    journal._sync.fsync = held_fsync
    threads = [threading.Thread(target=journal.record_job_lease, args=(pid, {"PandaID": pid})) for pid in range(5)]
    threads[0].start()
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(starts) == 2 and starts[1] == base + 5
    assert journal._sync.fsyncs - fsyncs == 2
    assert sorted(lease.panda_id for lease in journal.in_flight(JOB)) == list(range(5))
    journal.close()


def test_failed_fsync_fails_the_durable_call_and_every_later_one(tmp_path):
    """An fsync error (EIO; a disk failure cannot be provoked here, so the fsync call is replaced) fails the
    durable call; later ones fail too (after a failed fsync the kernel may have dropped the dirty pages)."""
    journal = Journal(tmp_path / "j.sqlite")

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    journal._sync.fsync = failing
    with pytest.raises(sqlite3.OperationalError, match=r"fsync of .*j\.sqlite-wal failed"):
        journal.record_job_lease(1, {"PandaID": 1})
    journal._sync.fsync = os.fsync
    with pytest.raises(sqlite3.OperationalError, match="fsync"):
        journal.record_job_lease(2, {"PandaID": 2})
