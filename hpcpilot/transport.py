"""Message transport between ranks: MPI for real runs, in-process queues for one rank and tests.

This is the only module that imports mpi4py, and only inside ``MpiTransport``: a pilot that
runs single-rank, or a test, never loads MPI.  Waiting is never a blocking MPI receive: on
every MPI implementation here that spins a full core, which on a real node is stolen from the
payload.  Callers poll with ``receive()`` and sleep with ``Backoff``: fast while messages
flow, slow while idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from hpcpilot.protocol import Message

CONTROLLER = 0


class Transport(Protocol):
    """What controller and worker loops need from a transport."""

    rank: int
    size: int

    def send(self, dest: int, message: Message) -> None:
        """Queue ``message`` for ``dest`` without waiting for it to be received."""

    def receive(self) -> tuple[int, Message] | None:
        """The next message and its source rank, or None at once when nothing is waiting."""

    def abort(self, code: int) -> None:
        """End every rank now (after an uncaught exception), with ``code``."""

    def lost(self) -> list[int]:
        """Ranks the MPI library declared dead since the last call (only under a fault-tolerant launch)."""


class Backoff:
    """Sleep for polling loops: reset when work arrives, grow while idle, and learn how long idle lasts.

    With the defaults an idle loop wakes 20 times a second (negligible CPU), and a loop that
    is handling messages re-polls within 200 microseconds.  The growth is gentle (x1.2): with x2
    a loop that waited T oversleeps by up to T again, on both ends of every request/reply, which
    cut the event-range round trip by 7-12x in bench/bench_es_throughput.py at no idle cost.
    Why not shorter: on a loaded node a 50 us sleep lasts about 135 us and costs about 15 us of CPU,
    so the first polls after a message cost CPU (which the other ranks on the core need) and gain
    no latency.

    Learning (issue 26): a loop that waits for answers at a steady rate (a worker rank waiting for its
    next ranges, rank 0 between two ranks' reports) would climb from 200 us again in every wait, 12
    wake-ups (each about 20 us of CPU here) for a 7 ms round trip.  So each idle stretch (first wait to
    the reset that ends it) is remembered, and a stretch starts with one sleep of half the shortest of
    the last ``memory`` ones, then grows on from a fifth of that: about 5 wake-ups for the same round
    trip, and, as before, an oversleep of at most about a fifth of the wait.  A shorter stretch than
    that half (the rate rose) costs at most the half once, and is remembered at once.
    """

    def __init__(self, minimum: float = 2e-4, maximum: float = 0.05, factor: float = 1.2, memory: int = 8) -> None:
        self.minimum, self.maximum, self.factor = minimum, maximum, factor
        self.delay = minimum
        self.idle_since: float | None = None  # monotonic time of the current stretch's first wait
        self.stretches: deque[float] = deque(maxlen=max(1, memory))

    def reset(self) -> None:
        if self.idle_since is not None:
            self.stretches.append(time.monotonic() - self.idle_since)
            self.idle_since = None
        self.delay = self.minimum

    def lead(self) -> float:
        """The first sleep of an idle stretch: half the shortest recent one, once enough are known."""
        if len(self.stretches) < (self.stretches.maxlen or 1):
            return self.minimum
        return min(self.maximum, max(self.minimum, 0.5 * min(self.stretches)))

    def wait(self, event: threading.Event | None = None) -> None:
        """Sleep the current delay (or until ``event`` is set) and grow it; a stretch's first sleep is its lead."""
        if self.idle_since is None:
            self.idle_since = time.monotonic()
            lead = self.lead()
            if lead > self.minimum:
                self._sleep(lead, event)
                self.delay = min(max(self.minimum, (self.factor - 1) * lead), self.maximum)
                return
        self._sleep(self.delay, event)
        self.delay = min(self.delay * self.factor, self.maximum)

    @staticmethod
    def _sleep(seconds: float, event: threading.Event | None) -> None:
        if event is not None:
            event.wait(seconds)
        else:
            time.sleep(seconds)


class QueueHub:
    """The shared mailboxes of an in-process group of ranks (threads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.boxes: list[queue.SimpleQueue[tuple[int, Message]]] = [queue.SimpleQueue() for _ in range(size)]
        self.aborted: int | None = None

    def transport(self, rank: int) -> QueueTransport:
        return QueueTransport(self, rank)


class QueueTransport:
    """In-process transport: rank 0 and its workers as threads of one process."""

    def __init__(self, hub: QueueHub, rank: int) -> None:
        self.hub, self.rank, self.size = hub, rank, hub.size

    def send(self, dest: int, message: Message) -> None:
        self.hub.boxes[dest].put((self.rank, message))

    def receive(self) -> tuple[int, Message] | None:
        try:
            return self.hub.boxes[self.rank].get_nowait()
        except queue.Empty:
            return None

    def abort(self, code: int) -> None:
        self.hub.aborted = code
        os._exit(code)

    def lost(self) -> list[int]:
        return []  # threads of one process die together


FAILURE_CHECK_INTERVAL = 0.5
"""Seconds between two looks at the MPI library's list of failed processes (a local call, but not free)."""


class MpiTransport:
    """MPI point-to-point over COMM_WORLD with pickled messages, tags from the protocol.

    Under a fault-tolerant launch (Open MPI's ``mpirun --with-ft ulfm``) a dead rank does not end the
    others: COMM_WORLD returns errors instead of aborting, and the transport turns a process-failure
    error, or a new entry in the library's list of failed processes, into ``lost()`` ranks after
    acknowledging them (``Ack_failed``, so that receives from any source work again).  Messages to a
    dead rank are dropped.  Without fault tolerance (MPICH's Hydra, srun, plain mpirun) the launcher
    kills every rank when one dies, and none of this is ever reached.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        from mpi4py import MPI  # the only mpi4py import in hpcpilot

        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._pending: deque[tuple[int, Any]] = deque()
        self.fault_tolerant = fault_tolerant_launch(environ) and hasattr(self.comm, "Get_failed")
        self.dead: set[int] = set()
        self._new_dead: list[int] = []
        self._failures_checked = 0.0
        if self.fault_tolerant:
            self.comm.Set_errhandler(MPI.ERRORS_RETURN)  # mpi4py's default too; said here because it is relied on

    def send(self, dest: int, message: Message) -> None:
        if dest in self.dead:
            return
        try:
            self._pending.append((dest, self.comm.isend(message, dest=dest, tag=int(message.tag))))
        except self._mpi.Exception as exc:
            self._on_error(exc)
        self._complete_sent()

    def _complete_sent(self) -> None:
        """Forget the sends that completed (or whose destination died), oldest first."""
        while self._pending:
            dest, request = self._pending[0]
            try:
                if dest not in self.dead and not request.Test():
                    return
            except self._mpi.Exception as exc:
                self._on_error(exc)
            self._pending.popleft()

    def receive(self) -> tuple[int, Message] | None:
        status = self._mpi.Status()
        try:
            self._check_failures()
            if not self.comm.Iprobe(source=self._mpi.ANY_SOURCE, tag=self._mpi.ANY_TAG, status=status):
                return None
            message = self.comm.recv(source=status.Get_source(), tag=status.Get_tag())
        except self._mpi.Exception as exc:
            self._on_error(exc)
            return None
        return status.Get_source(), message

    def lost(self) -> list[int]:
        found, self._new_dead = self._new_dead, []
        return found

    def _check_failures(self, force: bool = False) -> None:
        """Look at the library's failed processes every FAILURE_CHECK_INTERVAL: a rank that died while
        messages from others kept arriving raises no error on a receive from any source."""
        if not self.fault_tolerant:
            return
        now = time.monotonic()
        if not force and now - self._failures_checked < FAILURE_CHECK_INTERVAL:
            return
        self._failures_checked = now
        self.comm.Ack_failed()
        failed = self.comm.Get_failed()
        ranks = self._mpi.Group.Translate_ranks(failed, list(range(failed.Get_size())), self.comm.Get_group())
        failed.Free()
        for number in sorted(set(ranks) - self.dead - {self._mpi.UNDEFINED}):
            self.dead.add(number)
            self._new_dead.append(number)

    def _on_error(self, exc: Exception) -> None:
        """A process failure is acknowledged and reported through ``lost()``; any other error is a bug."""
        classes = (self._mpi.ERR_PROC_FAILED, self._mpi.ERR_PROC_FAILED_PENDING, self._mpi.ERR_REVOKED)
        if not self.fault_tolerant or exc.Get_error_class() not in classes:
            raise exc
        self._check_failures(force=True)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (polling, not spinning) until every sent message was delivered, or the timeout."""
        deadline = time.monotonic() + timeout
        backoff = Backoff(maximum=0.01)
        while self._pending and time.monotonic() < deadline:
            self._complete_sent()
            if self._pending:
                backoff.wait()
                if self.fault_tolerant:
                    self._check_failures()
        return not self._pending

    def leave(self, status: int) -> int:
        """Return ``status`` for a normal exit (mpi4py then calls MPI_Finalize), or, under a fault-tolerant
        launch, flush Python's output and leave at once with it: MPI_Finalize synchronises with every
        rank and hangs for ever on one that died, which may happen at any moment up to the last."""
        if not self.fault_tolerant:
            return status
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)

    def abort(self, code: int) -> None:
        self.comm.Abort(code)

    @staticmethod
    def library_version() -> str:
        from mpi4py import MPI

        return str(MPI.Get_library_version())


def fault_tolerant_launch(environ: Mapping[str, str]) -> bool:
    """True under ``mpirun --with-ft ulfm`` (Open MPI 5 with ULFM), which sets this MCA parameter in every rank."""
    return environ.get("OMPI_MCA_mpi_ft_enable", "").lower() in ("1", "true", "yes", "enabled")


def under_mpi_launcher(environ: dict[str, str] | os._Environ[str]) -> bool:
    """True when a launcher started this process as one rank of several (or under srun)."""
    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALRANKID", "SLURM_STEP_ID",
            "HYDI_CONTROL_FD", "PMI_FD")
    return any(key in environ for key in keys)
