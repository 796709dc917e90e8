"""The polling back-off learns how long a loop stays idle (issue 26): counted sleeps, no timing asserted."""

from __future__ import annotations

import threading

from hpcpilot.transport import Backoff


class _Counted(Backoff):
    """A Backoff whose sleeps are recorded, not slept (what is checked is the sequence it asks for)."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.slept: list[float] = []

    def _sleep(self, seconds: float, event: threading.Event | None) -> None:  # type: ignore[override]
        self.slept.append(seconds)


def _stretch(backoff: _Counted, until: float) -> int:
    """Wait until the recorded sleeps add up to ``until`` seconds (the answer's arrival); wake-ups taken."""
    backoff.slept.clear()
    while sum(backoff.slept) < until:
        backoff.wait()
    backoff.reset()
    return len(backoff.slept)


def test_without_history_a_stretch_climbs_from_the_minimum():
    backoff = _Counted()
    assert backoff.lead() == backoff.minimum
    _stretch(backoff, 0.007)
    assert backoff.slept[:3] == [2e-4, 2e-4 * 1.2, 2e-4 * 1.2 * 1.2]


def test_a_steady_round_trip_is_learned_and_waited_for_in_a_few_wake_ups():
    backoff = _Counted()
    backoff.stretches.extend([0.007] * 8)  # eight earlier answers, each after 7 ms
    assert abs(backoff.lead() - 0.0035) < 1e-12
    wakes = _stretch(backoff, 0.007)
    assert abs(backoff.slept[0] - 0.0035) < 1e-12
    assert wakes <= 6
    assert sum(backoff.slept) - 0.007 <= 0.2 * 0.007  # the oversleep stays about a fifth of the wait
    assert _stretch(_Counted(), 0.007) == 12  # from 2e-4 by x1.2, without the history


def test_one_short_stretch_brings_the_lead_down_at_once_and_the_maximum_caps_it():
    backoff = _Counted()
    backoff.stretches.extend([0.5] * 8)
    assert backoff.lead() == backoff.maximum
    backoff.stretches.append(0.001)
    assert abs(backoff.lead() - 0.0005) < 1e-12
