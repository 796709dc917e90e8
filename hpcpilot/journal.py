"""Rank 0's durable journal: what was leased from the server and every update still owed to it.

Choice: SQLite in WAL mode with ``synchronous=FULL``, one file in the pilot workdir.
* Leases and outbox entries change together (a final update marks its job reported in the same
  transaction), which SQLite gives atomically; an append-only log would need its own record
  framing, torn-tail detection and compaction, i.e. a small database written by hand.
* Acknowledged updates are deleted and heartbeats for the same job coalesce in place, so the
  file stays small during a long outage without rewriting a log.
* WAL lets the sender thread read while rank 0 appends; FULL makes every commit survive a
  power loss, not only a process crash (SIGKILL), before the call that queued it returns.
* It is in the standard library and can be inspected with the ``sqlite3`` shell after a crash.

Tables: ``leases`` (jobs and event ranges handed to this pilot; ``leased`` until their final
status is queued, then ``reported``), ``outbox`` (updates in send order, deleted once the server
acknowledged them; ``uncertain`` once an attempt may have been committed without an answer that
proves it, so the sender asks the server before sending it again), ``rejected`` (updates the server
refused, kept for the post-mortem), ``meta``
(the run counter: each opening of the journal is a new run, so a restarted pilot can tell the
previous run's leftovers from its own).  Secrets are never stored here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET_KEYS = frozenset({"pilotSecrets", "secrets"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    kind TEXT NOT NULL, key TEXT NOT NULL, panda_id INTEGER NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL, run INTEGER NOT NULL, created REAL NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL DEFAULT 0, kind TEXT NOT NULL,
    panda_id INTEGER NOT NULL, final INTEGER NOT NULL, body TEXT NOT NULL, run INTEGER NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
    uncertain INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, panda_id INTEGER NOT NULL, final INTEGER NOT NULL,
    body TEXT NOT NULL, reason TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (kind, panda_id);
"""

JOB = "job"
RANGE = "range"
RANGES = "ranges"


@dataclass(frozen=True)
class OutboxEntry:
    """One queued update: a job update (kind 'job') or an updateEventRanges call (kind 'ranges')."""

    seq: int
    rev: int
    kind: str
    panda_id: int
    final: bool
    body: dict[str, Any]
    run: int
    attempts: int
    uncertain: bool = False


@dataclass(frozen=True)
class Lease:
    """A job or event range this pilot leased and has not yet reported final."""

    kind: str
    key: str
    panda_id: int
    body: dict[str, Any]
    run: int


