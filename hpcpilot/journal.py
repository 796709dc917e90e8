"""Rank 0's durable journal: what was leased from the server and every update still owed to it.

Choice: SQLite in WAL mode, one file in the pilot workdir, with FULL's durability (below).
* Leases and outbox entries change together (a final update marks its job reported in the same
  transaction), which SQLite gives atomically; an append-only log would need its own record
  framing, torn-tail detection and compaction, i.e. a small database written by hand.
* Acknowledged updates are deleted and heartbeats for the same job coalesce in place, so the
  file stays small during a long outage without rewriting a log.
* WAL lets the sender thread read while rank 0 appends; every durable commit survives a power loss,
  not only a process crash (SIGKILL), before the call that made it returns.
* It is in the standard library and can be inspected with the ``sqlite3`` shell after a crash.

Tables: ``leases`` (jobs and event ranges handed to this pilot; ``leased`` until their final
status is queued, then ``reported``), ``outbox`` (updates in send order, deleted once the server
acknowledged them; ``uncertain`` once an attempt may have been committed without an answer that
proves it, so the sender asks the server before sending it again), ``rejected`` (updates the server
refused, kept for the post-mortem), ``meta``
(the run counter: each opening of the journal is a new run, so a restarted pilot can tell the
previous run's leftovers from its own).  Secrets are never stored here.

Bounded by what is in flight (issue 14): a range lease leaves ``leases`` in the transaction that
queues its status (the outbox entry carries it from then on, and is deleted once acknowledged), and
a job lease leaves when its final update is acknowledged or refused.  The restart query
(``in_flight``) is a search of the ``leases_open`` index, and the WAL file is truncated back to
``WAL_LIMIT_BYTES`` after each checkpoint.  The outbox is mirrored in memory (``owed()``), so what
is owed is known without reading the outbox.  A file SQLite cannot read is moved aside (one
warning naming what is lost) and a fresh journal started: a damaged journal never stops a restart.

Group commit (issue 26; ``hpcpilot.groupcommit``): a write that nothing outside the pilot acts on (a range update
or a heartbeat queued, an acknowledgement, a failed attempt noted) is committed with the next write that must be
durable: a lease, a final job update, or the sender taking the entry to send it.  So a SIGKILL at any instant loses
nothing anyone was told of, and what it may lose (an acknowledgement, an update not yet sent) is what a restart
replays or asks the server about anyway.

Durability (issue 26): ``synchronous=NORMAL`` plus ``WalSync``, FULL's guarantee with the fsync off the lock.
With FULL, SQLite fsyncs the WAL at the end of every ``COMMIT`` while the connection and this journal's lock
are held, so no fsync overlaps the next transaction and each durable call pays one.  Here SQLite commits
without that fsync, the lock is released, and the durable call then waits (``WalSync.wait``) until an fsync
of the ``-wal`` file *that began after its COMMIT* has completed; one fsync covers every commit made before
it began, so the fetch thread's lease and a sender's take share one, and the next transaction is built
while it runs.  Why a machine crash (power loss, kernel panic: the page cache is lost, unlike with SIGKILL)
then loses nothing that was acted on, exactly as with FULL:
* A commit is the WAL frames it appended, the last one marked as a commit.  After the fsync those frames
  are on the disk; recovery replays the WAL up to the last valid commit frame (checksummed, salted), so the
  commit is recovered -- the same bytes FULL would have synced, only synced by another call.  A later
  transaction being written during the fsync adds frames after it; torn, they fail their checksum and
  recovery stops before them, as with FULL.  (FULL also pads the commit to a sector boundary on a disk
  without power-safe overwrite; SQLite's unix build assumes power-safe overwrite, so it pads nothing there.)
* Nothing is acted on before that fsync: a lease is handed out, a final update reported done, an entry
  sent only after the durable call returns; ``next_pending`` waits for the last commit's fsync even when
  the entry was committed earlier by the committer thread (which commits lazy writes without waiting).
* Checkpoints: NORMAL fsyncs the WAL before copying frames into the database and the database after, and
  fsyncs the WAL header when the WAL restarts; ``WalSync`` fsyncs the WAL's directory once, at its first.  So a
  commit whose frames a checkpoint has already copied is on disk in the database file; if the WAL is then
  restarted or truncated (``journal_size_limit``) while our fsync runs, the fsync syncs the new contents
  and the commit is still safe in the database; a WAL deleted at close was checkpointed first.  The fsync
  opens the WAL by name each time, so it never syncs a stale file.
* An fsync that fails makes this and every later durable call raise (``WalSync``): after a failed fsync
  Linux may drop the dirty pages, and a later fsync would report success without them.
A SIGKILL needs none of this (the kernel keeps the written pages): tests/unit/test_journal_kill.py.

Senders (issue 14): each outbox entry carries its ``shard`` (PandaID modulo the sender count the
journal was opened with); each sender thread takes the oldest entry of its own shard
(``next_pending(shard)``, a search of ``outbox_shard``), so one job's updates go out strictly in
order while different jobs' go in parallel.  A restart with another sender count re-shards the
(bounded) outbox at open.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpilot.groupcommit import GroupCommit

logger = logging.getLogger(__name__)

SECRET_KEYS = frozenset({"pilotSecrets", "secrets"})
WAL_LIMIT_BYTES = 4 * 1024 * 1024
"""The WAL file is cut back to this size after a checkpoint (SQLite otherwise keeps its largest size)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    kind TEXT NOT NULL, key TEXT NOT NULL, panda_id INTEGER NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL, run INTEGER NOT NULL, created REAL NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL DEFAULT 0, kind TEXT NOT NULL,
    panda_id INTEGER NOT NULL, final INTEGER NOT NULL, body TEXT NOT NULL, run INTEGER NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
    uncertain INTEGER NOT NULL DEFAULT 0, shard INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, panda_id INTEGER NOT NULL, final INTEGER NOT NULL,
    body TEXT NOT NULL, reason TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (kind, panda_id);
