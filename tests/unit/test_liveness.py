"""Liveness is about ranks, not jobs: rank 0's lost-rank decisions through the pure scheduler.

Every rank sends a sign of life each report interval, with or without work; a rank is lost only
when that stops, whatever it was doing; a stop reaches lost ranks too; work that no rank is left
to run is failed at once instead of waiting for ever.
"""

from __future__ import annotations

from hpcpilot.config import load_config
from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice.book import (
    BundleStaged,
    CloseEsJob,
    DealRanges,
    EsJobClosed,
    FetchRanges,
    MakeBundle,
    RangesFetched,
    RangesReported,
    ReportRanges,
)
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.scheduler import (
    Assign,
    Fetch,
    Finished,
    JobEnded,
    JobProgress,
    JobsFetched,
    RankAlive,
    RankReady,
    RankStopped,
    Report,
    Scheduler,
    SchedulerPolicy,
    SendNoMoreWork,
    StopRank,
    StopRequested,
    WorkRequested,
)
from hpcpilot.sources import OutputBundle
from hpcpilot.states import EventRangeStatus, JobState
from tests.pilotrun import make_job

CONFIG = load_config(None, {"eventservice": {"report_interval": 5.0, "ranges_per_request": 2}}, environ={})
LOST = int(ErrorCode.EXCEEDEDMAXWAITTIME)
ES_ID = 50


def scheduler(ranks: int = 2, **policy: object) -> Scheduler:
    settings = {"lost_after": 10.0, "fetch_retry": 5.0, "startup_timeout": 5.0, **policy}
    s = Scheduler(list(range(1, ranks + 1)), CONFIG, SchedulerPolicy(**settings))  # type: ignore[arg-type]
    s.handle(0.0, [RankReady(r, True) for r in s.ranks] + [WorkRequested(r) for r in s.ranks])
    return s


def job(panda_id: int) -> JobSpec:
    return JobSpec.from_wire(make_job(panda_id, "true", ["o.txt"]))


def es_job() -> JobSpec:
    return JobSpec.from_wire(make_job(ES_ID, "x", eventService="True"))


def ranges(n: int) -> tuple[EventRange, ...]:
    return tuple(EventRange.from_wire({"eventRangeID": f"7-{ES_ID}-1-{i}-1", "startEvent": i, "lastEvent": i,
                                       "LFN": "E", "GUID": "G", "scope": "s"}) for i in range(n))


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def final_codes(actions: list) -> list[tuple[int, int]]:
    return [(r.record.panda_id, r.record.pilot_error_code) for r in of(actions, Report) if r.final]


def alive_until(s: Scheduler, start: float, end: float, ranks: tuple[int, ...], step: float = 2.0) -> list:
    """Every rank in ``ranks`` sends its alive signal every ``step`` s from ``start`` to ``end``."""
    actions, t = [], start
    while t <= end:
        actions += s.handle(t, [RankAlive(r) for r in ranks])
        t += step
    return actions


def test_idle_ranks_that_send_the_alive_signal_are_not_lost_however_long_they_wait() -> None:
    s = scheduler(2)  # asked for 2 jobs at 0
    s.handle(1.0, [JobsFetched((), unavailable=True)])  # a server outage: ask again 5 s later
    waited = alive_until(s, 2.0, 31.0, (1, 2))  # three times the 10 s limit, with no work
    assert not of(waited, StopRank) and not final_codes(waited)
    assert of(waited, Fetch) == [Fetch(2)]  # the second request hangs until the server is back
    actions = s.handle(32.0, [JobsFetched((job(1), job(2)))])
    assert sorted((a.rank, a.job.panda_id) for a in of(actions, Assign)) == [(1, 1), (2, 2)]
    actions = s.handle(33.0, [JobEnded(r, JobRecord(r, JobState.FINISHED)) for r in (1, 2)])
    assert final_codes(actions) == [(1, 0), (2, 0)]


def test_a_rank_whose_signal_stops_is_lost_told_to_stop_and_given_no_work() -> None:
    s = scheduler(2)
    actions = alive_until(s, 2.0, 12.0, (1,))  # rank 2 idle and silent
    assert of(actions, StopRank) == [StopRank(2, LOST, "rank 2 stopped reporting for 12 s")]
    actions = s.handle(12.5, [JobsFetched((job(1), job(2)))])
    assert [(a.rank, a.job.panda_id) for a in of(actions, Assign)] == [(1, 1)]
    actions = alive_until(s, 14.0, 18.0, (1,)) + s.handle(18.5, [WorkRequested(2)])  # a lost rank stays lost
    assert not of(actions, Assign) and 2 not in s.ranks.idle


