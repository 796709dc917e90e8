"""Rank 0's scheduler at scale: the work per event and per empty pass does not grow with the ranks or jobs.

Asserted by counting operations (ranks and jobs visited by iteration, due-time entries popped), at 100 and
at 10,000 ranks, never by timing; and job fetches are pipelined: several requests in flight, sized to the
idle ranks.
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.config import load_config
from hpcpilot.controller import Controller
from hpcpilot.monitor.samples import MonitorReport, TreeSample
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler import (
    Assign,
    Fetch,
    JobEnded,
    JobProgress,
    JobsFetched,
    RankDied,
    RankReady,
    RankStopped,
    Report,
    ReportReceived,
    Scheduler,
    SchedulerPolicy,
    ServerCommand,
    StopRequested,
    WorkRequested,
)
from hpcpilot.scheduler import due as due_module
from hpcpilot.signals import SignalFlag
from hpcpilot.sources import FetchOutcome
from hpcpilot.states import JobState, RankState
from hpcpilot.transport import QueueHub
from tests.fixtures.sources import QuietSource
from tests.pilotrun import make_job

CONFIG = load_config(environ={})
QUIET = {"lost_after": 1e9, "heartbeat": 1e6, "startup_timeout": 1e6}
"""Policy numbers under which nothing is due during a test, unless the test says otherwise."""


class CountingDict(dict):
    """A dict that counts the entries any iteration over it visits (``in`` and ``[]`` are not counted)."""

    visits = 0

    def __iter__(self) -> Iterator[Any]:
        for key in super().__iter__():
            self.visits += 1
            yield key

    def keys(self) -> Any:
        return list(iter(self))

    def values(self) -> Any:
        return [self[key] for key in self]

    def items(self) -> Any:
        return [(key, self[key]) for key in self]


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def spec(panda_id: int) -> JobSpec:
    return JobSpec.from_wire(make_job(panda_id, "true", ["o.txt"]))


SPEC_WIRE = make_job(1, "true", ["o.txt"])


def fast_spec(panda_id: int) -> JobSpec:
    """``spec`` without rebuilding the job dict each time (10,000 of them per test)."""
    return JobSpec.from_wire({**SPEC_WIRE, "PandaID": panda_id})


def report(panda_id: int, t: float) -> MonitorReport:
    tree = TreeSample(t, 1000, 1000, 0, 1000, 1.0, 0.5, 1, 1, 0, 0, 0, 0)
    return MonitorReport(panda_id, t, tree, None, 1, 1.0, 0.0, 100000.0, None, True)


def answer(actions: list, next_id: list[int]) -> list[JobsFetched]:
    """Answer every Fetch in ``actions`` in full, with new job ids."""
    answers = []
    for fetch in of(actions, Fetch):
        jobs = tuple(fast_spec(next_id[0] + i) for i in range(fetch.n))
        next_id[0] += fetch.n
        answers.append(JobsFetched(jobs, asked=fetch.n))
    return answers


def all_busy(n_ranks: int, **policy: Any) -> tuple[Scheduler, list[int]]:
    """A scheduler whose ``n_ranks`` ranks all run a job; returns it with the next free PandaID."""
    s = Scheduler(list(range(1, n_ranks + 1)), CONFIG, SchedulerPolicy(**{**QUIET, **policy}))
    actions = s.handle(0.0, [RankReady(r, True) for r in s.ranks] + [WorkRequested(r) for r in s.ranks])
    next_id = [1]
    while of(actions, Fetch):
        actions = s.handle(1.0, answer(actions, next_id))
    assert len(s.jobs) == n_ranks
    return s, next_id


@pytest.fixture
def pops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts due-time entries popped by the scheduler."""
    counter = [0]
    real = due_module.heappop

    def counting(heap: list) -> Any:
        counter[0] += 1
        return real(heap)

    monkeypatch.setattr(due_module, "heappop", counting)
    return counter


def cycle_cost(n_ranks: int, pops: list[int], cycles: int = 50) -> tuple[int, int, int]:
    """(ranks visited, jobs visited, due entries popped) over ``cycles`` report/end/request/fetch cycles and
    as many empty passes, with every rank busy."""
    s, next_id = all_busy(n_ranks)
    s.ranks.slots = CountingDict(s.ranks.slots)
    s.jobs = s.timers.jobs = CountingDict(s.jobs)  # the timers look jobs up in the same table
    pops[0] = 0
    t = 2.0
    for i in range(cycles):
        rank = 1 + i % n_ranks
        panda_id = s.ranks[rank].panda_id
        s.handle(t, [ReportReceived(rank, report(panda_id, t))])
        actions = s.handle(t, [JobEnded(rank, JobRecord(panda_id, JobState.FINISHED)), WorkRequested(rank)])
        assert of(actions, Fetch) == [Fetch(1)]
        actions = s.handle(t, answer(actions, next_id))
        assert [a.rank for a in of(actions, Assign)] == [rank]
        s.handle(t + 0.5, [JobProgress(rank, JobRecord(next_id[0] - 1, JobState.RUNNING))])
        s.handle(t + 0.5, [])  # an empty pass
        t += 1.0
    return s.ranks.slots.visits, s.jobs.visits, pops[0]  # type: ignore[attr-defined]


