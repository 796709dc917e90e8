"""The structures that keep rank 0 O(1) per event (hpcpilot.scheduler): each one's guarantee against a plain
recount or scan of the same history, driven by random sequences of changes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hpcpilot.records import JobRecord
from hpcpilot.scheduler import Fetch, JobsFetched, SchedulerPolicy
from hpcpilot.scheduler.done import DoneRecords
from hpcpilot.scheduler.due import BEAT, WALLTIME, DueEntry, DueQueue
from hpcpilot.scheduler.fetchgate import FetchGate
from hpcpilot.scheduler.ranks import RankRegistry
from hpcpilot.states import JobState, RankState


@pytest.mark.parametrize("seed", range(5))
def test_the_registry_keeps_counts_idle_and_liveness_orders_as_a_recount_finds_them(seed: int) -> None:
    rng = random.Random(seed)
    registry = RankRegistry(range(1, 41))
    heard: dict[int, float] = {}
    for step in range(2000):
        number, now = rng.randint(1, 40), float(step)
        change = rng.choice(("heard", "idle", "bind", "release", "stopped", "lost", "take"))
        if change == "heard":
            registry.heard_from(number, now)
            if registry[number].state not in (RankState.STOPPED, RankState.LOST):
                heard[number] = now
        elif change == "idle":
            registry.make_idle(number)
        elif change == "bind" and registry[number].state not in (RankState.STOPPED, RankState.LOST):
            registry.idle.pop(number, None)
            registry.bind(number, 1000 + number)
        elif change == "release":
            registry.release(number, 1000 + number, stopping=rng.random() < 0.2)
        elif change in ("stopped", "lost"):
            registry.gone(number, RankState.STOPPED if change == "stopped" else RankState.LOST)
            heard.pop(number, None)
        elif change == "take" and registry.idle:
            registry.next_idle()
        recount = Counter(slot.state for slot in registry.values())
        assert +registry.counts == recount, f"step {step}"
        assert all(registry[n].state == RankState.IDLE for n in registry.idle)
        assert list(registry.alive) == sorted(heard, key=heard.__getitem__)  # least recently heard first
    limit, now = 300.0, 2000.0
    expected = [(n, now - t) for n, t in sorted(heard.items(), key=lambda item: item[1]) if now - t > limit]
    assert registry.silent_longer_than(limit, now) == expected


def test_ranks_that_never_answered_are_given_up_once() -> None:
    registry = RankRegistry([1, 2, 3])
    registry.answered.add(2)
    assert registry.give_up_unanswered() == [1, 3]
    assert registry[1].state == registry[3].state == RankState.LOST and registry.startup_complete()
    assert registry.give_up_unanswered() == []


@pytest.mark.parametrize("seed", range(5))
def test_the_due_queue_pops_exactly_the_live_entries_due_in_time_order_and_stays_bounded(seed: int) -> None:
    rng = random.Random(seed)
    live: dict[int, int] = {}  # PandaID -> the seq of its live entry (one per job here)
    queue = DueQueue(lambda entry: live.get(entry.panda_id) == entry.seq)
    popped_seqs: set[int] = set()
    now = 0.0
    for _ in range(3000):
        panda_id = rng.randint(1, 50)
        if rng.random() < 0.7:  # a new entry supersedes the job's old one
            live[panda_id] = queue.upcoming
            assert queue.push(now + rng.uniform(0, 20), rng.choice((BEAT, WALLTIME)), panda_id, len(live)) == \
                live[panda_id]
        else:
            live.pop(panda_id, None)  # the job closed
        now += 0.1
        popped: list[DueEntry] = list(queue.pop_due(now))
        popped_seqs.update(e.seq for e in popped)
        assert all(entry.when <= now for entry in popped)
        assert [e.when for e in popped] == sorted(e.when for e in popped)
        assert all(entry.when > now for entry in queue.heap)  # nothing due was left behind
        assert len(queue) <= 4 * len(live) + 64 + 1
    assert set(live.values()) <= {e.seq for e in queue.heap} | popped_seqs  # compaction never dropped a live one


def fetched(n: int, asked: int | None = None, **kw: object) -> JobsFetched:
    from tests.unit.test_scheduler_scale import fast_spec

    return JobsFetched(tuple(fast_spec(i) for i in range(1, n + 1)), asked=asked, **kw)  # type: ignore[arg-type]


def test_the_fetch_gate_asks_for_the_uncovered_ranks_in_requests_of_at_most_jobs_per_fetch() -> None:
    gate = FetchGate(SchedulerPolicy(jobs_per_fetch=10, fetches_in_flight=3))
    assert gate.requests(25, now=0.0) == [Fetch(10), Fetch(10), Fetch(5)]
    assert gate.requests(25, now=0.0) == []  # covered by the requests under way
    gate.answered(fetched(10, asked=10), now=1.0, busy=True)
    assert gate.in_flight == [10, 5] and gate.leased == 10


def test_an_outage_counts_once_per_request_sent_into_it_and_ends_leasing_only_with_nothing_running() -> None:
    gate = FetchGate(SchedulerPolicy(jobs_per_fetch=1, fetches_in_flight=4, getjob_failures=2, fetch_retry=5.0))
    assert len(gate.requests(4, now=0.0)) == 4
    down = {"unavailable": True, "reason": "connection refused"}
    for _ in range(4):  # the four answers of one outage
        gate.answered(fetched(0, asked=1, **down), now=1.0, busy=False)
    assert gate.failures == 1 and not gate.gave_up
    assert gate.requests(4, now=2.0) == []  # the retry pause
    assert gate.requests(4, now=6.0) == [Fetch(1)]  # while failing: one probe at a time
    gate.answered(fetched(0, asked=1, **down), now=6.5, busy=False)
    assert gate.failures == 2 and gate.gave_up.startswith("gave up on the job source after 2 failed request(s)")
    assert not gate.may_lease(winding_down=False)


def test_max_jobs_bounds_what_the_gate_asks_for() -> None:
    gate = FetchGate(SchedulerPolicy(jobs_per_fetch=3, fetches_in_flight=4, max_jobs=8))
    assert sum(f.n for f in gate.requests(100, now=0.0)) == 8
    gate.answered(fetched(3, asked=3), now=1.0, busy=True)
    gate.answered(fetched(3, asked=3), now=1.0, busy=True)
    gate.answered(fetched(2, asked=2), now=1.0, busy=True)
    assert not gate.may_lease(winding_down=False)


def test_done_records_count_their_failures_as_a_recount_does() -> None:
    done = DoneRecords()
    rng = random.Random(1)
    for i in range(500):
        record = JobRecord(i, rng.choice((JobState.FINISHED, JobState.FAILED)))
        done.append(record)
        if rng.random() < 0.1:
            assert done.failed() == sum(r.state == JobState.FAILED for r in done)
    assert done.failed() == sum(r.state == JobState.FAILED for r in done)


@pytest.mark.parametrize("seed", range(5))
def test_the_job_queue_counts_per_architecture_as_a_recount_does_and_keeps_the_order_of_what_stays(seed: int) -> None:
    from hpcpilot.records import JobSpec
    from hpcpilot.scheduler.queue import JobQueue
    from tests.pilotrun import make_job

    rng = random.Random(seed)
    queue, model, next_id = JobQueue(), [], 1
    for _ in range(200):
        if rng.random() < 0.5 or not model:
            architecture = rng.choice([None, "a100", "cpu"])
            jobs = [JobSpec.from_wire(make_job(next_id + i, "true")) for i in range(rng.randint(1, 3))]
            next_id += len(jobs)
            queue.extend(jobs, architecture)
            model += [(job.panda_id, architecture) for job in jobs]
        elif rng.random() < 0.5:
            assert queue.popleft().panda_id == model.pop(0)[0]
        else:
            wanted = rng.choice([None, "a100", "cpu"])
            budget = rng.randint(0, 2)
            taken_ids = [pid for pid, arch in model if arch == wanted][:budget]
            claimed = Counter({wanted: budget})

            def take(job: JobSpec, architecture: str | None, claimed: Counter = claimed) -> bool:
                if claimed[architecture] <= 0:
                    return False
                claimed[architecture] -= 1
                return True

            taken = [(job.panda_id, arch) for job, arch in queue.take_where(take)]
            assert taken == [(pid, wanted) for pid in taken_ids]
            model = [entry for entry in model if entry[0] not in taken_ids]
        recount = Counter(arch for _, arch in model)
        assert [job.panda_id for job in queue] == [pid for pid, _ in model]
        assert all(queue.queued_for(arch) == recount[arch] for arch in (None, "a100", "cpu"))
        assert sorted(queue.architectures(), key=str) == sorted((a for a in recount if recount[a]), key=str)
