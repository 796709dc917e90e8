"""Rank 0's index of what each rank holds (``Holdings``): the per-rank lookups it answers in O(held)
are what a scan of every dealt range would answer, through any mix of deals, outcomes and lost ranks."""

from __future__ import annotations

import random

from hpcpilot.eventservice.holdings import Holdings
from hpcpilot.records import EventRange, EventRangeUpdate
from hpcpilot.states import EventRangeStatus


def _range(i: int) -> EventRange:
    return EventRange(f"r{i}", i, i, "E", "G", "s")


def _done(range_id: str) -> EventRangeUpdate:
    return EventRangeUpdate(range_id, EventRangeStatus.FINISHED)


def _assert_index_is_a_scan(holdings: Holdings, ranks: range) -> None:
    scan: dict[int, set[str]] = {}
    for range_id, (rank, item) in holdings.dealt.items():
        assert item.event_range_id == range_id
        scan.setdefault(rank, set()).add(range_id)
    assert {rank: set(ids) for rank, ids in holdings.by_rank.items()} == scan  # no empty entry either
    for rank in ranks:
        assert holdings.held_by(rank) == len(scan.get(rank, ()))


def test_the_index_by_rank_says_what_a_scan_of_dealt_says_through_random_traffic() -> None:
    rnd, holdings, ranks, next_id = random.Random(7), Holdings(), range(1, 9), 0
    for _ in range(3_000):
        rank, roll = rnd.choice(ranks), rnd.random()
        if roll < 0.4:
            n = rnd.randint(0, 3)
            holdings.deal(rank, [_range(i) for i in range(next_id, next_id + n)])
            next_id += n
        elif roll < 0.9:
            mine = list(holdings.by_rank.get(rank, ()))
            others = [rid for rid in holdings.dealt if rid not in mine][:2]
            sent = rnd.sample(mine, rnd.randint(0, len(mine))) + others + ["never-dealt"]
            expected = [rid for rid in sent if rid in mine]
            taken, strays = holdings.take_back(rank, [_done(rid) for rid in sent])
            assert [(o.event_range_id, item.event_range_id) for o, item in taken] == [(r, r) for r in expected]
            assert strays == [rid for rid in sent if rid not in mine]
        else:
            mine = set(holdings.by_rank.get(rank, ()))
            assert set(holdings.release(rank)) == mine
            assert not mine & set(holdings.dealt)
        _assert_index_is_a_scan(holdings, ranks)


def test_an_outcome_counts_once_and_only_from_the_rank_the_range_is_dealt_to() -> None:
    holdings = Holdings()
    holdings.deal(1, [_range(0), _range(1)])
    holdings.deal(2, [_range(2)])
    taken, strays = holdings.take_back(1, [_done("r0"), _done("r0"), _done("r2")])
    assert [item.event_range_id for _, item in taken] == ["r0"] and strays == ["r0", "r2"]
    assert holdings.held_by(1) == 1 and holdings.dealt["r2"][0] == 2
    taken, _ = holdings.take_back(1, [_done("r1")])
    assert len(taken) == 1 and 1 not in holdings.by_rank  # the emptied rank leaves the index


def test_release_gives_back_only_the_rank_own_ranges_without_walking_dealt() -> None:
    class NoWalk(dict):  # any walk over every dealt range fails the test
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("dealt walked")

        keys = values = items = __iter__

    holdings = Holdings()
    holdings.dealt = NoWalk()
    for rank in range(1, 1_001):
        holdings.deal(rank, [_range(2 * rank), _range(2 * rank + 1)])
    assert holdings.held_by(500) == 2
    assert holdings.release(500) == ["r1000", "r1001"] and holdings.release(500) == []
    assert len(holdings.dealt) == 1_998 and holdings.held_by(500) == 0
