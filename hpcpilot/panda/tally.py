"""What the PanDA server acknowledged this run, counted as acknowledgements come in, for ``delivery()``.

The senders count (their threads); rank 0 reads (summary.json, the closing line, the exit status).  What is
still owed is the journal's in-memory outbox tally, so a report costs no journal read: the same at 10,000
jobs as at 100.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hpcpilot.journal import JOB, OutboxEntry, Owed
from hpcpilot.sources import Delivery

REJECTED = "rejected"
ACKNOWLEDGED = "acknowledged"


class DeliveryTally:
    """Ranges acknowledged (by status) or rejected per job, and the fate of each job's final update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # senders write, rank 0's thread reads
        self._ranges: dict[int, Counter[str]] = {}
        self._final: dict[int, str] = {}

    def count(self, entry: OutboxEntry, range_ids: Sequence[str], status: str | None) -> None:
        """Count acknowledged (or rejected) outcomes; ``status`` None = the status each range was sent with."""
        if entry.kind == JOB:
            if entry.final and status == REJECTED:
                self.final(entry.panda_id, REJECTED)
            return
        if not range_ids:
            return
        sent = _statuses(entry.body["payload"]) if status is None else {}
        with self._lock:
            counter = self._ranges.setdefault(entry.panda_id, Counter())
            for range_id in range_ids:
                counter[status or sent.get(range_id, "finished")] += 1

    def final(self, panda_id: int, state: str) -> None:
        """The fate of a job's final update ('acknowledged' or 'rejected')."""
        with self._lock:
            self._final[panda_id] = state

    def report(self, owed: Owed, journal: str) -> Delivery:
        """What was acknowledged, with what the outbox still owes."""
        with self._lock:
            ranges = {pid: dict(counts) for pid, counts in self._ranges.items()}
            jobs = dict(self._final)
        for pid, n in owed.ranges.items():
            ranges.setdefault(pid, {})["owed"] = n
        jobs.update(dict.fromkeys(owed.final_jobs, "owed"))
        return Delivery(ranges, jobs, owed.entries, journal)


def _statuses(payload: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """eventRangeID -> the status it was sent with."""
    out: dict[str, str] = {}
    for item in payload:
        for event in item.get("eventRanges", [item]):
            out[str(event.get("eventRangeID"))] = str(event.get("eventStatus"))
    return out