def strip_secrets(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without the keys that carry secrets."""
    return {k: v for k, v in data.items() if k not in SECRET_KEYS}


class Journal:
    """The durable lease table and outbox (thread-safe; one per pilot workdir)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                   timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "uncertain" not in columns:  # a journal written before the column existed
            self._db.execute("ALTER TABLE outbox ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0")
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='run'").fetchone()
            self.run = (int(row[0]) if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('run', ?)", (str(self.run),))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------------------------ leases

    def record_job_lease(self, panda_id: int, job: Mapping[str, Any]) -> None:
        """Remember a leased job definition (secrets stripped) before it is handed out."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, 'leased', ?, ?)",
                       (JOB, str(panda_id), panda_id, json.dumps(strip_secrets(job)), self.run, time.time()))

    def record_range_leases(self, panda_id: int, ranges: Sequence[Mapping[str, Any]]) -> None:
        """Remember leased event ranges before they are handed out."""
        now = time.time()
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, 'leased', ?, ?)",
                           [(RANGE, str(r["eventRangeID"]), panda_id, json.dumps(dict(r)), self.run, now)
                            for r in ranges])

    def leased_job(self, panda_id: int) -> dict[str, Any] | None:
        """The journaled definition of a leased job (any state), or None."""
        with self._lock:
            row = self._db.execute("SELECT body FROM leases WHERE kind=? AND key=?",
                                   (JOB, str(panda_id))).fetchone()
        return json.loads(row[0]) if row else None

    def in_flight(self, kind: str, before_run: int | None = None) -> list[Lease]:
        """Leases of ``kind`` ('job' or 'range') not yet reported final (from runs before ``before_run``)."""
        query = "SELECT kind, key, panda_id, body, run FROM leases WHERE kind=? AND state='leased'"
        params: list[Any] = [kind]
        if before_run is not None:
            query += " AND run < ?"
            params.append(before_run)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, key", params).fetchall()
        return [Lease(k, key, pid, json.loads(body), run) for k, key, pid, body, run in rows]

    # ------------------------------------------------------------------------------------ outbox

    def enqueue_job_update(self, panda_id: int, fields: Mapping[str, Any], final: bool) -> int:
        """Queue an updateJob.  A heartbeat replaces the job's newest queued heartbeat if that one is
        still the last thing queued for the job and has the same state (only the newest numbers matter,
        but the server must see every state: starting, then running, then the final one); a final update
        marks the job's lease reported.  Returns the outbox sequence number."""
        body = json.dumps(strip_secrets(fields))
        with self._tx() as db:
            last = db.execute("SELECT seq, final, body FROM outbox WHERE kind=? AND panda_id=? ORDER BY seq DESC "
                              "LIMIT 1", (JOB, panda_id)).fetchone()
            if (not final and last is not None and not last[1]
                    and json.loads(last[2]).get("state") == fields.get("state")):
                db.execute("UPDATE outbox SET body=?, rev=rev+1, created=? WHERE seq=?",
                           (body, time.time(), last[0]))
                return int(last[0])
            cursor = db.execute("INSERT INTO outbox (kind, panda_id, final, body, run, created) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (JOB, panda_id, int(final), body, self.run,
                                                              time.time()))
            if final:
                db.execute("UPDATE leases SET state='reported' WHERE kind=? AND key=?", (JOB, str(panda_id)))

            return int(cursor.lastrowid or 0)

    def enqueue_range_update(self, panda_id: int, payload: Sequence[Mapping[str, Any]], version: int,
                             range_ids: Sequence[str]) -> int:
        """Queue an updateEventRanges call and mark its ranges reported."""
        body = json.dumps({"payload": list(payload), "version": int(version)})
        with self._tx() as db:
            cursor = db.execute("INSERT INTO outbox (kind, panda_id, final, body, run, created) "
                                "VALUES (?, ?, 1, ?, ?, ?)", (RANGES, panda_id, body, self.run, time.time()))
            db.executemany("UPDATE leases SET state='reported' WHERE kind=? AND key=?",
                           [(RANGE, rid) for rid in range_ids])
            return int(cursor.lastrowid or 0)

    def next_pending(self) -> OutboxEntry | None:
        """The oldest queued update, or None."""
        entries = self.pending(limit=1)
        return entries[0] if entries else None

    def pending(self, before_run: int | None = None, limit: int | None = None) -> list[OutboxEntry]:
        """Queued updates in send order (only those queued by runs before ``before_run`` if given)."""
        query = "SELECT seq, rev, kind, panda_id, final, body, run, attempts, uncertain FROM outbox"
        params: list[Any] = []
        if before_run is not None:
            query += " WHERE run < ?"
            params.append(before_run)
        query += " ORDER BY seq"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [OutboxEntry(seq, rev, kind, pid, bool(final), json.loads(body), run, attempts, bool(uncertain))
                for seq, rev, kind, pid, final, body, run, attempts, uncertain in rows]

    def pending_count(self, before_run: int | None = None) -> int:
        with self._lock:
            if before_run is None:
                return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
            row = self._db.execute("SELECT count(*) FROM outbox WHERE run < ?", (before_run,)).fetchone()
            return int(row[0])

    def acknowledge(self, entry: OutboxEntry) -> bool:
        """Remove an update the server acknowledged.  False if it was replaced meanwhile by a newer
        heartbeat (which then stays queued)."""
        with self._tx() as db:
            cursor = db.execute("DELETE FROM outbox WHERE seq=? AND rev=?", (entry.seq, entry.rev))
            return cursor.rowcount == 1

    def note_failure(self, entry: OutboxEntry, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts=attempts+1, last_error=? WHERE seq=?",
                       (error[:500], entry.seq))

    def mark_uncertain(self, entry: OutboxEntry, error: str) -> None:
        """The server may have committed this update: it is checked with the server before it is sent again."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, uncertain=1 WHERE seq=?",
                       (error[:500], entry.seq))

    def mark_run_uncertain(self, before_run: int) -> int:
        """Every update queued by an earlier run may have been in flight when it ended; returns how many."""
        with self._tx() as db:
            return db.execute("UPDATE outbox SET uncertain=1 WHERE run < ?", (before_run,)).rowcount

    def narrow(self, entry: OutboxEntry, body: Mapping[str, Any]) -> OutboxEntry:
        """Replace an update's body by what the server still lacks (checked, so no longer uncertain)."""
        text = json.dumps(dict(body))
        with self._tx() as db:
            db.execute("UPDATE outbox SET body=?, uncertain=0 WHERE seq=?", (text, entry.seq))
        return OutboxEntry(entry.seq, entry.rev, entry.kind, entry.panda_id, entry.final, json.loads(text),
                           entry.run, entry.attempts, False)

    def reject(self, entry: OutboxEntry, reason: str) -> None:
        """Move an update the server refused out of the outbox (kept in ``rejected``)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (entry.seq, entry.kind, entry.panda_id, int(entry.final), json.dumps(entry.body),
                        reason[:500], time.time()))
            db.execute("DELETE FROM outbox WHERE seq=?", (entry.seq,))

    def rejected(self) -> list[tuple[int, str, int, str]]:
        """(seq, kind, panda_id, reason) of refused updates."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                "SELECT seq, kind, panda_id, reason FROM rejected ORDER BY seq").fetchall()]

    def close(self) -> None:
        with self._lock:
            with suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
