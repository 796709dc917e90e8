"""Rank 0's ledger takes a range report's outcomes in one pass (``EsBook._record_outcomes``): the rules of
one outcome at a time still hold inside one report, mixed as a busy rank sends them."""

from __future__ import annotations

from hpcpilot.config import EventServiceConfig
from hpcpilot.eventservice.book import EsBook, RangesFetched, RangesReported
from hpcpilot.monitor.metrics import Limits
from hpcpilot.records import EventRange, EventRangeUpdate, JobSpec
from hpcpilot.states import EventRangeStatus
from tests.pilotrun import make_job

PANDA_ID = 61


def _book() -> EsBook:
    spec = JobSpec.from_wire(make_job(PANDA_ID, "x", eventService="True"))
    config = EventServiceConfig(ranges_per_request=3, bundle_events=100, report_interval=5.0)
    book = EsBook(spec, config, leader=1, limits=Limits(0, 0, 0, 0, 0, 0))
    book.open(0.0)
    book.join(1)
    book.join(2)
    ranges = tuple(EventRange.from_wire({"eventRangeID": f"r{i}", "startEvent": 10 * i, "lastEvent": 10 * i + i,
                                         "LFN": "E", "GUID": "G", "scope": "s"}) for i in range(6))
    book.on_fetched(0.0, RangesFetched(PANDA_ID, ranges), retry=1.0)
    book.on_report(0.0, RangesReported(1, PANDA_ID, (), 3), None)  # r0 r1 r2 to rank 1
    book.on_report(0.0, RangesReported(2, PANDA_ID, (), 3), None)  # r3 r4 r5 to rank 2
    assert sorted(book.by_rank[1]) == ["r0", "r1", "r2"]
    return book


def _finished(range_id: str, output: str = "", wall: float = 0.0) -> EventRangeUpdate:
    return EventRangeUpdate(range_id, EventRangeStatus.FINISHED, output=output, wall_time=wall)


def test_one_report_counts_each_held_range_once_and_nothing_else() -> None:
    book = _book()
    failed = EventRangeUpdate("r1", EventRangeStatus.FAILED, 1220, "payload died", wall_time=3.0)
    outcomes = (_finished("r0", wall=1.0), failed, _finished("r0"),  # r0 twice in one report
                _finished("r3"),  # dealt to rank 2: ignored
                _finished("r2", output="/o/r2", wall=2.0), _finished("nowhere"))
    book.on_report(5.0, RangesReported(1, PANDA_ID, outcomes, 0), None)

    assert [u.event_range_id for u in book.to_report] == ["r0", "r1"]
    assert [u.event_range_id for u in book.to_bundle] == ["r2"] and book.bundle_opened_at == 5.0
    assert book.bundle_events == 3  # r2: events 20..22
    assert book.consumed == 3 and len(book.reported) == 2  # the bundled one settles when its bundle is made
    assert (book.finished_ranges, book.finished_events, book.processed_events) == (1, 1, 1 + 3)
    assert book.first_failure == (1220, "payload died")
    assert (book.wall_sum, book.wall_count) == (6.0, 3)
    assert 1 not in book.by_rank and book.held_by(1) == 0  # the rank emptied: it leaves the index
    assert book.dealt["r3"][0] == 2 and book.held_by(2) == 3


def test_a_report_that_leaves_ranges_held_keeps_the_index_and_the_parked_request_right() -> None:
    book = _book()
    book.on_report(1.0, RangesReported(1, PANDA_ID, (_finished("r0"),), 2), None)  # nothing queued: parked
    assert 1 in book.waiting and book.waiting.holding_at_least(2) == [1]
    book.on_report(2.0, RangesReported(1, PANDA_ID, (_finished("r1"),), 2), None)
    assert book.held_by(1) == 1 and book.waiting.holding_at_least(2) == [] and book.waiting.holding_at_least(1) == [1]
    assert book.due_report(10.0) is not None and len(book.reported) == 2 and "r0" in book.reported
    assert "r0" not in book.n_events  # sent: it left rank 0
