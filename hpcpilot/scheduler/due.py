"""``DueQueue``: the times at which running jobs need rank 0 (heartbeats, maxWalltime ends).

A pass of rank 0's loop looks only at what is due, never at every running job: entries sit in a heap
ordered by time.  An entry is never removed when it stops mattering (a job closed, a heartbeat
superseded by a new interval); it is skipped when popped, and the queue drops such dead entries in one
sweep once they outnumber the live ones, so it stays O(jobs) in size and O(1) amortized per push.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from heapq import heappop, heappush
from typing import NamedTuple

BEAT, WALLTIME = 0, 1
"""Kinds of entries: a job's next heartbeat, and the end of its maxWalltime."""


class DueEntry(NamedTuple):
    when: float
    seq: int
    """Unique over the run: orders entries due at the same time, and names a heartbeat entry (its token)."""
    kind: int
    panda_id: int


class DueQueue:
    """A heap of ``DueEntry``; ``is_live`` says whether an entry still matters (used to compact)."""

    def __init__(self, is_live: Callable[[DueEntry], bool]) -> None:
        self.heap: list[DueEntry] = []
        self.seq = 0
        self.is_live = is_live

    def __len__(self) -> int:
        return len(self.heap)

    @property
    def upcoming(self) -> int:
        """The sequence number the next push gets (a heartbeat's token is set before its entry is pushed,
        so that a compaction during that push already counts the superseded entry dead)."""
        return self.seq + 1

    def push(self, when: float, kind: int, panda_id: int, live_jobs: int) -> int:
        """Queue a due time and return its sequence number; compact first when dead entries outnumber
        the ``live_jobs`` running jobs' (each has at most a heartbeat and a walltime entry alive)."""
        if len(self.heap) > 4 * live_jobs + 64:
            self.heap = [entry for entry in self.heap if self.is_live(entry)]
            self.heap.sort()  # a sorted list is a heap
        self.seq += 1
        heappush(self.heap, DueEntry(when, self.seq, kind, panda_id))
        return self.seq

    def has_due(self, now: float) -> bool:
        heap = self.heap
        return bool(heap) and heap[0].when <= now

    def pop_due(self, now: float) -> Iterator[DueEntry]:
        """Every entry due at ``now``, earliest first (the caller skips those no longer live)."""
        while self.heap and self.heap[0].when <= now:
            yield heappop(self.heap)