def test_an_event_cycle_and_an_empty_pass_visit_no_rank_and_no_job_at_100_or_10000_ranks(pops: list[int]) -> None:
    small, large = cycle_cost(100, pops), cycle_cost(10_000, pops)
    assert small == large == (0, 0, 0)  # nothing due: not one entry looked at, however many ranks


def test_a_pass_pops_only_the_due_heartbeats(pops: list[int]) -> None:
    s, _ = all_busy(1000, heartbeat=100.0)  # every job started at 1
    panda_id = s.ranks[1].panda_id
    pops[0] = 0
    s.handle(50.0, [JobProgress(1, JobRecord(panda_id, JobState.RUNNING))])  # postpones its beat to 150
    assert pops[0] == 0
    beats = of(s.handle(101.5, []), Report)
    assert len(beats) == 999 and panda_id not in {b.record.panda_id for b in beats}
    assert pops[0] == 1000  # each job's entry once: 999 beat, one is re-queued for 150
    pops[0] = 0
    assert not s.handle(120.0, []) and pops[0] == 0
    assert [b.record.panda_id for b in of(s.handle(150.0, []), Report)] == [panda_id]


def test_debug_mode_shortens_the_heartbeat_and_switching_it_off_restores_it() -> None:
    s = Scheduler([1], CONFIG, SchedulerPolicy(**{**QUIET, "heartbeat": 100.0, "debug_heartbeat": 10.0}))
    s.handle(0.0, [RankReady(1, True), WorkRequested(1)])
    s.handle(0.0, [JobsFetched((spec(5),), asked=1)])
    s.handle(1.0, [ServerCommand(5, "debug")])
    beat_times = [t for t in range(2, 60) if of(s.handle(float(t), []), Report)]
    assert beat_times == [10, 20, 30, 40, 50]
    s.handle(60.0, [ServerCommand(5, "debugoff")])
    beat_times = [t for t in range(61, 200) if of(s.handle(float(t), []), Report)]
    assert beat_times == [150]  # 100 s after the last beat (at 50), not 10


def test_the_due_heap_stays_proportional_to_the_running_jobs() -> None:
    s, next_id = all_busy(10)
    for i in range(2000):  # every job ends and is replaced: each leaves a dead heartbeat entry behind
        rank = 1 + i % 10
        panda_id = s.ranks[rank].panda_id
        actions = s.handle(2.0 + i, [JobEnded(rank, JobRecord(panda_id, JobState.FINISHED)), WorkRequested(rank)])
        s.handle(2.0 + i, answer(actions, next_id))
    assert len(s.jobs) == 10 and len(s.timers.due) <= 4 * len(s.jobs) + 64 + 1


def test_rank_state_counts_match_a_recount_through_every_kind_of_change() -> None:
    rng = random.Random(14)
    s = Scheduler(list(range(1, 51)), CONFIG, SchedulerPolicy(**{**QUIET, "jobs_per_fetch": 7}))
    next_id, t = [1], 0.0
    actions = s.handle(t, [RankReady(r, r % 17 != 0) for r in s.ranks])
    for step in range(400):
        t += 1.0
        rank = rng.randint(1, 50)
        events: list[Any] = answer(actions, next_id)
        choice = rng.random()
        if choice < 0.4:
            events.append(WorkRequested(rank))
        elif choice < 0.8 and s.ranks[rank].panda_id is not None:
            events.append(JobEnded(rank, JobRecord(s.ranks[rank].panda_id, JobState.FINISHED)))
        elif choice < 0.9:
            events.append(RankStopped(rank))
        else:
            events.append(RankDied(rank, "gone"))
        if step == 350:
            events.append(StopRequested(15, "stop"))
        actions = s.handle(t, events)
        recount = Counter(r.state for r in s.ranks.values())
        assert +s.ranks.counts == recount, f"step {step}"
        assert set(s.ranks.idle) <= {n for n, r in s.ranks.items() if r.state == RankState.IDLE}  # waiting for work
    assert "ranks busy=" in s.status_line()


# ---- pipelined job fetches -----------------------------------------------------------


def rounds_to_fill(n_ranks: int, source_limit: int | None = None, **policy: Any) -> tuple[int, list[list[int]]]:
    """Rounds of answers until every rank runs a job (each round answers every request under way), and the
    sizes of the requests made in each round (round 0: the start-up)."""
    s = Scheduler(list(range(1, n_ranks + 1)), CONFIG, SchedulerPolicy(**{**QUIET, **policy}))
    if source_limit is not None:
        s.policy.limit_fetches(source_limit)
    actions = s.handle(0.0, [RankReady(r, True) for r in s.ranks] + [WorkRequested(r) for r in s.ranks])
    sizes, next_id, rounds = [[f.n for f in of(actions, Fetch)]], [1], 0
    while len(s.jobs) < n_ranks:
        rounds += 1
        actions = s.handle(float(rounds), answer(actions, next_id))
        sizes.append([f.n for f in of(actions, Fetch)])
    return rounds, sizes


