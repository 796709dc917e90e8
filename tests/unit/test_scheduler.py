"""Rank 0's decisions: events in, actions out, time passed in. No MPI, no processes."""

from __future__ import annotations

from hpcpilot.config import load_config
from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.samples import MonitorReport, TreeSample
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler import (
    Abandon,
    Assign,
    Fetch,
    Finished,
    JobEnded,
    JobProgress,
    JobsFetched,
    Kill,
    RankAlive,
    RankReady,
    RankStopped,
    Report,
    ReportReceived,
    Scheduler,
    SchedulerPolicy,
    SendNoMoreWork,
    ServerCommand,
    StopRank,
    StopRequested,
    WorkRequested,
)
from hpcpilot.states import JobState
from tests.pilotrun import make_job

CONFIG = load_config(environ={})


def spec(panda_id: int, **extra: object) -> JobSpec:
    return JobSpec.from_wire(make_job(panda_id, "true", ["o.txt"], **extra))


def started(ranks: int = 3, **policy: object) -> Scheduler:
    scheduler = Scheduler(list(range(1, ranks + 1)), CONFIG, SchedulerPolicy(**policy))  # type: ignore[arg-type]
    scheduler.handle(0.0, [RankReady(r, True) for r in range(1, ranks + 1)])
    return scheduler


