"""Ranks waiting for ranges (``Waiting``) and the gate on passes over them (``PassGate``): the total and
the index by ranges held answer what a scan of the waiting ranks would, and the line keeps its order."""

from __future__ import annotations

import random

from hpcpilot.eventservice.waiting import PassGate, Waiting


def _assert_like_a_scan(waiting: Waiting, wants: dict[int, int], held: dict[int, int]) -> None:
    assert list(waiting) == list(wants) and len(waiting) == len(wants)  # oldest request first
    assert waiting.total == sum(wants.values())
    for n in range(6):
        assert sorted(waiting.holding_at_least(n)) == sorted(r for r in wants if held[r] >= n)
        assert waiting.any_holding(n) == any(held[r] == n for r in wants)
    for rank in range(1, 13):
        assert (rank in waiting) == (rank in wants)


def test_total_and_index_by_held_are_what_a_scan_gives_through_random_traffic() -> None:
    rnd, waiting = random.Random(11), Waiting()
    wants: dict[int, int] = {}  # the plain model: insertion order is the line
    held: dict[int, int] = {}
    for _ in range(4_000):
        rank, roll = rnd.randint(1, 12), rnd.random()
        if roll < 0.35:
            want, now_held = rnd.randint(1, 4), rnd.randint(0, 5)
            waiting.park(rank, want, now_held)
            wants[rank] = want  # a new request replaces the old one in its place in line
            held[rank] = now_held
        elif roll < 0.55:
            assert waiting.take(rank) == wants.pop(rank, None)
        elif roll < 0.7 and wants:
            first = next(iter(wants))
            assert waiting.oldest() == (first, wants.pop(first))
        else:
            now_held = rnd.randint(0, 5)
            waiting.held_changed(rank, now_held)  # a rank that does not wait is not indexed
            if rank in wants:
                held[rank] = now_held
        _assert_like_a_scan(waiting, wants, held)


def test_the_ranks_holding_the_most_are_found_without_walking_the_line() -> None:
    waiting = Waiting()
    for rank in range(1, 10_001):
        waiting.park(rank, 2, 2)
    waiting.held_changed(5_000, 0)

    class NoWalk(dict):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("the line walked")

    waiting._wants = NoWalk(waiting._wants)  # type: ignore[assignment]
    assert waiting.any_holding(0) and not waiting.any_holding(1)
    assert len(waiting.holding_at_least(1)) == 9_999 and 5_000 not in waiting.holding_at_least(1)


def test_a_pass_is_opened_only_when_a_request_lease_or_stop_came_or_the_guard_changed_the_fit() -> None:
    gate = PassGate()
    assert not gate.open(None)  # nothing happened yet
    gate.touch()
    assert gate.open(None) and not gate.open(None)  # once per change
    assert gate.open(3) and not gate.open(3)  # the guard now fits 3 ranges per rank: one more pass
    gate.touch()
    assert gate.open(3) and not gate.open(3)
    assert gate.open(None)
