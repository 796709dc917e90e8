"""Statuses on their way to the server (``Outbox``) and the job's running totals (``Tally``): the O(1)
totals are what a scan of the statuses gives, and bundles and reports are due when their rules say."""

from __future__ import annotations

from hpcpilot.config import EventServiceConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice.outbox import Outbox
from hpcpilot.eventservice.register import RangeRegister
from hpcpilot.eventservice.tally import Tally
from hpcpilot.records import EventRange, EventRangeUpdate
from hpcpilot.states import EventRangeStatus

CONFIG = EventServiceConfig(bundle_events=10, bundle_seconds=60.0, report_interval=5.0)


def _outbox() -> Outbox:
    register = RangeRegister()
    register.take_in_all([EventRange(f"r{i}", 0, i, "E", "G", "s") for i in range(12)])  # r{i}: i + 1 events
    return Outbox(Tally(), register)


def _out(i: int, wall: float = 0.0) -> tuple[EventRangeUpdate, EventRange]:
    return (EventRangeUpdate(f"r{i}", EventRangeStatus.FINISHED, output=f"/o/{i}", wall_time=wall),
            EventRange(f"r{i}", 0, i, "E", "G", "s"))


def _never() -> bool:
    raise AssertionError("draining asked although the bundle was due anyway")


def test_the_running_totals_are_what_a_scan_of_the_statuses_gives() -> None:
    outbox = _outbox()
    failed = EventRangeUpdate("r9", EventRangeStatus.FAILED, 1220, "died", wall_time=0.1)
    plain = EventRangeUpdate("r8", EventRangeStatus.FINISHED, wall_time=0.2)
    taken = [_out(1, 0.3), (failed, EventRange("r9", 0, 9, "E", "G", "s")), _out(2), (plain, _out(8)[1]), _out(5, 0.4)]
    outbox.record(1.0, taken)
    tally = outbox.tally
    assert outbox.bundle_events == sum(int(u.event_range_id[1:]) + 1 for u in outbox.to_bundle) == 2 + 3 + 6
    assert outbox.to_report == [failed, plain] and outbox.bundle_opened_at == 1.0
    assert (tally.consumed, tally.processed_events) == (5, 2 + 3 + 9 + 6)
    assert (tally.finished_ranges, tally.finished_events, tally.first_failure) == (1, 9, (1220, "died"))
    assert (tally.wall_sum, tally.wall_count) == (((0.3 + 0.1) + 0.2) + 0.4, 4)  # in order, one by one
    assert len(outbox.register.reported) == 2  # the bundled ones settle when their bundle is made


def test_a_bundle_is_due_by_events_by_age_or_when_draining_and_one_at_a_time() -> None:
    outbox = _outbox()
    outbox.record(1.0, [_out(2), _out(3)])  # 7 events
    assert outbox.take_bundle(60.0, CONFIG, lambda: False) is None
    assert outbox.take_bundle(61.0, CONFIG, _never) is not None  # old enough
    outbox.record(62.0, [_out(4), _out(5)])  # 11 events
    assert outbox.take_bundle(62.0, CONFIG, _never) is None  # the first is still being made
    assert outbox.bundle_back([], None) and outbox.take_bundle(62.0, CONFIG, _never) == (
        tuple(u for u, _ in [_out(4), _out(5)]), 11)
    assert outbox.bundle_events == 0 and not outbox.to_bundle and len(outbox.register.reported) == 4
    outbox.bundle_back([], None)
    outbox.record(63.0, [_out(0)])
    assert outbox.take_bundle(63.0, CONFIG, lambda: True) is not None  # draining: at once


def test_a_bundle_staged_out_counts_its_ranges_and_one_that_failed_reports_them_failed() -> None:
    outbox = _outbox()
    outbox.record(0.0, [_out(4), _out(5)])
    updates, events = outbox.take_bundle(0.0, CONFIG, lambda: False) or ((), 0)
    assert events == 11 and outbox.bundling
    assert outbox.bundle_back(updates, None) and not outbox.bundling
    assert (outbox.tally.finished_ranges, outbox.tally.finished_events) == (2, 11)
    assert "r4" not in outbox.register.n_events and "r4" in outbox.register.reported  # sent
    outbox.record(1.0, [_out(6)])
    updates, _ = outbox.take_bundle(1.0, CONFIG, lambda: True) or ((), 0)
    assert not outbox.bundle_back(updates, (1144, "copy failed"))
    assert [(u.event_range_id, u.status, u.error_code) for u in outbox.to_report] == [
        ("r6", EventRangeStatus.FAILED, 1144)]
    assert len(outbox.register.reported) == 3  # settled once, when the bundle was made


def test_a_report_is_due_every_interval_or_at_once_when_draining() -> None:
    outbox = _outbox()
    assert outbox.take_report(100.0, 5.0, lambda: True) is None  # nothing to report
    outbox.report(EventRangeUpdate("r1", EventRangeStatus.FAILED, 1201, "lost"))
    assert len(outbox.register.reported) == 1 and outbox.tally.first_failure == (1201, "lost")
    assert outbox.take_report(4.0, 5.0, lambda: False) is None
    assert outbox.take_report(4.0, 5.0, lambda: True) is not None and outbox.last_report == 4.0
    outbox.report(EventRangeUpdate("r2", EventRangeStatus.FINISHED))
    assert outbox.take_report(8.9, 5.0, lambda: False) is None
    report = outbox.take_report(9.0, 5.0, lambda: False)
    assert report is not None and [u.event_range_id for u in report] == ["r2"] and outbox.is_empty()
    assert (outbox.tally.finished_ranges, outbox.tally.finished_events) == (1, 3)


def test_the_first_failure_is_kept_and_a_failure_without_code_is_an_unknown_payload_failure() -> None:
    tally = Tally()
    tally.count(EventRangeUpdate("a", EventRangeStatus.FAILED, 0, "no code"), 1)
    tally.count(EventRangeUpdate("b", EventRangeStatus.FAILED, 1220, "later"), 1)
    assert tally.first_failure == (int(ErrorCode.UNKNOWNPAYLOADFAILURE), "no code")
    assert tally.mean_wall() is None
    tally.add(consumed=2, processed_events=0, finished_ranges=0, finished_events=0, walls=[3.0, 5.0])
    assert tally.mean_wall() == 4.0
