"""Rank 0's event-service ledger at scale, by counting, never by timing: what one request, outcome or
pass visits does not grow with the ranges dealt or the ranks waiting, and what the book keeps after
100,000 ranges were leased and reported is what is still in flight, not the job's history."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from hpcpilot.config import EventServiceConfig
from hpcpilot.eventservice.book import (
    REPORTED_WINDOW,
    BundleStaged,
    DealRanges,
    EsBook,
    MakeBundle,
    RangesFetched,
    RangesReported,
    ReportRanges,
)
from hpcpilot.monitor.metrics import Limits
from hpcpilot.records import EventRange, EventRangeUpdate, JobSpec
from hpcpilot.sources import OutputBundle
from hpcpilot.states import EventRangeStatus
from tests.pilotrun import make_job

PANDA_ID = 50
GUARD = 10_000.0
WALL = 10.0  # every outcome below takes 10 s: at t, a rank may hold floor((GUARD - t) / WALL) ranges


class CountingDict(dict):
    """A dict that counts the entries every iteration over it yields (keys, values or items)."""

    visited = 0

    def _count(self, it: Iterator[Any]) -> Iterator[Any]:
        for entry in it:
            self.visited += 1
            yield entry

    def __iter__(self) -> Iterator[Any]:
        return self._count(super().__iter__())

    def keys(self) -> Any:
        return list(self._count(iter(super().keys())))

    def values(self) -> Any:
        return list(self._count(iter(super().values())))

    def items(self) -> Any:
        return list(self._count(iter(super().items())))


class CountingOrderedDict(OrderedDict):
    """The same for the waiting ranks' line."""

    visited = 0

    def __iter__(self) -> Iterator[Any]:
        for entry in super().__iter__():
            self.visited += 1
            yield entry


def _book(per_request: int = 2) -> EsBook:
    spec = JobSpec.from_wire(make_job(PANDA_ID, "x", eventService="True"))
    config = EventServiceConfig(ranges_per_request=per_request, bundle_events=100, report_interval=5.0)
    book = EsBook(spec, config, leader=1, limits=Limits(0, 0, 0, 0, 0, 0))
    book.open(0.0)
    book.dealt = CountingDict()
    book.waiting._wants = CountingOrderedDict()
    return book


def _ranges(first: int, n: int) -> tuple[EventRange, ...]:
    return tuple(EventRange.from_wire({"eventRangeID": f"7-{PANDA_ID}-1-{i}-1", "startEvent": i, "lastEvent": i,
                                       "LFN": "E", "GUID": "G", "scope": "s"}) for i in range(first, first + n))


def _done(range_id: str, output: str = "") -> EventRangeUpdate:
    return EventRangeUpdate(range_id, EventRangeStatus.FINISHED, output=output, wall_time=WALL)


def _visited(book: EsBook) -> int:
    return book.dealt.visited + book.waiting._wants.visited  # type: ignore[attr-defined]


def _deal_to_every_rank(book: EsBook, ranks: int, now: float = 1.0) -> None:
    """``ranks`` members, each holding two ranges; one outcome recorded so the guard has a mean wall time."""
    for rank in range(1, ranks + 1):
        book.join(rank)
    book.on_fetched(now, RangesFetched(PANDA_ID, _ranges(0, 2 * ranks + 1)), retry=1.0)
    book.on_report(now, RangesReported(1, PANDA_ID, (), 1), GUARD)
    first = next(iter(book.by_rank[1]))
    book.on_report(now, RangesReported(1, PANDA_ID, (_done(first, "/o/x"),), 0), GUARD)
    for rank in range(1, ranks + 1):
        book.on_report(now, RangesReported(rank, PANDA_ID, (), 2), GUARD)
    assert len(book.dealt) == 2 * ranks and not book.queue


def _request_cost(ranks: int) -> tuple[int, list[DealRanges]]:
    """Entries visited by one outcome plus request for more, with ``ranks`` ranks holding ranges."""
    book = _book()
    _deal_to_every_rank(book, ranks)
    book.on_fetched(2.0, RangesFetched(PANDA_ID, _ranges(10 * ranks, 2)), retry=1.0)
    held = next(iter(book.by_rank[ranks]))
    before = _visited(book)
    deals = book.on_report(2.0, RangesReported(ranks, PANDA_ID, (_done(held, "/o/y"),), 2), GUARD)
    return _visited(book) - before, deals


def test_a_request_visits_the_same_entries_however_many_ranges_are_dealt() -> None:
    small, deals = _request_cost(10)
    large, _ = _request_cost(5_000)
    assert small == large <= 2  # the requesting rank at most, never the other ranks' dealt ranges
    assert [len(d.ranges) for d in deals] == [2]


def test_held_by_and_fail_held_look_only_at_the_rank_own_ranges() -> None:
    book = _book()
    _deal_to_every_rank(book, 2_000)
    before = book.dealt.visited  # type: ignore[attr-defined]
    assert book.held_by(7) == 2
    book.member_lost(7, 1201, "lost")
    assert book.dealt.visited == before  # type: ignore[attr-defined]
    assert book.held_by(7) == 0 and len(book.dealt) == 2 * 2_000 - 2
    assert [u.error_code for u in book.to_report] == [1201, 1201]


