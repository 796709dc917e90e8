"""Rank 0 with GPU ranks and CPU ranks: a fetch per architecture, each job to a rank of the architecture it was
fetched for (PanDA matched it to that ``target_architecture``), and ranks with no job left for them let go."""

from __future__ import annotations

from hpcpilot.config import load_config
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler import (
    Assign,
    Fetch,
    JobEnded,
    JobsFetched,
    RankReady,
    Scheduler,
    SchedulerPolicy,
    SendNoMoreWork,
    WorkRequested,
)
from hpcpilot.states import JobState
from tests.pilotrun import make_job

CONFIG = load_config(environ={})
GPU = '{"gpus": [{"model": "NVIDIA A100-SXM4-40GB", "vendor": "NVIDIA"}]}'
CPU = '{"gpus": []}'


def spec(panda_id: int) -> JobSpec:
    return JobSpec.from_wire(make_job(panda_id, "true"))


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def _ready(archs: dict[int, str | None]) -> tuple[Scheduler, list]:
    s = Scheduler(list(archs), CONFIG, SchedulerPolicy(fetches_in_flight=4))
    actions = s.handle(0.0, [RankReady(rank, True, (), arch) for rank, arch in archs.items()])
    actions += s.handle(0.1, [WorkRequested(rank) for rank in archs])
    return s, actions


def test_gpu_and_cpu_ranks_fetch_apart_and_each_job_goes_to_its_kind():
    s, actions = _ready({1: GPU, 2: CPU, 3: GPU, 4: CPU, 5: CPU})
    assert sorted(of(actions, Fetch), key=lambda f: f.n) == [Fetch(2, GPU), Fetch(3, CPU)]
    # the CPU answer comes first, and brings more jobs than there are CPU ranks
    actions = s.handle(1.0, [JobsFetched((spec(10), spec(11), spec(12), spec(13)), asked=3, architecture=CPU)])
    assert sorted((a.rank, a.job.panda_id) for a in of(actions, Assign)) == [(2, 10), (4, 11), (5, 12)]
    actions = s.handle(2.0, [JobsFetched((spec(20), spec(21)), asked=2, architecture=GPU)])
    assert sorted((a.rank, a.job.panda_id) for a in of(actions, Assign)) == [(1, 20), (3, 21)]
    # a GPU rank that frees up does not take the CPU job still queued: it asks for a GPU job
    actions = s.handle(3.0, [JobEnded(1, JobRecord(20, state=JobState.FINISHED)), WorkRequested(1)])
    assert of(actions, Assign) == [] and of(actions, Fetch) == [Fetch(1, GPU)]
    actions = s.handle(4.0, [JobEnded(2, JobRecord(10, state=JobState.FINISHED)), WorkRequested(2)])
    assert [(a.rank, a.job.panda_id) for a in of(actions, Assign)] == [(2, 13)]


def test_ranks_whose_kind_has_no_job_left_are_let_go_while_the_others_work():
    s, _ = _ready({1: GPU, 2: CPU})
    actions = s.handle(1.0, [JobsFetched((spec(30),), asked=1, architecture=CPU)])
    assert [(a.rank, a.job.panda_id) for a in of(actions, Assign)] == [(2, 30)]
    actions = s.handle(2.0, [JobsFetched((), asked=1, architecture=GPU)])  # the server has no GPU job
    assert of(actions, SendNoMoreWork) == [SendNoMoreWork(1)] and of(actions, Fetch) == []
    actions = s.handle(3.0, [JobEnded(2, JobRecord(30, state=JobState.FINISHED)), WorkRequested(2)])
    assert of(actions, Fetch) == [Fetch(1, CPU)]  # the CPU kind still asks: the source is not empty for it


def test_one_kind_of_rank_fetches_as_before_with_its_architecture():
    s, actions = _ready({1: GPU, 2: GPU})
    assert of(actions, Fetch) == [Fetch(2, GPU)]
    actions = s.handle(1.0, [JobsFetched((spec(40), spec(41)), asked=2, architecture=GPU)])
    assert sorted((a.rank, a.job.panda_id) for a in of(actions, Assign)) == [(1, 40), (2, 41)]
    s, actions = _ready({1: None, 2: None})  # a source that does not match GPUs: no architecture
    assert of(actions, Fetch) == [Fetch(2, None)]
