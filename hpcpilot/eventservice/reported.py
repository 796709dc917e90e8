"""Which ranges rank 0 has settled (a count), and which it sent lately (a bounded record of ids).

The count is the live view's and the final check's "reported"; the ids guard against a source
handing a range out again.  Both are O(1) per range and the memory is bounded by the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from hpcpilot.eventservice.messages import MAX_RANGES_PER_FETCH

REPORTED_WINDOW = 10 * MAX_RANGES_PER_FETCH
"""Ids of the most recently sent ranges remembered against a source handing one out again (see
ReportedRanges): ten full leases, about 1 MB at rank 0 whatever the job's size."""


class ReportedRanges:
    """Ranges whose status rank 0 has settled: how many (``len``), and which were sent lately (``in``).

    Exactly once needs no history of every range: an outcome counts only if it comes from the rank
    the range is dealt to, and the range leaves ``dealt`` as it counts, so a repeated or stray outcome
    is ignored however old the range.  Ids are only needed against the *source* handing a range out
    again; a range it holds is still in ``EsBook.n_events`` until its status is sent, so this record
    only has to cover ranges already sent.  A retry by the PanDA server is a new range id (the
    attempt number is part of it), and a restarted pilot reports the previous run's ranges failed
    instead of handing them out again; what remains is a source repeating a lease it already made
    (a Harvester feed written again before it read the pilot's statuses, a replayed server answer),
    which comes within the next few leases.  So the newest ``window`` sent ids are kept: memory is
    bounded, not proportional to every range the job ever leased."""

    def __init__(self, window: int = REPORTED_WINDOW) -> None:
        self.window = window
        self.count = 0
        self._ids: set[str] = set()
        self._order: deque[str] = deque()  # oldest first: the one to forget next

    def __len__(self) -> int:
        return self.count

    def __contains__(self, range_id: object) -> bool:
        return range_id in self._ids

    def none_of(self, range_ids: Iterable[str]) -> bool:
        """No id among these was sent lately (one C-level pass)."""
        return self._ids.isdisjoint(range_ids)

    def settled(self, n: int = 1) -> None:
        """``n`` more ranges have their status queued for the server (or are inside a bundle)."""
        self.count += n

    def sent_all(self, range_ids: Iterable[str]) -> None:
        """These statuses went out: remember their ids for a while (one set update and one trim per report)."""
        ids, unique = self._ids, dict.fromkeys(range_ids)
        new = list(unique) if ids.isdisjoint(unique) else [range_id for range_id in unique if range_id not in ids]
        ids.update(new)
        order = self._order
        order.extend(new)
        for _ in range(len(order) - self.window):
            ids.discard(order.popleft())

    def remembered(self) -> int:
        return len(self._order)