CREATE INDEX IF NOT EXISTS leases_open ON leases (kind, state, created, key);
"""
_SHARD_INDEX = "CREATE INDEX IF NOT EXISTS outbox_shard ON outbox (shard, seq)"
"""Created after the ``shard`` column is added to a journal written before it existed."""
NEXT_IN_SHARD_QUERY = ("SELECT seq, rev, kind, panda_id, final, body, run, attempts, uncertain FROM outbox "
                       "INDEXED BY outbox_shard WHERE shard=? ORDER BY seq LIMIT ?")
"""A sender's next update: a search of ``outbox_shard``, never a scan of the other senders' entries."""
IN_FLIGHT_QUERY = ("SELECT kind, key, panda_id, body, run FROM leases INDEXED BY leases_open "
                   "WHERE kind=? AND state='leased' AND run < ? ORDER BY created, key")
"""The restart query; INDEXED BY makes SQLite refuse it rather than fall back to a scan of every lease."""
NO_RUN = 1 << 62  # ``run < NO_RUN`` holds for every run: one query text for both forms of ``in_flight``


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


@dataclass(frozen=True)
class Owed:
    """What the outbox still holds: entries, final job updates (by PandaID), event ranges per PandaID."""

    entries: int
    final_jobs: frozenset[int]
    ranges: dict[int, int]


class _OutboxTally:
    """The outbox in memory (seq -> kind, PandaID, final, ranges), so asking what is owed reads no row."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[str, int, bool, int]] = {}
        self.final_jobs: Counter[int] = Counter()
        self.ranges: Counter[int] = Counter()

    def add(self, seq: int, kind: str, panda_id: int, final: bool, n_ranges: int) -> None:
        self.entries[seq] = (kind, panda_id, final, n_ranges)
        if kind == JOB and final:
            self.final_jobs[panda_id] += 1
        if n_ranges:
            self.ranges[panda_id] += n_ranges

    def remove(self, seq: int) -> None:
        kind, panda_id, final, n_ranges = self.entries.pop(seq)
        if kind == JOB and final:
            _decrement(self.final_jobs, panda_id, 1)
        _decrement(self.ranges, panda_id, n_ranges)

    def resize(self, seq: int, n_ranges: int) -> None:
        kind, panda_id, final, _ = self.entries[seq]
        self.remove(seq)
        self.add(seq, kind, panda_id, final, n_ranges)

    def owed(self) -> Owed:
        return Owed(len(self.entries), frozenset(self.final_jobs), dict(self.ranges))


def _decrement(counter: Counter[int], key: int, n: int) -> None:
    if not n:
        return
    counter[key] -= n
    if counter[key] <= 0:
        del counter[key]


def count_ranges(body: Mapping[str, Any]) -> int:
    """Event ranges in an updateEventRanges body (version 0 flat, version 1/2 chunked)."""
    return sum(len(item["eventRanges"]) if "eventRanges" in item else 1 for item in body.get("payload", ()))


