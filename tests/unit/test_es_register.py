"""The ranges rank 0 has taken in (``RangeRegister``) and settled (``ReportedRanges``): what they refuse
is what a full history would refuse within the window, and what they keep is bounded."""

from __future__ import annotations

from hpcpilot.eventservice.register import RangeRegister
from hpcpilot.eventservice.reported import REPORTED_WINDOW, ReportedRanges
from hpcpilot.records import EventRange, EventRangeUpdate
from hpcpilot.states import EventRangeStatus


def _range(i: int, events: int = 1) -> EventRange:
    return EventRange(f"r{i}", 10 * i, 10 * i + events - 1, "E", "G", "s")


def _sent(register: RangeRegister, *ids: str) -> None:
    register.sent([EventRangeUpdate(rid, EventRangeStatus.FINISHED) for rid in ids])


def test_the_count_is_every_range_settled_and_the_ids_are_the_last_window_sent() -> None:
    reported = ReportedRanges(window=5)
    history: list[str] = []
    for first in range(0, 40, 4):
        ids = [f"r{i}" for i in range(first, first + 4)]
        reported.settled(len(ids))
        reported.sent_all(ids + ids[:1])  # a repeated id in one report is remembered once
        history += ids
        assert len(reported) == len(history)
        assert reported.remembered() == min(5, len(history))
        assert {rid for rid in history if rid in reported} == set(history[-5:])  # the newest, as a scan says


def test_the_window_is_ten_full_leases() -> None:
    assert ReportedRanges().window == REPORTED_WINDOW == 10 * 1000


def test_a_range_is_refused_while_held_and_after_its_status_was_sent_within_the_window() -> None:
    register = RangeRegister()
    new, refused = register.take_in_all([_range(0, 3), _range(1), _range(0), _range(2)])
    assert [r.event_range_id for r in new] == ["r0", "r1", "r2"] and refused == ["r0"]  # lease order kept
    assert register.n_events == {"r0": 3, "r1": 1, "r2": 1} and register.events_of("r0") == 3
    assert not register.take_in("r1", 1) and register.take_in("b9", 1)
    _sent(register, "r0", "b9")
    assert "r0" not in register.n_events and register.events_of("r0") == 1  # it left rank 0
    assert not register.take_in("r0", 3)  # but is still refused: sent lately
    assert register.take_in_all([_range(0), _range(1), _range(3)])[1] == ["r0", "r1"]


def test_take_in_all_answers_what_take_in_one_by_one_answers() -> None:
    ranges = [_range(i % 7, 1 + i % 3) for i in range(20)]
    one, batch = RangeRegister(), RangeRegister()
    _sent(one, "r6")
    _sent(batch, "r6")
    accepted = [r for r in ranges if one.take_in(r.event_range_id, r.last_event - r.start_event + 1)]
    new, refused = batch.take_in_all(ranges)
    assert new == accepted and one.n_events == batch.n_events
    assert refused == [r.event_range_id for r in ranges if all(r is not a for a in accepted)]