def test_a_busy_rank_whose_signal_stops_is_lost_with_its_job() -> None:
    s = scheduler(2)
    s.handle(1.0, [JobsFetched((job(1), job(2)))])
    actions = alive_until(s, 2.0, 12.0, (2,))
    assert final_codes(actions) == [(1, LOST)] and of(actions, StopRank)[0].rank == 1
    assert 2 in s.jobs


def test_lost_ranks_are_told_to_stop_and_a_stop_does_not_wait_for_a_fetch_under_way() -> None:
    s = scheduler(3)
    # Fetch(3) is under way since 0 (the server does not answer)
    actions = alive_until(s, 2.0, 12.0, (1, 2))  # rank 3 is lost meanwhile, and told to stop
    assert of(actions, StopRank) == [StopRank(3, LOST, "rank 3 stopped reporting for 12 s")]
    actions = s.handle(13.0, [StopRequested(int(ErrorCode.SIGTERM), "pilot received SIGTERM")])
    assert sorted(a.rank for a in of(actions, SendNoMoreWork)) == [1, 2]  # at once, fetch or not
    actions = s.handle(14.0, [RankStopped(1), RankStopped(2)])
    assert not of(actions, Finished)  # the fetch must come back: what it leased gets reported
    actions = s.handle(15.0, [JobsFetched((job(7),))])
    assert final_codes(actions) == [(7, int(ErrorCode.SIGTERM))]
    assert of(actions, Finished)


def test_ranks_that_fail_their_check_or_never_answer_are_told_to_leave() -> None:
    s = Scheduler([1, 2, 3], CONFIG, SchedulerPolicy(startup_timeout=5.0))
    actions = s.handle(0.0, [RankReady(1, True), RankReady(2, False, ("no space",))])
    assert of(actions, SendNoMoreWork) == [SendNoMoreWork(2)]
    actions = s.handle(6.0, [RankAlive(1)])
    assert [(a.rank, a.code) for a in of(actions, StopRank)] == [(3, LOST)]


def test_every_rank_lost_fails_the_queued_jobs_and_ends_the_pilot() -> None:
    s = scheduler(1)
    actions = s.handle(11.0, [JobsFetched((job(1), job(2)))])  # rank 1 went silent at 0
    assert sorted(final_codes(actions)) == [(1, LOST), (2, LOST)]
    assert of(actions, Finished)


# ---- event service ----------------------------------------------------------------------------


def es_open(s: Scheduler, leader: int, now: float) -> None:
    running = JobRecord(ES_ID, state=JobState.RUNNING, rank=leader)
    actions = s.handle(now, [JobProgress(leader, running)])
    assert of(actions, FetchRanges)


def test_an_es_job_whose_members_are_all_lost_fails_its_queued_ranges_at_once() -> None:
    s = scheduler(2)
    actions = s.handle(1.0, [JobsFetched((es_job(),))])
    assert [(a.rank, a.stage_in) for a in of(actions, Assign)] == [(1, True)]
    es_open(s, 1, 2.0)  # rank 2 joins
    s.handle(2.5, [RangesFetched(ES_ID, ranges(6)), RangesReported(1, ES_ID, (), 2), RangesReported(2, ES_ID, (), 2)])
    assert len(s.es[ES_ID].queue) == 2 and len(s.es[ES_ID].dealt) == 4
    actions = s.handle(13.0, [])  # both ranks went silent
    assert sorted(a.rank for a in of(actions, StopRank)) == [1, 2]
    failed = [u for r in of(actions, ReportRanges) for u in r.updates]
    assert len(failed) == 6 and all(u.status == EventRangeStatus.FAILED and u.error_code == LOST for u in failed)
    assert s.es[ES_ID].fetching and not of(actions, CloseEsJob)  # a lease under way must come back first
    late = tuple(EventRange.from_wire({"eventRangeID": f"7-{ES_ID}-1-{i}-1", "startEvent": i, "lastEvent": i,
                                       "LFN": "E", "GUID": "G", "scope": "s"}) for i in range(6, 8))
    actions = s.handle(13.5, [RangesFetched(ES_ID, late)])
    failed = [u for r in of(actions, ReportRanges) for u in r.updates]
    assert sorted(u.event_range_id for u in failed) == [r.event_range_id for r in late]
    close = of(actions, CloseEsJob)
    assert len(close) == 1 and close[0].record.pilot_error_code == LOST
    actions = s.handle(14.0, [EsJobClosed(close[0].record)])
    assert final_codes(actions) == [(ES_ID, LOST)] and of(actions, Finished)


