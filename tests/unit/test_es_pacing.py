"""How many ranges to lease ahead and how many a rank may get (``pacing``): pure, checked with numbers."""

from __future__ import annotations

from hpcpilot.config import EventServiceConfig
from hpcpilot.eventservice.messages import MAX_RANGES_PER_FETCH
from hpcpilot.eventservice.pacing import allowance, consumption_rate, lease_size, ranges_that_fit

CONFIG = EventServiceConfig(ranges_per_request=2, prefetch_seconds=30.0)


def _lease(**kw: object) -> int:
    args: dict = dict(members=4, queued=0, wanted=0, rate=0.0, guard_at=None, now=100.0)
    args.update(kw)
    return lease_size(CONFIG, **args)


def test_without_a_rate_two_requests_per_member_are_leased_and_a_half_full_queue_leases_none() -> None:
    assert _lease() == 16
    assert _lease(queued=8) == 0 and _lease(queued=7) == 9
    assert _lease(wanted=6) == 22  # parked requests come on top
    assert _lease(queued=17, wanted=6) == 0 and _lease(queued=16, wanted=6) == 6
    assert _lease(members=0) == 4 and _lease(queued=16) == 0


def test_with_a_rate_the_prefetch_window_is_leased_but_not_beyond_the_guard() -> None:
    assert _lease(rate=2.0) == 60  # 30 s of 2 ranges per second
    assert _lease(rate=2.0, guard_at=110.0) == 20  # 10 s left
    assert _lease(rate=2.0, guard_at=100.5) == 2  # at least one request
    assert _lease(rate=100.0) == MAX_RANGES_PER_FETCH


def test_ranges_that_fit_before_the_guard_and_what_a_rank_may_get() -> None:
    assert ranges_that_fit(None, 0.0, 10.0) is None and ranges_that_fit(100.0, 0.0, None) is None
    assert ranges_that_fit(100.0, 0.0, 0.0) is None
    assert ranges_that_fit(100.0, 0.0, 10.0) == 10 and ranges_that_fit(100.0, 5.0, 10.0) == 9
    assert ranges_that_fit(100.0, 150.0, 10.0) == 0
    assert allowance(3, None, 50) == 3
    assert allowance(3, 10, 8) == 2 and allowance(3, 10, 2) == 3 and allowance(3, 10, 12) == 0


def test_the_consumption_rate_waits_a_second_after_the_job_opened() -> None:
    assert consumption_rate(10, None, 5.0) == 0.0
    assert consumption_rate(10, 4.5, 5.0) == 0.0 and consumption_rate(0, 0.0, 5.0) == 0.0
    assert consumption_rate(10, 0.0, 5.0) == 2.0
