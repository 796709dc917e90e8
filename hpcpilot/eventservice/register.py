"""The ranges of one event-service job that rank 0 has taken in: held (with their events) or settled.

A range is in ``n_events`` from the lease that brought it until its status is sent (queued, dealt,
waiting for its bundle or its report: the ranges in flight), and then among the ranges ``reported``.
A range the source hands out again while it is in either is refused, so no range is dealt or
reported twice; both lookups are O(1) and the memory is O(ranges in flight).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import repeat
from operator import attrgetter, sub

from hpcpilot.eventservice.reported import ReportedRanges
from hpcpilot.records import EventRange, EventRangeUpdate, RangeOutcomes

_range_id = attrgetter("event_range_id")  # (of an EventRange or an EventRangeUpdate)
_last_event, _start_event = attrgetter("last_event"), attrgetter("start_event")


class RangeRegister:
    """``n_events``: range id -> events, for every range rank 0 holds; ``reported``: those it settled."""

    def __init__(self) -> None:
        self.n_events: dict[str, int] = {}
        self.reported = ReportedRanges()

    def take_in(self, range_id: str, n_events: int) -> bool:
        """A range from the source is new unless rank 0 holds it (``n_events``) or sent it lately
        (``reported``); a new one is held from now on."""
        if range_id in self.n_events or range_id in self.reported:
            return False
        self.n_events[range_id] = n_events
        return True

    def take_in_all(self, ranges: Iterable[EventRange]) -> tuple[list[EventRange], list[str]]:
        """``take_in`` for a whole lease: the new ranges in lease order, and the ids refused (one pass
        with no call per range: a lease is a thousand ranges)."""
        held, reported = self.n_events, self.reported
        ranges = list(ranges)
        ids = list(map(_range_id, ranges))
        if len(set(ids)) == len(ids) and held.keys().isdisjoint(ids) and reported.none_of(ids):
            # every range new (a lease's usual case): taken in by C-level passes over the lease
            spans = map(sub, map(_last_event, ranges), map(_start_event, ranges))
            held.update(zip(ids, map((1).__add__, spans), strict=True))  # EventRange.n_events, in C
            return ranges, []
        new: list[EventRange] = []
        refused: list[str] = []
        for item in ranges:
            range_id = item.event_range_id
            if range_id in held or range_id in reported:
                refused.append(range_id)
                continue
            held[range_id] = item.last_event - item.start_event + 1  # EventRange.n_events, without the call
            new.append(item)
        return new, refused

    def events_of(self, range_id: str) -> int:
        """The events of a range rank 0 holds (1 for one it does not: a range it never had counts once)."""
        return self.n_events.get(range_id, 1)

    def sent(self, updates: Iterable[EventRangeUpdate]) -> None:
        """These statuses go out now: the ranges leave rank 0 (their ids stay in ``reported`` a while)."""
        ids = list(updates.ids if isinstance(updates, RangeOutcomes) else map(_range_id, updates))
        deque(map(self.n_events.pop, ids, repeat(None)), maxlen=0)  # (popped in C, nothing kept)
        self.reported.sent_all(ids)