def _unused_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... : the first that does not exist (nothing moved aside is lost)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


class Journal:
    """The durable lease table and outbox (thread-safe; one per pilot workdir).

    ``lost`` is None, or the one line said when an unreadable journal file was moved aside."""

    def __init__(self, path: Path, shards: int = 1) -> None:
        self.path = Path(path)
        self.shards = max(1, int(shards))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tally = _OutboxTally()
        self.lost: str | None = None
        self._commits = GroupCommit(Path(f"{self.path}-wal"), str(self.path), self._load_tally)
        self._lock = self._commits.lock  # guards the connection, for reads too
        self._sync = self._commits.sync
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self.lost = self._move_aside(exc)
            self._open()

    def _open(self) -> None:
        """Open (or create) the file, check it is whole, start a new run and load the outbox tally."""
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                   timeout=30.0)
        self._commits.attach(self._db)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # the WAL fsync is WalSync's, after COMMIT
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else 'no answer'}")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            if "uncertain" not in columns:  # a journal written before the column existed
                self._db.execute("ALTER TABLE outbox ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0")
            if "shard" not in columns:
                self._db.execute("ALTER TABLE outbox ADD COLUMN shard INTEGER NOT NULL DEFAULT 0")
            self._db.execute(_SHARD_INDEX)
            with self._commits.write() as db:
                row = db.execute("SELECT value FROM meta WHERE key='run'").fetchone()
                self.run = (int(row[0]) if row else 0) + 1
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('run', ?)", (str(self.run),))
                self._drop_finished_leases(db)
                # the previous run may have had another sender count: its entries move to this run's shards
                db.execute("UPDATE outbox SET shard = panda_id % ? WHERE shard != panda_id % ?",
                           (self.shards, self.shards))
            self._load_tally()
        except (sqlite3.DatabaseError, ValueError) as exc:
            self._db.close()
            raise sqlite3.DatabaseError(str(exc)) from exc

    @staticmethod
    def _drop_finished_leases(db: sqlite3.Connection) -> None:
        """Leases a journal of an earlier version kept once reported: ranges, and jobs whose final update
        is no longer queued."""
        db.execute("DELETE FROM leases WHERE kind=? AND state='reported'", (RANGE,))
        db.execute("DELETE FROM leases WHERE kind=? AND state='reported' AND NOT EXISTS (SELECT 1 FROM outbox "
                   "WHERE outbox.kind=? AND outbox.final=1 AND outbox.panda_id=leases.panda_id)", (JOB, JOB))

    def _load_tally(self) -> None:
        self._tally = _OutboxTally()
        for seq, kind, panda_id, final, body in self._db.execute(
                "SELECT seq, kind, panda_id, final, body FROM outbox"):
            n_ranges = count_ranges(json.loads(body)) if kind == RANGES else 0
            self._tally.add(int(seq), kind, int(panda_id), bool(final), n_ranges)

    def _move_aside(self, exc: Exception) -> str:
        """Rename the unreadable file (and its WAL and shared-memory files) out of the way; the warning."""
        aside = _unused_name(self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"))
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").rename(f"{aside}{suffix}")
        line = (f"journal {self.path} is unreadable ({exc}); moved to {aside}: the previous run's leases not yet "
                "reported and updates not yet acknowledged cannot be recovered (the server ends those jobs "
                "for lost heartbeat); starting a fresh journal")
        logger.warning("%s", line)
        return line

    def group(self) -> AbstractContextManager[None]:
        """One transaction for every write in the block (one loop pass), committed once at its end
        (``GroupCommit.group``)."""
        return self._commits.group()

    # ------------------------------------------------------------------------------------ leases

    def record_job_lease(self, panda_id: int, job: Mapping[str, Any]) -> None:
        """Remember a leased job definition (secrets stripped) before it is handed out."""
        with self._commits.write() as db:
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, 'leased', ?, ?)",
                       (JOB, str(panda_id), panda_id, json.dumps(strip_secrets(job)), self.run, time.time()))

    def record_range_leases(self, panda_id: int, ranges: Sequence[Mapping[str, Any]]) -> None:
        """Remember leased event ranges before they are handed out."""
        now = time.time()
        with self._commits.write() as db:
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
        params = (kind, NO_RUN if before_run is None else before_run)
        with self._lock:
            rows = self._db.execute(IN_FLIGHT_QUERY, params).fetchall()
        return [Lease(k, key, pid, json.loads(body), run) for k, key, pid, body, run in rows]

    # ------------------------------------------------------------------------------------ outbox

    def enqueue_job_update(self, panda_id: int, fields: Mapping[str, Any], final: bool) -> int:
        """Queue an updateJob.  A heartbeat replaces the job's newest queued heartbeat if that one is
        still the last thing queued for the job and has the same state (only the newest numbers matter,
        but the server must see every state: starting, then running, then the final one); a final update
        marks the job's lease reported and is committed at once (lost, a restart would report the job
        failed); a heartbeat rides the next commit.  Returns the outbox sequence number."""
        body = json.dumps(strip_secrets(fields))
        with self._commits.write(durable=final) as db:
            last = db.execute("SELECT seq, final, body FROM outbox WHERE kind=? AND panda_id=? ORDER BY seq DESC "
                              "LIMIT 1", (JOB, panda_id)).fetchone()
            if (not final and last is not None and not last[1]
                    and json.loads(last[2]).get("state") == fields.get("state")):
                db.execute("UPDATE outbox SET body=?, rev=rev+1, created=? WHERE seq=?",
                           (body, time.time(), last[0]))
                self._commits.written(int(last[0]))
                return int(last[0])
            cursor = db.execute("INSERT INTO outbox (kind, panda_id, final, body, run, created, shard) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", (JOB, panda_id, int(final), body, self.run,
                                                                 time.time(), self.shard_of(panda_id)))
            if final:
                db.execute("UPDATE leases SET state='reported' WHERE kind=? AND key=?", (JOB, str(panda_id)))
            seq = int(cursor.lastrowid or 0)
            self._tally.add(seq, JOB, panda_id, final, 0)  # under the lock: the sender may ack it at once
            self._commits.written(seq)
            return seq

    def enqueue_range_update(self, panda_id: int, payload: Sequence[Mapping[str, Any]], version: int,
                             range_ids: Sequence[str]) -> int:
        """Queue an updateEventRanges call; its ranges' leases leave the journal in the same transaction
        (from now on the outbox entry stands for them, replayed after a restart until acknowledged)."""
        body = {"payload": list(payload), "version": int(version)}
        with self._commits.write(durable=False) as db:
            cursor = db.execute("INSERT INTO outbox (kind, panda_id, final, body, run, created, shard) "
                                "VALUES (?, ?, 1, ?, ?, ?, ?)", (RANGES, panda_id, json.dumps(body), self.run,
                                                                 time.time(), self.shard_of(panda_id)))
            db.executemany("DELETE FROM leases WHERE kind=? AND key=?", [(RANGE, rid) for rid in range_ids])
            seq = int(cursor.lastrowid or 0)
            self._tally.add(seq, RANGES, panda_id, True, count_ranges(body))
            self._commits.written(seq)
            return seq

    def shard_of(self, panda_id: int) -> int:
        """The sender that owns a job's updates: all of one job's updates go through one sender, in order."""
        return panda_id % self.shards

    def next_pending(self, shard: int | None = None, skip: frozenset[int] = frozenset()) -> OutboxEntry | None:
        """The oldest queued update (of the jobs of ``shard``, if given) whose seq is not in ``skip``
        (updates parked until their job's status look-up), or None."""
        ticket, found = 0, None
        with self._lock:
            if shard is None:
                entries = [e for e in self.pending(limit=len(skip) + 1) if e.seq not in skip]
                found = entries[0] if entries else None
            else:
                rows = self._db.execute(NEXT_IN_SHARD_QUERY, (shard, len(skip) + 1)).fetchall()
                found = next((OutboxEntry(seq, rev, kind, pid, bool(final), json.loads(body), run, attempts,
                                          bool(uncertain))
                              for seq, rev, kind, pid, final, body, run, attempts, uncertain in rows
                              if seq not in skip), None)
            if found is not None:
                ticket = self._commits.ticket_to_send(found.seq)
        self._sync.wait(ticket)
        return found

    def uncertain_range_updates(self, panda_id: int) -> list[OutboxEntry]:
        """A job's range updates whose fate is open, in send order: what one status look-up settles."""
        with self._lock:
            rows = self._db.execute("SELECT seq, rev, kind, panda_id, final, body, run, attempts, uncertain "
                                    "FROM outbox WHERE kind=? AND panda_id=? AND uncertain=1 ORDER BY seq",
                                    (RANGES, panda_id)).fetchall()
            open_seqs = [row[0] for row in rows if self._commits.is_open(row[0])]
            ticket = self._commits.ticket_to_send((open_seqs or [row[0] for row in rows])[0]) if rows else 0
        self._sync.wait(ticket)
        return [OutboxEntry(seq, rev, kind, pid, bool(final), json.loads(body), run, attempts, bool(uncertain))
                for seq, rev, kind, pid, final, body, run, attempts, uncertain in rows]

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
        """Queued updates (all of them from the tally; those of earlier runs from the outbox)."""
        with self._lock:
            if before_run is None:
                return len(self._tally.entries)
            row = self._db.execute("SELECT count(*) FROM outbox WHERE run < ?", (before_run,)).fetchone()
            return int(row[0])

    def acknowledge(self, entry: OutboxEntry) -> bool:
        """Remove an update the server acknowledged.  False if it was replaced meanwhile by a newer
        heartbeat (which then stays queued).  Committed with the next commit: lost, the update is sent again
        after a restart, checked with the server first."""
        with self._commits.write(durable=False) as db:
            cursor = db.execute("DELETE FROM outbox WHERE seq=? AND rev=?", (entry.seq, entry.rev))
            if cursor.rowcount != 1:
                return False
            self._forget_job(db, entry)
            self._tally.remove(entry.seq)
            self._commits.forget(entry.seq)
            return True

    @staticmethod
    def _forget_job(db: sqlite3.Connection, entry: OutboxEntry) -> None:
        """A job's final update has left the outbox: its lease is no longer needed."""
        if entry.kind == JOB and entry.final:
            db.execute("DELETE FROM leases WHERE kind=? AND key=? AND state='reported'",
                       (JOB, str(entry.panda_id)))

    def owed(self) -> Owed:
        """What the outbox holds, from the in-memory tally (no read of the outbox)."""
        with self._lock:
            return self._tally.owed()

    def note_failure(self, entry: OutboxEntry, error: str) -> None:
        with self._commits.write(durable=False) as db:
            db.execute("UPDATE outbox SET attempts=attempts+1, last_error=? WHERE seq=?",
                       (error[:500], entry.seq))

    def mark_uncertain(self, entry: OutboxEntry, error: str) -> None:
        """The server may have committed this update: it is checked with the server before it is sent again
        (lost with an uncommitted transaction, a restart marks it uncertain again: ``mark_run_uncertain``)."""
        with self._commits.write(durable=False) as db:
            db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, uncertain=1 WHERE seq=?",
                       (error[:500], entry.seq))

    def mark_run_uncertain(self, before_run: int) -> int:
        """Every update queued by an earlier run may have been in flight when it ended; returns how many."""
        with self._commits.write() as db:
            return db.execute("UPDATE outbox SET uncertain=1 WHERE run < ?", (before_run,)).rowcount

    def narrow(self, entry: OutboxEntry, body: Mapping[str, Any]) -> OutboxEntry:
        """Replace an update's body by what the server still lacks (checked, so no longer uncertain)."""
        text = json.dumps(dict(body))
        with self._commits.write(durable=False) as db:
            db.execute("UPDATE outbox SET body=?, uncertain=0 WHERE seq=?", (text, entry.seq))
            self._commits.written(entry.seq)
            if entry.seq in self._tally.entries and entry.kind == RANGES:
                self._tally.resize(entry.seq, count_ranges(body))
        return OutboxEntry(entry.seq, entry.rev, entry.kind, entry.panda_id, entry.final, json.loads(text),
                           entry.run, entry.attempts, False)

    def reject(self, entry: OutboxEntry, reason: str) -> None:
        """Move an update the server refused out of the outbox (kept in ``rejected``; lost with an uncommitted
        transaction, the update is checked with the server again after a restart)."""
        with self._commits.write(durable=False) as db:
            db.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (entry.seq, entry.kind, entry.panda_id, int(entry.final), json.dumps(entry.body),
                        reason[:500], time.time()))
            if db.execute("DELETE FROM outbox WHERE seq=?", (entry.seq,)).rowcount == 1:
                self._forget_job(db, entry)
                self._tally.remove(entry.seq)
                self._commits.forget(entry.seq)

    def rejected(self) -> list[tuple[int, str, int, str]]:
        """(seq, kind, panda_id, reason) of refused updates."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                "SELECT seq, kind, panda_id, reason FROM rejected ORDER BY seq").fetchall()]

    def commit(self) -> None:
        """Commit what lazy writes the open transaction holds (the pilot's end, a bench's last pass)."""
        self._commits.commit()

    def close(self) -> None:
        with self._lock:
            self._commits.close()
            with suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