def test_a_dry_pass_visits_no_waiting_rank_until_the_guard_changes_the_answer() -> None:
    book = _book()
    _deal_to_every_rank(book, 3_000)
    for rank in range(1, 3_001):  # every rank asks again, the queue is dry: all wait
        book.on_report(2.0, RangesReported(rank, PANDA_ID, (), 2), GUARD)
    assert len(book.waiting) == 3_000
    before = _visited(book)
    for tick in range(1_000):  # the loop passes: nothing came, the time left still fits 2 ranges each
        assert book.serve_waiting(GUARD, 3.0 + tick * 0.001) == []
    assert _visited(book) == before
    assert book.fetch_wanted(4.0, GUARD) > 0 and _visited(book) == before  # the prefetch keeps a total
    rank = 3_000  # finishes what it holds and asks again: the queue is still dry, it waits
    book.on_report(4.0, RangesReported(rank, PANDA_ID, tuple(_done(r) for r in list(book.by_rank[rank])), 2),
                   GUARD)
    before = _visited(book)
    answers = book.serve_waiting(GUARD, GUARD - 1.9 * WALL)  # one range's time left: only rank 3000 holds none
    assert len(answers) == 2_999 and all(a.no_more and not a.ranges for a in answers)
    assert rank not in {a.rank for a in answers} and list(book.waiting) == [rank]
    assert book.waiting._wants.visited - before <= 1  # type: ignore[attr-defined]  # found by index, not walked
    assert book.serve_waiting(GUARD, GUARD - 1.8 * WALL) == []  # and nothing more until something changes


def test_a_waiting_rank_is_answered_when_no_range_fits_any_more() -> None:
    book = _book()
    _deal_to_every_rank(book, 4)
    book.on_report(2.0, RangesReported(2, PANDA_ID, tuple(_done(r) for r in list(book.by_rank[2])), 2), GUARD)
    assert 2 in book.waiting
    actions = book.serve_waiting(GUARD, GUARD - 0.5 * WALL)  # no range fits, and rank 2 holds none
    assert [a.no_more for a in actions] == [True] and book.leasing_stopped


def _drain(book: EsBook, now: float) -> list[ReportRanges]:
    """Make the bundle that is due, stage it out at once, and send the report that is due."""
    sent: list[ReportRanges] = []
    bundle = book.due_bundle(now)
    if isinstance(bundle, MakeBundle):
        zipped = OutputBundle("z.zip", 10, "00000001", bundle.num_events, -1, 1000,
                              range_ids=tuple(u.event_range_id for u in bundle.updates))
        report = book.on_bundle(BundleStaged(PANDA_ID, bundle.updates, zipped))
        assert report is not None
        sent.append(report)
    report = book.due_report(now)
    if report is not None:
        sent.append(report)
    return sent


def test_memory_is_bounded_after_100k_ranges_leased_and_reported() -> None:
    book = _book(per_request=50)
    ranks, total, per_fetch = 20, 100_000, 1_000
    for rank in range(1, ranks + 1):
        book.join(rank)
    sent: list[str] = []
    now = 1.0
    for first in range(0, total, per_fetch):
        book.on_fetched(now, RangesFetched(PANDA_ID, _ranges(first, per_fetch)), retry=1.0)
        while book.queue:
            for rank in range(1, ranks + 1):
                for deal in book.on_report(now, RangesReported(rank, PANDA_ID, (), 50), None):
                    outcomes = tuple(_done(r.event_range_id, "/o/x") if r.start_event % 4 else
                                     EventRangeUpdate(r.event_range_id, EventRangeStatus.FAILED, 1220)
                                     for r in deal.ranges)
                    book.on_report(now, RangesReported(rank, PANDA_ID, outcomes, 0), None)
        now += 10.0
        sent += [u.event_range_id for report in _drain(book, now) for u in report.updates]
        assert len(book.n_events) <= 2 * per_fetch  # what is in flight, not what was leased
        assert book.reported.remembered() <= REPORTED_WINDOW
    sent += [u.event_range_id for report in _drain(book, now + 1_000.0) for u in report.updates]
    assert len(sent) == len(set(sent)) == total  # every range reported, once
    assert len(book.reported) == total and book.finished_ranges == total * 3 // 4
    assert book.reported.remembered() == REPORTED_WINDOW
    assert not book.n_events and not book.dealt and not book.by_rank and not book.queue
    assert not book.to_bundle and not book.to_report and not book.waiting and book.waiting.total == 0


def test_a_range_handed_out_again_is_never_dealt_twice() -> None:
    book = _book()
    book.join(1)
    book.on_fetched(1.0, RangesFetched(PANDA_ID, _ranges(0, 3)), retry=1.0)
    deal = book.on_report(1.0, RangesReported(1, PANDA_ID, (), 1), None)[0]
    finished = deal.ranges[0].event_range_id
    book.on_report(1.0, RangesReported(1, PANDA_ID, (_done(finished),), 0), None)
    assert book.to_report  # finished without output: waits for the next report
    book.on_fetched(2.0, RangesFetched(PANDA_ID, _ranges(0, 3)), retry=1.0)  # all three again
    assert len(book.queue) == 2  # the two still queued are not queued twice, the finished one not again
    report = book.due_report(100.0)
    assert report is not None and [u.event_range_id for u in report.updates] == [finished]
    book.on_fetched(3.0, RangesFetched(PANDA_ID, _ranges(0, 4)), retry=1.0)  # after its status was sent
    assert [r.event_range_id for r in book.queue] == [r.event_range_id for r in _ranges(1, 3)]
