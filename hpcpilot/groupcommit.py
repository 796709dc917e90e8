"""Group commit for the journal's one SQLite connection: when a write is committed, and when it may be acted on.

Why a room of its own: the journal (``hpcpilot.journal``) decides *what* it stores; this decides *when* it is
durable, which is the subtle part (see the journal's docstring for why it keeps FULL's guarantee).  Writes go
into one open transaction, each as a savepoint so that an error undoes it alone.  A lazy write (nothing outside
the pilot acts on it) waits there for the next durable one; a durable write commits at once (unless a ``group``
is open, whose end commits) and returns only once ``WalSync`` says an fsync that began after its COMMIT has
completed -- the fsync outside the lock, so the next transaction is built meanwhile.  A transaction holding
only lazy writes is committed at the latest ``COMMIT_WITHIN`` seconds after it began (a thread waiting on a
condition, no polling).  Outbox entries remember the commit that last wrote them, so a sender that takes one
waits for exactly that commit's fsync.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from hpcpilot.walsync import WalSync

logger = logging.getLogger(__name__)

COMMIT_WITHIN = 0.2
"""Seconds after which a transaction holding only lazy writes is committed even if no durable write comes."""


class GroupCommit:
    """The open transaction of one connection, its commits and their fsync tickets (thread-safe: ``lock``
    guards the connection; the journal takes it for its reads too).

    ``on_rollback`` is called (under the lock) when a COMMIT failed and the transaction was rolled back, so
    that the owner reloads what it mirrors in memory."""

    def __init__(self, wal: Path, label: str, on_rollback: Callable[[], None]) -> None:
        self.lock = threading.RLock()
        self.sync = WalSync(wal)
        self.db: sqlite3.Connection | None = None
        self._label = label
        self._on_rollback = on_rollback
        self._in_tx = False  # a transaction is open: lazy writes applied, not yet committed
        self._tx_number = 0  # counts transactions begun: the committer commits only the one it was woken for
        self._group_depth = 0
        self._uncommitted: set[int] = set()  # outbox seqs written in the open transaction
        self._commit_of: dict[int, int] = {}  # outbox seq -> ticket of the commit that last wrote it
        self._wake_committer = threading.Condition(self.lock)
        self._committer: threading.Thread | None = None
        self._closed = False

    def attach(self, db: sqlite3.Connection) -> None:
        """The connection the writes go to (again after a journal file was moved aside and reopened)."""
        self.db = db
        self._in_tx = False
        self._uncommitted.clear()

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write: applied in the open transaction (begun if none); committed now if ``durable`` (and no
        ``group`` is open), else with the next commit.  A durable write returns once the WAL was fsync'd
        after its commit."""
        ticket = 0
        with self.lock:
            db = self._begin()
            db.execute("SAVEPOINT w")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK TO w")
                db.execute("RELEASE w")
                raise
            db.execute("RELEASE w")
            if durable and not self._group_depth:
                ticket = self.commit_now()
        self.sync.wait(ticket)

    def written(self, seq: int) -> None:
        """An outbox entry was written in the open transaction (call within ``write``)."""
        self._uncommitted.add(seq)

    def forget(self, seq: int) -> None:
        """An outbox entry left the outbox (call within ``write``)."""
        self._commit_of.pop(seq, None)

    def is_open(self, seq: int) -> bool:
        """The entry was written in the transaction still open (call under ``lock``)."""
        return seq in self._uncommitted

    def _begin(self) -> sqlite3.Connection:
        assert self.db is not None, "GroupCommit.attach was not called"
        if not self._in_tx:
            self.db.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            self._tx_number += 1
            self._start_committer()
            self._wake_committer.notify()
        return self.db

    def commit_now(self) -> int:
        """Commit the open transaction (call under ``lock``); its ticket, or the last commit's if none was
        open: the caller waits for it, outside the lock, to act on what it wrote.  If the commit fails,
        nothing of it was written: the transaction is rolled back, ``on_rollback`` called and the error raised."""
        if not self._in_tx or self.db is None:
            return self.sync.latest()
        self._in_tx = False
        written = list(self._uncommitted)
        self._uncommitted.clear()
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            with suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            self._on_rollback()
            raise
        ticket = self.sync.committed()
        for seq in written:
            self._commit_of[seq] = ticket
        return ticket

    @contextmanager
    def group(self) -> Iterator[None]:
        """One transaction for every write in the block (one loop pass), committed once at its end; the
        calling thread holds the lock meanwhile.  Nothing written in it may be acted on before it ends (it
        ends once the WAL was fsync'd after the commit)."""
        ticket = 0
        with self.lock:
            self._group_depth += 1
            try:
                yield
            finally:
                self._group_depth -= 1
            if not self._group_depth:
                ticket = self.commit_now()
        self.sync.wait(ticket)

    def commit(self) -> None:
        """Commit what lazy writes the open transaction holds and wait for their fsync (outside a group)."""
        ticket = 0
        with self.lock:
            if not self._group_depth:
                ticket = self.commit_now()
        self.sync.wait(ticket)

    def ticket_to_send(self, seq: int) -> int:
        """Before an entry leaves the journal to be sent (call under ``lock``): commit it if it is still in the
        open transaction.  The ticket to wait for, outside the lock: that of the commit that last wrote the
        entry (perhaps the committer's, not yet fsync'd; the last commit's for an earlier run's entry; 0 inside
        a ``group``, whose end commits)."""
        if self._group_depth:
            return 0
        if seq in self._uncommitted:
            return self.commit_now()
        return self._commit_of.get(seq) or self.sync.latest()  # an earlier run's entry: the last commit

    def close(self) -> None:
        """Commit and fsync what is open, and stop the committer thread (call under ``lock``)."""
        self.sync.wait(self.commit_now())
        self._closed = True
        self._wake_committer.notify()

    def _start_committer(self) -> None:
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_lazy_writes, name="journal-commit", daemon=True)
            self._committer.start()

    def _commit_lazy_writes(self) -> None:
        """Thread: commit a transaction still open ``COMMIT_WITHIN`` seconds after it began."""
        with self.lock:
            while not self._closed:
                if not self._in_tx:
                    self._wake_committer.wait()
                    continue
                number = self._tx_number
                self._wake_committer.wait(COMMIT_WITHIN)
                if self._in_tx and number == self._tx_number and not self._group_depth and not self._closed:
                    try:  # not waited for: whoever acts on these writes waits for their fsync first
                        self.commit_now()
                    except sqlite3.Error as exc:  # the next durable write meets it again
                        logger.warning("journal %s: commit failed: %s", self._label, exc)
