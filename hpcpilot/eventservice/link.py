"""The worker's mailbox for one event-service job, between its message loop and the job thread.

The job thread takes ranges and hands in outcomes; the message loop (the only thread that
touches the transport) delivers the ranges rank 0 dealt and, on every pass, ``pump`` turns
what accumulated into one ``RangeReport``: the outcomes since the last one, plus a request for
more ranges when the local buffer runs low.  The buffer is refilled before it is empty
(double buffering), so a rank does not wait for rank 0 between ranges.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hpcpilot.protocol import RangeReport
from hpcpilot.records import EventRange, EventRangeUpdate

OUTCOME_BATCH = 64
"""Outcomes sent at once when ranges finish faster than the loop passes."""
OUTCOME_DELAY = 0.2
"""Seconds an outcome may wait for company before it is sent alone."""


class NoMoreRanges(Exception):
    """Rank 0 said no more ranges for this job on this rank, and the buffer is empty."""


class RangeLink:
    """Thread-safe: ``take``/``done``/``give_back`` from the job thread, ``deliver``/``pump`` from the loop."""

    def __init__(self, rank: int, panda_id: int, per_request: int) -> None:
        self.rank, self.panda_id = rank, panda_id
        self.per_request = max(1, per_request)
        self._cond = threading.Condition()
        self._buffer: deque[EventRange] = deque()
        self._outcomes: list[EventRangeUpdate] = []
        self._oldest: float | None = None
        self._no_more = False
        self._outstanding = False
        self._active = False
        self._refuse: Callable[[str], EventRangeUpdate] | None = None

    # ---- job thread -----------------------------------------------------------------------

    def start(self) -> None:
        """The job is set up: from now on ranges are requested."""
        with self._cond:
            self._active = True

    def take(self, timeout: float) -> EventRange | None:
        """The next range; None if none arrived within ``timeout``; NoMoreRanges when the supply ended."""
        with self._cond:
            if not self._buffer and not self._no_more:
                self._cond.wait(timeout)
            if self._buffer:
                return self._buffer.popleft()
            if self._no_more:
                raise NoMoreRanges
            return None

    def take_all(self, timeout: float) -> list[EventRange]:
        """Every buffered range at once (waiting up to ``timeout`` for one); NoMoreRanges when the supply
        ended.  For an executor that needs no time per range: one lock per batch, not per range."""
        with self._cond:
            if not self._buffer and not self._no_more:
                self._cond.wait(timeout)
            if not self._buffer and self._no_more:
                raise NoMoreRanges
            taken = list(self._buffer)
            self._buffer.clear()
            return taken

    def done(self, outcome: EventRangeUpdate) -> None:
        self.done_all((outcome,))

    def done_all(self, outcomes: Iterable[EventRangeUpdate]) -> None:
        with self._cond:
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._outcomes.extend(outcomes)

    def give_back(self, failure: Callable[[str], EventRangeUpdate]) -> int:
        """Fail every range dealt here and not started (``failure(range_id)`` builds the outcome);
        no more are requested.  Returns how many."""
        with self._cond:
            self._active = False
            self._no_more = True
            self._refuse = failure
            left = list(self._buffer)
            self._buffer.clear()
        for item in left:
            self.done(failure(item.event_range_id))
        return len(left)

    # ---- message loop ---------------------------------------------------------------------

    def deliver(self, ranges: Iterable[EventRange | Mapping[str, Any]], no_more: bool) -> None:
        """Ranges rank 0 dealt.  EventRanges carries them parsed (rank 0 checked each when it leased it:
        checking again cost a worker rank about 8 us per range); a getEventRanges dict is parsed here."""
        parsed = [r if isinstance(r, EventRange) else EventRange.from_wire(r) for r in ranges]
        with self._cond:
            self._outstanding = False
            refuse = self._refuse
            if refuse is None:
                self._buffer.extend(parsed)
            self._no_more = self._no_more or no_more
            self._cond.notify_all()
        if refuse is not None:  # arrived after the job stopped here: fail them, never drop them
            for item in parsed:
                self.done(refuse(item.event_range_id))

    def pump(self, final: bool = False) -> RangeReport | None:
        """The report to send now, if any: due outcomes and, when the buffer runs low, a request."""
        with self._cond:
            want = 0
            if (self._active and not final and not self._no_more and not self._outstanding
                    and len(self._buffer) <= self.per_request // 2):
                want = self.per_request
                self._outstanding = True
            due = bool(self._outcomes) and (
                final or want > 0 or len(self._outcomes) >= OUTCOME_BATCH
                or time.monotonic() - (self._oldest or 0.0) >= OUTCOME_DELAY)
            if not want and not due:
                return None
            outcomes = tuple(self._outcomes) if due else ()
            if due:
                self._outcomes, self._oldest = [], None
        return RangeReport(self.rank, self.panda_id, outcomes, want)
