"""Range outcomes as columns (``RangeOutcomes``) and the ledger's whole-report paths: each C-level path
must leave exactly what the one-range-at-a-time path leaves, on random reports and leases that mix the
usual case with every exception (repeated ids, strays, ranges held or sent already, failures, outputs,
zero, negative and NaN CPU)."""

from __future__ import annotations

import pickle
import random

import pytest

from hpcpilot.eventservice.holdings import Holdings
from hpcpilot.eventservice.outbox import Outbox
from hpcpilot.eventservice.register import RangeRegister
from hpcpilot.eventservice.tally import Tally
from hpcpilot.protocol import RangeReport
from hpcpilot.records import EventRange, EventRangeUpdate, RangeOutcomes
from hpcpilot.records.outcomes import OutcomeQueue
from hpcpilot.runrecord import batch_rows, range_row
from hpcpilot.states import EventRangeStatus

T0 = 1_700_000_000.25


def _range(i: int) -> EventRange:
    return EventRange(f"r{i}", i, i + i % 7, "E", "G", "s")


def _outcome(rng: random.Random, i: int, plain: bool) -> EventRangeUpdate:
    cpu = rng.choice([0.0, 0.125, 1.23456789]) if plain else rng.choice([0.0, -0.5, float("nan"), 2.0])
    if plain:
        return EventRangeUpdate(f"r{i}", EventRangeStatus.FINISHED, cpu_time=cpu, wall_time=rng.random())
    status = rng.choice([EventRangeStatus.FINISHED, EventRangeStatus.FAILED, EventRangeStatus.FATAL])
    return EventRangeUpdate(f"r{i}", status, rng.choice([0, 1220]), rng.choice(["", "died"]), cpu,
                            rng.choice([0.0, 0.5]), rng.choice(["", f"/o/{i}"]), 10, "0a1b2c3d")


def test_columns_read_as_the_outcomes_and_cross_mpi_as_columns() -> None:
    rng = random.Random(1)
    outcomes = tuple(_outcome(rng, i, plain=i % 2 == 0) for i in range(9))
    batch = RangeOutcomes.of(outcomes)
    assert batch == outcomes and list(batch) == list(outcomes) and len(batch) == 9
    assert batch[3] == outcomes[3] and batch[2:5] == outcomes[2:5]
    assert batch.ids == tuple(o.event_range_id for o in outcomes)
    assert RangeOutcomes.of(batch) is batch and RangeOutcomes.of(()) == ()
    received = pickle.loads(pickle.dumps(RangeReport(3, 50, outcomes, 4), protocol=pickle.HIGHEST_PROTOCOL))
    assert isinstance(received.outcomes, RangeOutcomes) and received.outcomes == outcomes
    assert received.rank == 3 and received.panda_id == 50 and received.want == 4


@pytest.mark.parametrize("seed", range(40))
def test_a_lease_taken_in_at_once_is_what_one_range_at_a_time_gives(seed: int) -> None:
    rng = random.Random(seed)
    whole, single = RangeRegister(), RangeRegister()
    for register in (whole, single):
        register.take_in_all([_range(i) for i in range(0, 20)])
        register.sent([EventRangeUpdate(f"r{i}", EventRangeStatus.FINISHED) for i in range(0, 5)])
    start = rng.choice([0, 3, 10, 20, 30])
    lease = [_range(i) for i in range(start, start + rng.randint(0, 30))]
    if lease and rng.random() < 0.3:
        lease.append(rng.choice(lease))  # a range twice in one lease
    new, refused = whole.take_in_all(lease)
    expected_new: list[EventRange] = []
    expected_refused: list[str] = []
    for item in lease:
        if single.take_in(item.event_range_id, item.n_events):
            expected_new.append(item)
        else:
            expected_refused.append(item.event_range_id)
    assert new == expected_new and refused == expected_refused
    assert whole.n_events == single.n_events


@pytest.mark.parametrize("seed", range(40))
def test_a_report_taken_back_at_once_is_what_one_outcome_at_a_time_gives(seed: int) -> None:
    rng = random.Random(seed)
    boxes = []
    for _ in range(2):
        register = RangeRegister()
        register.take_in_all([_range(i) for i in range(40)])
        holdings = Holdings()
        holdings.deal(1, [_range(i) for i in range(0, 20)])
        holdings.deal(2, [_range(i) for i in range(20, 30)])
        boxes.append((holdings, Outbox(Tally(), register)))
    plain = rng.random() < 0.6
    ids = rng.sample(range(0, 20), rng.randint(1, 20))
    if rng.random() < 0.3:
        ids.append(rng.choice([ids[0], 25, 35]))  # a repeat, another rank's range, one never dealt
    batch = RangeOutcomes.of([_outcome(rng, i, plain or rng.random() < 0.5) for i in ids])
    (fast_holdings, fast_box), (slow_holdings, slow_box) = boxes
    ranges = fast_holdings.take_back_all(1, batch.ids)
    if ranges is not None:
        fast_box.record_batch(5.0, batch, ranges)
    else:
        taken, _ = fast_holdings.take_back(1, batch)
        fast_box.record(5.0, taken)
    taken, _ = slow_holdings.take_back(1, list(batch))
    slow_box.record(5.0, taken)
    assert (ranges is None) == (len(set(ids)) != len(ids) or any(i >= 20 for i in ids))
    assert fast_holdings.dealt == slow_holdings.dealt and fast_holdings.by_rank == slow_holdings.by_rank
    assert fast_box.to_report == slow_box.to_report and fast_box.to_bundle == slow_box.to_bundle
    assert vars(fast_box.tally) == vars(slow_box.tally)
    assert len(fast_box.register.reported) == len(slow_box.register.reported)


@pytest.mark.parametrize("seed", range(40))
def test_a_report_s_rows_made_at_once_are_the_rows_of_each_outcome(seed: int) -> None:
    rng = random.Random(seed)
    plain = rng.random() < 0.7
    outcomes = [_outcome(rng, i, plain or rng.random() < 0.8) for i in range(rng.randint(1, 30))]
    if rng.random() < 0.5:  # zero CPU for all, as a null payload reports
        outcomes = [EventRangeUpdate(o.event_range_id, o.status) for o in outcomes]
    sizes = [rng.choice([1, 250]) if plain else rng.choice([1, None]) for _ in outcomes]
    expected = [range_row(outcome, n, T0) for outcome, n in zip(outcomes, sizes, strict=True)]
    assert batch_rows(RangeOutcomes.of(outcomes), sizes, T0) == expected


def test_queued_outcomes_go_out_as_one_batch_in_the_order_they_came() -> None:
    rng = random.Random(7)
    queue, expected = OutcomeQueue(), []
    for i in range(12):
        if i % 3 == 0:
            batch = RangeOutcomes.of([_outcome(rng, 100 * i + j, plain=True) for j in range(rng.randint(0, 4))])
            queue.add_batch(batch)
            expected += list(batch)
        else:
            single = _outcome(rng, 100 * i, plain=False)
            queue.append(single)
            expected.append(single)
    assert queue == expected and len(queue) == len(expected)
    taken = queue.take()
    assert isinstance(taken, RangeOutcomes) and taken == expected
    assert not queue and queue.take() == ()
