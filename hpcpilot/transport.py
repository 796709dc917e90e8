"""Message transport between ranks: MPI for real runs, in-process queues for one rank and tests.

This is the only module that imports mpi4py, and only inside ``MpiTransport``: a pilot that
runs single-rank, or a test, never loads MPI.  Waiting is never a blocking MPI receive: on
every MPI implementation here that spins a full core, which on a real node is stolen from the
payload.  Callers poll with ``receive()`` and sleep with ``Backoff``: fast while messages
flow, slow while idle.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
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


class Backoff:
    """Exponential sleep for polling loops: reset when work arrives, grow while idle.

    With the defaults an idle loop wakes 20 times a second (negligible CPU), and a loop that
    is handling messages re-polls within 50 microseconds.  The growth is gentle (x1.2): with x2
    a loop that waited T oversleeps by up to T again, on both ends of every request/reply, which
    cut the event-range round trip by 7-12x in bench/bench_es_throughput.py at no idle cost.
    """

    def __init__(self, minimum: float = 5e-5, maximum: float = 0.05, factor: float = 1.2) -> None:
        self.minimum, self.maximum, self.factor = minimum, maximum, factor
        self.delay = minimum

    def reset(self) -> None:
        self.delay = self.minimum

    def wait(self, event: threading.Event | None = None) -> None:
        """Sleep the current delay (or until ``event`` is set) and grow it."""
        if event is not None:
            event.wait(self.delay)
        else:
            time.sleep(self.delay)
        self.delay = min(self.delay * self.factor, self.maximum)


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


class MpiTransport:
    """MPI point-to-point over COMM_WORLD with pickled messages, tags from the protocol."""

    def __init__(self) -> None:
        from mpi4py import MPI  # the only mpi4py import in hpcpilot

        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._pending: deque[Any] = deque()

    def send(self, dest: int, message: Message) -> None:
        self._pending.append(self.comm.isend(message, dest=dest, tag=int(message.tag)))
        while self._pending and self._pending[0].Test():
            self._pending.popleft()

    def receive(self) -> tuple[int, Message] | None:
        status = self._mpi.Status()
        if not self.comm.Iprobe(source=self._mpi.ANY_SOURCE, tag=self._mpi.ANY_TAG, status=status):
            return None
        message = self.comm.recv(source=status.Get_source(), tag=status.Get_tag())
        return status.Get_source(), message

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (polling, not spinning) until every sent message was delivered, or the timeout."""
        deadline = time.monotonic() + timeout
        backoff = Backoff(maximum=0.01)
        while self._pending and time.monotonic() < deadline:
            if self._pending[0].Test():
                self._pending.popleft()
            else:
                backoff.wait()
        return not self._pending

    def abort(self, code: int) -> None:
        self.comm.Abort(code)

    @staticmethod
    def library_version() -> str:
        from mpi4py import MPI

        return str(MPI.Get_library_version())


def under_mpi_launcher(environ: dict[str, str] | os._Environ[str]) -> bool:
    """True when a launcher started this process as one rank of several (or under srun)."""
    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALRANKID", "SLURM_STEP_ID",
            "HYDI_CONTROL_FD", "PMI_FD")
    return any(key in environ for key in keys)