def test_an_es_job_that_lost_its_only_member_gets_members_again() -> None:
    s = scheduler(3)
    s.handle(1.0, [JobsFetched((job(1), job(2), es_job()))])
    assert s.es[ES_ID].leader == 3
    es_open(s, 3, 2.0)
    s.handle(2.5, [RangesFetched(ES_ID, ranges(6)), RangesReported(3, ES_ID, (), 2)])
    actions = alive_until(s, 3.0, 13.0, (1, 2))  # rank 3 is lost; 1 and 2 are busy with normal jobs
    book = s.es[ES_ID]
    assert not book.members and not book.queue and not book.dealt  # failed at once, not kept for ever
    assert len(book.reported) == 6 and not of(actions, CloseEsJob)
    assert not of(alive_until(s, 14.0, 20.0, (1, 2)), FetchRanges)  # nobody to process them: no lease
    actions = s.handle(21.0, [JobEnded(1, JobRecord(1, JobState.FINISHED)), WorkRequested(1), RankAlive(2)])
    assert [(a.rank, a.stage_in) for a in of(actions, Assign)] == [(1, False)]
    assert of(s.handle(21.5, [RankAlive(2)]), FetchRanges)


def test_an_es_job_whose_leader_is_lost_while_staging_fails_and_frees_the_others() -> None:
    s = scheduler(2)
    s.handle(1.0, [JobsFetched((es_job(),))])  # rank 2 waits for the stage-in on rank 1
    actions = alive_until(s, 2.0, 12.0, (2,))
    close = of(actions, CloseEsJob)
    assert len(close) == 1 and close[0].record.pilot_error_code == LOST
    assert of(actions, Fetch) == [Fetch(1)]  # rank 2 no longer waits for a job that will never open
    assert final_codes(s.handle(12.5, [EsJobClosed(close[0].record)])) == [(ES_ID, LOST)]


def test_the_walltime_guard_cutting_an_es_job_fails_it_with_reachedmaxtime() -> None:
    s = scheduler(2, deadline=100.0, margin=10.0, lost_after=60.0)  # guard at 90
    s.handle(1.0, [JobsFetched((es_job(),))])
    es_open(s, 1, 2.0)
    s.handle(2.5, [RangesFetched(ES_ID, ranges(40)), RangesReported(1, ES_ID, (), 2),
                   RangesReported(2, ES_ID, (), 2)])
    book = s.es[ES_ID]

    def finish_held(rank: int, now: float, wall: float, want: int) -> list:
        held = [rid for rid, (owner, _r) in book.dealt.items() if owner == rank]
        done = tuple(EventRangeUpdate(rid, EventRangeStatus.FINISHED, output=f"/o/{rid}", wall_time=wall)
                     for rid in held)
        return s.handle(now, [RangesReported(rank, ES_ID, done, want)])

    for rank in (1, 2):  # ranges take 40 s, 40 s are left: one more each
        assert [len(d.ranges) for d in of(finish_held(rank, 50.0, 40.0, 2), DealRanges)] == [1]
    for rank in (1, 2):  # 10 s left: no more ranges for ranks that still hold one
        assert [d.no_more for d in of(s.handle(80.0, [RangesReported(rank, ES_ID, (), 2)]), DealRanges)] == [True]
    for rank in (1, 2):  # each finishes what it holds and leaves; idle again, it joins the job again
        finish_held(rank, 85.0, 30.0, 0)
        actions = s.handle(85.0, [JobEnded(rank, JobRecord(ES_ID, state=JobState.FINISHED, rank=rank)),
                                  WorkRequested(rank)])
        assert [(a.rank, a.stage_in) for a in of(actions, Assign)] == [(rank, False)]
    actions = s.handle(86.0, [RangesReported(1, ES_ID, (), 2)])  # not one range fits: the guard cuts the job
    assert [d.no_more for d in of(actions, DealRanges)] == [True]
    failed = [u for r in of(actions, ReportRanges) for u in r.updates if u.status == EventRangeStatus.FAILED]
    assert failed and all(u.error_code == int(ErrorCode.REACHEDMAXTIME) for u in failed)
    actions = []
    for rank in (1, 2):
        actions += s.handle(87.0, [JobEnded(rank, JobRecord(ES_ID, state=JobState.FINISHED, rank=rank))])
    bundle = of(actions, MakeBundle)[0]  # the last finished ranges, staged out as one zip
    zipped = OutputBundle("z.zip", 10, "00000001", bundle.num_events, -1, 1000,
                          range_ids=tuple(u.event_range_id for u in bundle.updates))
    close = of(s.handle(88.0, [BundleStaged(ES_ID, bundle.updates, zipped)]), CloseEsJob)
    record = close[0].record
    assert record.n_events == bundle.num_events > 0  # what finished counts, but the job was cut: it fails
    assert record.state == JobState.FAILED and record.pilot_error_code == int(ErrorCode.REACHEDMAXTIME)
