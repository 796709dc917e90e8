"""Group fsync of a SQLite write-ahead log: one fsync shared by every commit made before it began.

Why: with ``synchronous=FULL`` SQLite fsyncs the WAL inside ``COMMIT``, while the connection (and the
journal's lock) is held, so no fsync overlaps the next transaction and every durable commit pays one.  The
journal runs ``synchronous=NORMAL`` instead (SQLite then syncs only at checkpoints and at a WAL restart's
header) and, after ``COMMIT`` and outside its lock, asks this object for an fsync of the ``-wal`` file that
began after that commit: a thread whose commit is covered by an fsync in progress waits for it, a thread
whose commit came after the one in progress began waits for it to end and then starts the next one, which
covers every commit made meanwhile.  See ``hpcpilot.journal`` for why that is FULL's guarantee.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path


class WalSync:
    """Commit tickets and the fsyncs that cover them (thread-safe).

    ``committed()`` is called right after each ``COMMIT`` (under the journal's lock, so tickets follow the
    commit order) and returns the commit's ticket; ``wait(ticket)`` returns once an fsync that began after
    that commit has completed.  ``fsync`` is the call used (``os.fsync``; a test or a bench may replace it
    to count the calls or, for a no-sync baseline, to skip them).  A failed fsync is sticky: after one, the
    kernel may have dropped the dirty pages it could not write and a later fsync would succeed without them,
    so every later ``wait`` raises too."""

    def __init__(self, wal: Path, fsync: Callable[[int], None] = os.fsync) -> None:
        self.wal = Path(wal)
        self.fsync = fsync
        self.fsyncs = 0  # fsyncs completed (the unit tests count them)
        self._cond = threading.Condition()
        self._committed = 0  # tickets handed out: commits made
        self._synced = 0  # every commit up to this ticket is covered by a completed fsync
        self._syncing = False
        self._failed: str | None = None
        self._dir_synced = False  # the WAL's directory entry: fsync'd once, after its first fsync

    def committed(self) -> int:
        """A commit was just made: its ticket."""
        with self._cond:
            self._committed += 1
            return self._committed

    def latest(self) -> int:
        """The ticket of the last commit made (0 if none): waiting for it covers every earlier commit."""
        with self._cond:
            return self._committed

    def wait(self, ticket: int) -> None:
        """Return once commit ``ticket`` is covered by a completed fsync (at once if it already is or if
        ``ticket`` is 0); raises ``sqlite3.OperationalError`` if the fsync failed, now or before."""
        if not ticket:
            return
        with self._cond:
            while True:
                if self._failed is not None:
                    raise sqlite3.OperationalError(self._failed)
                if self._synced >= ticket:
                    return
                if self._syncing:  # it may or may not cover this ticket: look again when it ends
                    self._cond.wait()
                    continue
                self._sync_locked()

    def _sync_locked(self) -> None:
        """Fsync the WAL for every commit made so far, with the condition released during the call."""
        self._syncing = True
        target = self._committed
        self._cond.release()
        error = None
        try:
            self._fsync_wal()
        except OSError as exc:
            error = f"fsync of {self.wal} failed ({exc}): the journal's last commits may not be on disk"
        finally:
            self._cond.acquire()
            self._syncing = False
            self._cond.notify_all()
        if error is not None:
            self._failed = error
        else:
            self._synced = max(self._synced, target)
            self.fsyncs += 1

    def _fsync_wal(self) -> None:
        """Open the WAL, fsync it, close it.  Opened afresh each time: SQLite may truncate the file (same
        inode) or, when its last connection closes, delete it after a checkpoint; a WAL that is gone was
        checkpointed into the database file, which NORMAL fsyncs at every checkpoint, so nothing is owed."""
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            self.fsync(fd)
        finally:
            os.close(fd)
        if not self._dir_synced:  # a new WAL file's name must survive a crash too (SQLite does it as well)
            dir_fd = os.open(self.wal.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._dir_synced = True