def of_type(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def report(panda_id: int, t: float, pss: int = 1000, last_activity: float | None = None) -> MonitorReport:
    tree = TreeSample(t, pss, pss, 0, pss, 1.0, 0.5, 1, 1, 0, 0, 0, 0)
    return MonitorReport(panda_id, t, tree, None, 1, 1.0, 0.0, 100000.0, last_activity, True)


def test_nothing_is_leased_before_every_rank_answered() -> None:
    scheduler = Scheduler([1, 2], CONFIG, SchedulerPolicy())
    actions = scheduler.handle(0.0, [RankReady(1, True), WorkRequested(1)])
    assert not of_type(actions, Fetch)
    actions = scheduler.handle(1.0, [RankReady(2, True), WorkRequested(2)])
    assert of_type(actions, Fetch) == [Fetch(2)]


def test_a_rank_that_never_answers_is_given_up_after_the_startup_timeout() -> None:
    scheduler = Scheduler([1, 2], CONFIG, SchedulerPolicy(startup_timeout=10))
    assert not of_type(scheduler.handle(0.0, [RankReady(1, True), WorkRequested(1)]), Fetch)
    assert of_type(scheduler.handle(11.0, []), Fetch) == [Fetch(1)]


def test_idle_ranks_are_batched_into_one_fetch_and_get_one_job_each() -> None:
    scheduler = started(3)
    actions = scheduler.handle(1.0, [WorkRequested(1), WorkRequested(2), WorkRequested(3)])
    assert of_type(actions, Fetch) == [Fetch(3)]
    actions = scheduler.handle(2.0, [JobsFetched((spec(1), spec(2), spec(3)))])
    assert sorted((a.rank, a.job.panda_id) for a in of_type(actions, Assign)) == [(1, 1), (2, 2), (3, 3)]


def test_dynamic_balancing_and_source_exhaustion_end_the_run() -> None:
    scheduler = started(2)
    scheduler.handle(0.0, [WorkRequested(1), WorkRequested(2)])
    scheduler.handle(0.0, [JobsFetched((spec(1), spec(2)))])
    done = JobRecord(1, JobState.FINISHED)
    actions = scheduler.handle(1.0, [JobEnded(1, done), WorkRequested(1)])
    assert Report(done, final=True) in actions and of_type(actions, Fetch) == [Fetch(1)]
    actions = scheduler.handle(1.5, [JobsFetched(())])  # the source is empty
    assert of_type(actions, SendNoMoreWork) == [SendNoMoreWork(1)]
    actions = scheduler.handle(2.0, [RankStopped(1), JobEnded(2, JobRecord(2, JobState.FINISHED)), WorkRequested(2)])
    assert of_type(actions, SendNoMoreWork) == [SendNoMoreWork(2)]
    assert of_type(scheduler.handle(2.5, [RankStopped(2)]), Finished)
    assert [r.panda_id for r in scheduler.done] == [1, 2]


def test_max_jobs_limits_leasing() -> None:
    scheduler = started(3, max_jobs=2)
    actions = scheduler.handle(0.0, [WorkRequested(1), WorkRequested(2), WorkRequested(3)])
    assert of_type(actions, Fetch) == [Fetch(2)]


def test_rejected_job_definitions_are_reported_failed() -> None:
    scheduler = started(1)
    bad = JobRecord(9)
    bad.fail(ErrorCode.NOTSAMELENGTH, "fsize has 2 entries")
    actions = scheduler.handle(0.0, [WorkRequested(1), JobsFetched((), (bad,))])
    assert Report(bad, final=True) in actions


def test_looping_report_makes_rank_zero_kill_the_job_once() -> None:
    scheduler = started(1)
    scheduler.handle(0.0, [WorkRequested(1), JobsFetched((spec(5),))])
    scheduler.handle(1.0, [JobProgress(1, JobRecord(5, JobState.RUNNING))])
    assert not of_type(scheduler.handle(100.0, [ReportReceived(1, report(5, 100.0, last_activity=50.0))]), Kill)
    actions = scheduler.handle(8000.0, [ReportReceived(1, report(5, 8000.0, last_activity=50.0))])
    assert [(k.rank, k.panda_id, k.code) for k in of_type(actions, Kill)] == [(1, 5, ErrorCode.LOOPINGJOB)]
    assert not of_type(scheduler.handle(8010.0, [ReportReceived(1, report(5, 8010.0, last_activity=50.0))]), Kill)


def test_memory_over_the_job_limit_is_killed() -> None:
    scheduler = started(1)
    scheduler.handle(0.0, [WorkRequested(1), JobsFetched((spec(6, minRamCount=100),))])
    actions = scheduler.handle(5.0, [ReportReceived(1, report(6, 5.0, pss=10_000_000))])
    assert [k.code for k in of_type(actions, Kill)] == [ErrorCode.PAYLOADEXCEEDMAXMEM]


def test_job_max_walltime_is_enforced() -> None:
    scheduler = started(1)
    scheduler.handle(0.0, [WorkRequested(1), JobsFetched((spec(7, maxWalltime=60),))])
    scheduler.handle(1.0, [JobProgress(1, JobRecord(7, JobState.RUNNING))])
    assert not of_type(scheduler.handle(50.0, [RankAlive(1)]), Kill)
    assert [k.code for k in of_type(scheduler.handle(62.0, [RankAlive(1)]), Kill)] == [ErrorCode.REACHEDMAXTIME]


def test_walltime_guard_stops_every_rank_and_abandons_what_was_not_started() -> None:
    scheduler = started(2, deadline=1000.0, margin=100.0)
    scheduler.handle(0.0, [WorkRequested(1), WorkRequested(2)])
    scheduler.handle(1.0, [JobsFetched((spec(1), spec(2)))])
    actions = scheduler.handle(901.0, [RankAlive(1), RankAlive(2)])
    assert sorted(s.rank for s in of_type(actions, StopRank)) == [1, 2]
    assert {s.code for s in of_type(actions, StopRank)} == {ErrorCode.REACHEDMAXTIME}
    assert of_type(actions, Abandon)
    assert not of_type(actions, Fetch)


def test_a_job_that_cannot_finish_before_the_guard_is_not_started() -> None:
    scheduler = started(1, deadline=1000.0, margin=100.0)
    scheduler.handle(0.0, [WorkRequested(1)])
    actions = scheduler.handle(500.0, [RankAlive(1), JobsFetched((spec(3, maxWalltime=600),))])
    assert not of_type(actions, Assign)
    assert [r.record.pilot_error_code for r in of_type(actions, Report)] == [ErrorCode.REACHEDMAXTIME]


def test_a_silent_rank_is_lost_and_its_job_failed() -> None:
    scheduler = started(2, lost_after=30.0)
    scheduler.handle(0.0, [WorkRequested(1), WorkRequested(2)])
    scheduler.handle(0.0, [JobsFetched((spec(1), spec(2)))])
    actions = scheduler.handle(40.0, [RankAlive(2)])
    failed = [r.record for r in of_type(actions, Report) if r.final]
    assert [(r.panda_id, r.pilot_error_code, r.rank) for r in failed] == [(1, ErrorCode.EXCEEDEDMAXWAITTIME, 1)]
    assert "rank 1 stopped reporting" in failed[0].pilot_error_diag
    assert 2 in scheduler.jobs


def test_signal_stops_with_its_code() -> None:
    scheduler = started(1)
    scheduler.handle(0.0, [WorkRequested(1), JobsFetched((spec(1),))])
    actions = scheduler.handle(1.0, [StopRequested(ErrorCode.SIGTERM, "pilot received SIGTERM")])
    assert of_type(actions, StopRank) == [StopRank(1, ErrorCode.SIGTERM, "pilot received SIGTERM")]
    assert not scheduler.handle(2.0, [StopRequested(ErrorCode.SIGTERM, "again")])  # stop is idempotent


def test_server_kill_and_debug_commands() -> None:
    scheduler = started(1)
    scheduler.handle(0.0, [WorkRequested(1), JobsFetched((spec(1),))])
    actions = scheduler.handle(1.0, [ServerCommand(1, "debug")])
    assert actions and actions[0].on is True
    actions = scheduler.handle(2.0, [ServerCommand(1, "tobekilled")])
    assert [k.code for k in of_type(actions, Kill)] == [ErrorCode.PANDAKILL]
    assert not scheduler.handle(3.0, [ServerCommand(99, "tobekilled")])


def test_heartbeats_follow_the_configured_interval() -> None:
    scheduler = started(1, heartbeat=100.0)
    scheduler.handle(0.0, [WorkRequested(1), JobsFetched((spec(1),))])
    assert not [a for a in scheduler.handle(50.0, [RankAlive(1)]) if isinstance(a, Report)]
    beats = [a for a in scheduler.handle(101.0, [RankAlive(1)]) if isinstance(a, Report)]
    assert len(beats) == 1 and not beats[0].final
