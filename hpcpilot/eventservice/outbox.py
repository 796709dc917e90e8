"""Statuses on their way from rank 0 to the server: finished outputs waiting for a zip bundle, and
statuses waiting for the next report.

A status enters once, as its range leaves the queue or the rank it was dealt to, and is counted as it
enters (``Tally``, and settled in ``reported``); it leaves rank 0 when it is sent (``RangeRegister``).
A bundle is made when its outputs hold enough events or the oldest is old enough; a report goes out
every ``report_interval``; both at once when nothing more will be processed (``draining``).  The events
waiting for a bundle are a running total, so deciding costs O(1) however many wait.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import attrgetter

from hpcpilot.config import EventServiceConfig
from hpcpilot.eventservice.messages import failed
from hpcpilot.eventservice.register import RangeRegister
from hpcpilot.eventservice.tally import Tally
from hpcpilot.records import EventRange, EventRangeUpdate, RangeOutcomes
from hpcpilot.records.outcomes import OutcomeQueue
from hpcpilot.states import EventRangeStatus

_last_event, _start_event = attrgetter("last_event"), attrgetter("start_event")


class Outbox:
    """``to_bundle`` (finished ranges with an output; ``bundle_events`` of them, the first since
    ``bundle_opened_at``), ``bundling`` (a bundle is being made: one at a time), ``to_report``
    (statuses for the next report) and ``last_report`` (when the last one went out).

    ``tally`` and ``register`` are the book's own: the outbox counts into them, it does not keep them."""

    def __init__(self, tally: Tally, register: RangeRegister) -> None:
        self.tally = tally
        self.register = register
        self.to_bundle: list[EventRangeUpdate] = []
        self.bundle_events = 0
        self.bundle_opened_at: float | None = None
        self.bundling = False
        self.to_report = OutcomeQueue()
        self.last_report = 0.0

    def report(self, update: EventRangeUpdate) -> None:
        """A status for the next report, of a range just taken out of the queue, a rank or a fetch's new
        ranges (so none comes here twice): settled and counted now."""
        self.register.reported.settled()
        self._enqueue(update)

    def record(self, now: float, taken: Iterable[tuple[EventRangeUpdate, EventRange]]) -> None:
        """A report's outcomes, each with the range it is for, taken back from the rank that sent it: in
        one pass (the hot path of a busy job).  A finished range with an output waits for a bundle (it
        settles when the bundle is made); any other status waits for the next report."""
        tally, to_report, to_bundle, n_events = self.tally, self.to_report, self.to_bundle, self.register.n_events
        finished = EventRangeStatus.FINISHED
        settled = counted = finished_ranges = finished_events = processed = 0
        walls: list[float] = []
        for outcome, item in taken:
            counted += 1
            if outcome.wall_time > 0:
                walls.append(outcome.wall_time)
            if outcome.status != finished:
                settled += 1
                to_report.append(outcome)
                tally.failure(outcome)
                continue
            events = item.last_event - item.start_event + 1
            processed += events
            if outcome.output:  # (the bundle's running total and age, without a call per range)
                if not to_bundle:
                    self.bundle_opened_at = now
                to_bundle.append(outcome)
                self.bundle_events += events
            else:
                settled, finished_ranges = settled + 1, finished_ranges + 1
                finished_events += n_events.get(outcome.event_range_id, 1)
                to_report.append(outcome)
        tally.add(consumed=counted, processed_events=processed, finished_ranges=finished_ranges,
                  finished_events=finished_events, walls=walls)
        self.register.reported.settled(settled)

    def record_batch(self, now: float, outcomes: RangeOutcomes, ranges: Sequence[EventRange]) -> None:
        """``record`` for a whole report whose every outcome was taken back (``ranges``: the range of each, in
        order).  Every outcome FINISHED without an output (a null payload, a job without bundles): counted
        and queued in C-level passes over the columns; any other report goes through ``record``."""
        if not outcomes.all_plain_finished():
            self.record(now, zip(outcomes, ranges, strict=True))
            return
        n = len(outcomes)
        walls = [seconds for seconds in outcomes.wall_times if seconds > 0]
        processed = sum(map(_last_event, ranges)) - sum(map(_start_event, ranges)) + n
        finished_events = sum(map(self.register.n_events.get, outcomes.ids, repeat(1)))
        self.to_report.add_batch(outcomes)  # (as columns: no object per outcome)
        self.tally.add(consumed=n, processed_events=processed, finished_ranges=n, finished_events=finished_events,
                       walls=walls)
        self.register.reported.settled(n)

    def take_bundle(self, now: float, config: EventServiceConfig,
                    draining: Callable[[], bool]) -> tuple[tuple[EventRangeUpdate, ...], int] | None:
        """The outputs for a bundle and their events, if one is due (``bundling`` until it is back), settled
        now; ``draining`` is asked only when the outputs are neither enough events nor old enough."""
        if self.bundling or not self.to_bundle:
            return None
        events = self.bundle_events
        age = now - (self.bundle_opened_at or now)
        if events < config.bundle_events and age < config.bundle_seconds and not draining():
            return None
        updates, self.to_bundle, self.bundle_events = tuple(self.to_bundle), [], 0
        self.bundling = True
        self.register.reported.settled(len(updates))
        return updates, events

    def bundle_back(self, updates: Iterable[EventRangeUpdate], error: tuple[int, str] | None) -> bool:
        """The bundle is back.  Staged out (True): its statuses are counted and go out now.  Not (False):
        its ranges are failed, for the next report (they were settled when the bundle was made)."""
        self.bundling = False
        if error is not None:
            code, diag = error
            for update in updates:
                self._enqueue(failed(update.event_range_id, code, f"output not staged out: {diag}"))
            return False
        for update in updates:
            self.tally.count(update, self.register.events_of(update.event_range_id))
        self.register.sent(updates)
        return True

    def take_report(self, now: float, interval: float,
                    draining: Callable[[], bool]) -> RangeOutcomes | None:
        """The statuses for a report, if one is due (``interval`` after the last, or at once when
        draining): they go out now, as one batch of columns."""
        if not self.to_report:
            return None
        if now - self.last_report < interval and not draining():
            return None
        self.last_report = now
        updates = self.to_report.take()
        self.register.sent(updates)
        return updates

    def is_empty(self) -> bool:
        """No status waits and no bundle is being made."""
        return not self.to_bundle and not self.bundling and not self.to_report

    def _enqueue(self, update: EventRangeUpdate) -> None:
        self.to_report.append(update)
        self.tally.count(update, self.register.events_of(update.event_range_id))
