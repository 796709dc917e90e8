"""The running totals of one event-service job at rank 0: what its ranks did, kept as they report it.

The live view, the prefetch's consumption rate, the walltime guard's mean wall time and the final
record read these at O(1): none of them walks the ranges (which rank 0 does not keep once reported).
"""

from __future__ import annotations

from hpcpilot.errors import ErrorCode
from hpcpilot.records import EventRangeUpdate
from hpcpilot.states import EventRangeStatus


class Tally:
    """Totals of one job's ranges.

    * ``consumed``: ranges a rank gave back with an outcome (the consumption rate);
    * ``processed_events``: events of ranges a rank finished, bundled yet or not (the live view's progress);
    * ``finished_ranges`` / ``finished_events``: ranges whose FINISHED status is queued or sent (nEvents);
    * ``first_failure``: (code, diag) of the first failed status (the job's error if none finished);
    * ``wall_sum`` / ``wall_count``: wall time of the outcomes that carried one (``mean_wall``)."""

    def __init__(self) -> None:
        self.consumed = 0
        self.processed_events = 0
        self.finished_ranges = 0
        self.finished_events = 0
        self.first_failure: tuple[int, str] | None = None
        self.wall_sum = 0.0
        self.wall_count = 0

    def mean_wall(self) -> float | None:
        return self.wall_sum / self.wall_count if self.wall_count else None

    def count(self, update: EventRangeUpdate, n_events: int) -> None:
        """A status of a range of ``n_events`` events is queued for the server."""
        if update.status == EventRangeStatus.FINISHED:
            self.finished_ranges += 1
            self.finished_events += n_events
        else:
            self.failure(update)

    def failure(self, update: EventRangeUpdate) -> None:
        """A range failed: the first failure is the job's error if no range finishes."""
        if self.first_failure is None:
            self.first_failure = (update.error_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE), update.error_diag)

    def add(self, *, consumed: int, processed_events: int, finished_ranges: int, finished_events: int,
            walls: list[float]) -> None:
        """One report's totals at once (the hot path adds them up in its own loop).  ``walls``: the wall
        times its outcomes carried, added one by one in order, so the sum is the one outcome by outcome gives."""
        self.consumed += consumed
        self.processed_events += processed_events
        self.finished_ranges += finished_ranges
        self.finished_events += finished_events
        for seconds in walls:
            self.wall_sum += seconds
        self.wall_count += len(walls)