def test_a_1000_rank_startup_takes_a_few_rounds_of_pipelined_requests_sized_to_the_idle_ranks() -> None:
    rounds, sizes = rounds_to_fill(1000, jobs_per_fetch=100, fetches_in_flight=4)
    assert rounds == math.ceil(math.ceil(1000 / 100) / 4) == 3
    assert sizes[0] == [100] * 4 and sum(map(len, sizes)) == 10 and sum(map(sum, sizes)) == 1000
    assert max(map(max, filter(None, sizes))) <= 100  # never more than the per-request limit


def test_a_source_that_takes_one_request_at_a_time_gets_one() -> None:
    rounds, sizes = rounds_to_fill(1000, source_limit=1, jobs_per_fetch=100, fetches_in_flight=4)
    assert rounds == 10 and all(len(batch) <= 1 for batch in sizes)


def test_requests_never_ask_for_more_than_the_idle_ranks_or_max_jobs() -> None:
    s = Scheduler(list(range(1, 11)), CONFIG, SchedulerPolicy(**{**QUIET, "jobs_per_fetch": 3, "max_jobs": 8}))
    actions = s.handle(0.0, [RankReady(r, True) for r in s.ranks] + [WorkRequested(r) for r in range(1, 8)])
    assert [f.n for f in of(actions, Fetch)] == [3, 3, 1]  # 7 idle ranks
    actions = s.handle(1.0, [WorkRequested(8), WorkRequested(9)])
    assert [f.n for f in of(actions, Fetch)] == [1]  # max_jobs 8: 7 asked, one more


def test_an_outage_counts_once_for_the_requests_under_way_and_is_probed_by_one_request() -> None:
    s = Scheduler(list(range(1, 41)), CONFIG, SchedulerPolicy(**{**QUIET, "jobs_per_fetch": 10, "fetch_retry": 5.0}))
    actions = s.handle(0.0, [RankReady(r, True) for r in s.ranks] + [WorkRequested(r) for r in s.ranks])
    assert len(of(actions, Fetch)) == 4
    failed = [JobsFetched((), unavailable=True, reason="server down", asked=10)] * 4
    assert not of(s.handle(1.0, failed), Fetch)
    assert s.gate.failures == 1  # one outage, not four failures in a row
    assert of(s.handle(6.0, []), Fetch) == [Fetch(10)]  # a single probe after the retry delay
    assert not of(s.handle(7.0, []), Fetch)
    actions = s.handle(8.0, [JobsFetched(tuple(spec(i) for i in range(1, 11)), asked=10)])
    assert [f.n for f in of(actions, Fetch)] == [10, 10, 10]  # healed: the pipeline opens again


class _ParallelSource(QuietSource):
    """A job source that takes three fetches at once; each call waits until all three are under way."""

    concurrent_fetches = 3

    def __init__(self) -> None:
        self.barrier = threading.Barrier(3, timeout=30)  # a guard against a hang, not a timing

    def fetch_jobs(self, n: int, architecture: str | None = None) -> FetchOutcome:
        self.barrier.wait()  # breaks (and the test fails) unless three calls run side by side
        return FetchOutcome()


def _controller(tmp_path: Path, source: Any, **policy: Any) -> Controller:
    scheduler = Scheduler([1, 2], CONFIG, SchedulerPolicy(**policy))
    return Controller(QueueHub(3).transport(0), source, scheduler, tmp_path, SignalFlag())


def test_the_controller_runs_as_many_fetches_at_once_as_the_policy_and_the_source_allow(tmp_path: Path) -> None:
    source = _ParallelSource()
    controller = _controller(tmp_path, source, fetches_in_flight=4)
    assert controller.scheduler.policy.fetches_in_flight == 3  # the source takes no more
    try:
        for n in (1, 2, 3):
            controller.execute(Fetch(n))
        answers = [future.result(timeout=60) for future in controller.in_flight]
    finally:
        controller.fetcher.shutdown(wait=True)
    assert sorted(a.asked for a in answers) == [1, 2, 3]  # each answer says which request it answers
    assert not any(a.unavailable for a in answers)  # no BrokenBarrierError: the three ran together


def test_a_source_that_takes_one_fetch_at_a_time_is_fetched_from_one_at_a_time(tmp_path: Path) -> None:
    controller = _controller(tmp_path, QuietSource(), fetches_in_flight=4)
    controller.fetcher.shutdown(wait=True)
    assert controller.scheduler.policy.fetches_in_flight == 1
