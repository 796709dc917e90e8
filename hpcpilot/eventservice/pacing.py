"""How many ranges to lease ahead and how many a rank may get: pure arithmetic on counts and time.

Kept apart from the ledger's state so the rules read in one place and are tested with numbers
alone.  Both are bounded by the walltime guard: a range leased or dealt that cannot finish before
it would only be failed at the end.
"""

from __future__ import annotations

import math

from hpcpilot.config import EventServiceConfig
from hpcpilot.eventservice.messages import MAX_RANGES_PER_FETCH


def consumption_rate(consumed: int, opened_at: float | None, now: float) -> float:
    """Ranges the job's ranks took back per second since it opened (0 until a second has passed)."""
    if opened_at is None or now - opened_at < 1.0 or not consumed:
        return 0.0
    return consumed / (now - opened_at)


def lease_size(config: EventServiceConfig, *, members: int, queued: int, wanted: int, rate: float,
               guard_at: float | None, now: float) -> int:
    """Ranges to lease now (0: none) so that ``prefetch_seconds`` of consumption stays queued.

    At least two requests' worth per member rank; with a measured ``rate``, the prefetch window's
    worth, but no more than can still be consumed before the guard.  What parked requests want
    (``wanted``) comes on top; a queue still half full leases nothing."""
    per_request = max(1, config.ranges_per_request)
    target = 2 * per_request * max(1, members)
    if rate:
        target = max(target, math.ceil(rate * config.prefetch_seconds))
        if guard_at is not None:
            target = min(target, max(per_request, math.ceil(rate * max(0.0, guard_at - now))))
    target += wanted
    if queued >= target / 2 + wanted and queued:
        return 0
    return min(MAX_RANGES_PER_FETCH, max(per_request, target - queued))


def ranges_that_fit(guard_at: float | None, now: float, mean_wall: float | None) -> int | None:
    """Ranges one rank can still finish before the guard at the mean wall time (None: no limit)."""
    if guard_at is None or mean_wall is None or mean_wall <= 0:
        return None
    return math.floor(max(0.0, guard_at - now) / mean_wall)


def allowance(want: int, fits: int | None, held: int) -> int:
    """How many of ``want`` ranges a rank holding ``held`` may get so that all it holds fits."""
    return want if fits is None else max(0, min(want, fits - held))
