"""Event-service pieces without MPI: the AthenaMP message parser, the worker's range mailbox, and
rank 0's ledger driven through the pure scheduler (events in, actions out)."""

from __future__ import annotations

import pytest

from hpcpilot.config import SiteConfig, load_config
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
from hpcpilot.eventservice.channel import (
    ChannelError,
    PayloadFailure,
    PayloadOutput,
    PayloadReady,
    parse_message,
    range_message,
)
from hpcpilot.eventservice.link import NoMoreRanges, RangeLink
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.scheduler import (
    Assign,
    JobEnded,
    JobProgress,
    JobsFetched,
    Kill,
    RankReady,
    Report,
    Scheduler,
    SchedulerPolicy,
    ServerCommand,
    StopRank,
    StopRequested,
    WorkRequested,
)
from hpcpilot.sources import OutputBundle
from hpcpilot.states import EventRangeStatus, JobState
from tests.pilotrun import make_job

# ---- the AthenaMP messages ----------------------------------------------------------------


def test_parse_ready_output_and_errors() -> None:
    assert parse_message("Ready for events\n") == PayloadReady()
    out = parse_message("/w/r1/a.pool.root,ID:7-1-1-3-1,CPU:1.5,WALL:2.25")
    assert out == PayloadOutput("/w/r1/a.pool.root", "7-1-1-3-1", 1.5, 2.25)
    failed = parse_message("ERR_ATHENAMP_PROCESS 7-1-1-4-1: segfault in G4")
    assert isinstance(failed, PayloadFailure)
    assert (failed.range_id, failed.status, failed.code) == ("7-1-1-4-1", EventRangeStatus.FAILED, 1220)
    fatal = parse_message("ERR_FATAL 7-1-1-5-1: corrupt input")
    assert isinstance(fatal, PayloadFailure) and fatal.status == EventRangeStatus.FATAL and fatal.code == 1228
    coded = parse_message("ERR_1305 7-1-1-6-1: out of memory")
    assert isinstance(coded, PayloadFailure) and coded.code == 1305


def test_parse_error_embeds_the_range_json() -> None:
    text = 'ERR_ATHENAMP_PARSE [{"eventRangeID": "7-1-1-9-1", "startEvent": 1}]: cannot parse'
    message = parse_message(text)
    assert isinstance(message, PayloadFailure) and message.range_id == "7-1-1-9-1"


@pytest.mark.parametrize("text", ["/w/out.root", "/w/out.root,CPU:1", "/w/out.root,ID:1,CPU:fast", "ERR_X",
                                  "/w/out.root,ID"])
def test_bad_messages_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ChannelError):
        parse_message(text)


def test_range_message_is_a_json_array_of_one_range() -> None:
    assert range_message({"eventRangeID": "1-2-3-4-5"}) == '[{"eventRangeID": "1-2-3-4-5"}]'


# ---- the worker's mailbox ---------------------------------------------------------------

def _wire(i: int, panda_id: int = 50) -> dict[str, object]:
    return {"eventRangeID": f"7-{panda_id}-1-{i}-1", "startEvent": i, "lastEvent": i, "LFN": "E", "GUID": "G",
            "scope": "s"}


def test_link_requests_before_the_buffer_is_empty_and_batches_outcomes() -> None:
    link = RangeLink(rank=3, panda_id=50, per_request=4)
    assert link.pump() is None  # not started: asks for nothing
    link.start()
    request = link.pump()
    assert request is not None and request.want == 4 and request.outcomes == ()
    assert link.pump() is None  # one request outstanding at a time
    link.deliver([_wire(i) for i in range(4)], no_more=False)
    first = link.take(0)
    assert first is not None and first.event_range_id == "7-50-1-0-1"
    link.take(0)
    link.take(0)  # one left: below half the batch, so the next request goes out now
    link.done(EventRangeUpdate("7-50-1-0-1", EventRangeStatus.FINISHED))
    report = link.pump()
    assert report is not None and report.want == 4 and len(report.outcomes) == 1
    link.deliver([], no_more=True)
    assert link.take(0) is not None
    with pytest.raises(NoMoreRanges):
        link.take(0)


def test_link_fails_ranges_that_arrive_after_the_job_stopped_here() -> None:
    link = RangeLink(rank=1, panda_id=50, per_request=2)
    link.start()
    link.pump()
    link.deliver([_wire(1)], no_more=False)
    assert link.give_back(lambda rid: EventRangeUpdate(rid, EventRangeStatus.FAILED, 1201)) == 1
    link.deliver([_wire(2)], no_more=False)  # was already on its way
    report = link.pump(final=True)
    assert report is not None
    assert sorted(o.event_range_id for o in report.outcomes) == ["7-50-1-1-1", "7-50-1-2-1"]
    assert all(o.status == EventRangeStatus.FAILED for o in report.outcomes)


# ---- rank 0's ledger through the scheduler --------------------------------------------------

PANDA_ID = 50


def _config(**es: object) -> SiteConfig:
    settings = {"report_interval": 5.0, "bundle_events": 3, "ranges_per_request": 2, **es}
    return load_config(None, {"eventservice": settings}, environ={})


def _scheduler(ranks: int = 3, deadline: float | None = None, **es: object) -> Scheduler:
    policy = SchedulerPolicy(deadline=deadline, margin=10.0, lost_after=60.0, startup_timeout=5.0)
    return Scheduler(list(range(1, ranks + 1)), _config(**es), policy)


def _ranges(ids: range) -> tuple[EventRange, ...]:
    return tuple(EventRange.from_wire(_wire(i)) for i in ids)


def _of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def _opened(s: Scheduler, now: float = 0.0) -> None:
    """Three ranks ready; the ES job leased, staged in by its first rank, and open."""
    s.handle(now, [RankReady(r, True) for r in s.ranks] + [WorkRequested(r) for r in s.ranks])
    spec = JobSpec.from_wire(make_job(PANDA_ID, "x", eventService="True"))
    actions = s.handle(now, [JobsFetched((spec,))])
    assigns = _of(actions, Assign)
    assert [(a.rank, a.stage_in) for a in assigns] == [(1, True)]  # the others wait for the stage-in
    running = JobRecord(PANDA_ID, state=JobState.RUNNING, rank=1)
    actions = s.handle(now + 1, [JobProgress(1, running)])
    assert [(a.rank, a.stage_in) for a in _of(actions, Assign)] == [(2, False), (3, False)]
    assert _of(actions, FetchRanges)


def test_ranges_are_dealt_to_every_rank_and_reported_exactly_once() -> None:
    s = _scheduler()
    _opened(s)
    actions = s.handle(2, [RangesReported(r, PANDA_ID, (), 2) for r in (1, 2, 3)])
    assert not _of(actions, DealRanges)  # nothing leased yet: the requests wait
    actions = s.handle(2, [RangesFetched(PANDA_ID, _ranges(range(6)))])
    deals = _of(actions, DealRanges)
    assert sorted(d.rank for d in deals) == [1, 2, 3] and all(len(d.ranges) == 2 for d in deals)
    done = [EventRangeUpdate(r.event_range_id, EventRangeStatus.FINISHED, output=f"/o/{r.event_range_id}",
                             wall_time=1.0) for r in deals[0].ranges]
    twice = s.handle(3, [RangesReported(deals[0].rank, PANDA_ID, tuple(done), 0),
                         RangesReported(deals[0].rank, PANDA_ID, tuple(done), 0)])
    assert not _of(twice, MakeBundle)  # 2 events < bundle_events=3, and the duplicate is ignored
    stray = EventRangeUpdate(deals[1].ranges[0].event_range_id, EventRangeStatus.FINISHED, output="/o/x")
    s.handle(3, [RangesReported(deals[0].rank, PANDA_ID, (stray,), 0)])  # not dealt to that rank: ignored
    assert s.es[PANDA_ID].dealt[stray.event_range_id][0] == deals[1].rank


def test_a_bundle_is_made_when_full_and_its_ranges_reported_with_it() -> None:
    s = _scheduler()
    _opened(s)
    s.handle(2, [RangesReported(1, PANDA_ID, (), 2), RangesFetched(PANDA_ID, _ranges(range(4)))])
    s.handle(2, [RangesReported(2, PANDA_ID, (), 2)])
    book = s.es[PANDA_ID]
    held = sorted(book.dealt)
    outcomes = [EventRangeUpdate(rid, EventRangeStatus.FINISHED, output=f"/o/{rid}") for rid in held[:3]]
    actions = s.handle(3, [RangesReported(book.dealt[rid][0], PANDA_ID, (o,), 0) for rid, o in
                           zip(held[:3], outcomes, strict=True)])
    bundles = _of(actions, MakeBundle)
    assert len(bundles) == 1 and bundles[0].num_events == 3
    zipped = OutputBundle("z.zip", 10, "00000001", 3, -1, 1000, range_ids=tuple(held[:3]))
    reports = _of(s.handle(4, [BundleStaged(PANDA_ID, bundles[0].updates, zipped)]), ReportRanges)
    assert len(reports) == 1 and reports[0].bundle == zipped and len(reports[0].updates) == 3


def test_a_failed_bundle_fails_its_ranges_with_the_stageout_code() -> None:
    s = _scheduler(report_interval=0.0)
    _opened(s)
    s.handle(2, [RangesReported(1, PANDA_ID, (), 3), RangesFetched(PANDA_ID, _ranges(range(3)))])
    outcomes = tuple(EventRangeUpdate(r, EventRangeStatus.FINISHED, output=f"/o/{r}") for r in s.es[PANDA_ID].dealt)
    bundle = _of(s.handle(3, [RangesReported(1, PANDA_ID, outcomes, 0)]), MakeBundle)[0]
    actions = s.handle(4, [BundleStaged(PANDA_ID, bundle.updates, None, (1137, "copy failed"))])
    reported = [u for r in _of(actions, ReportRanges) for u in r.updates]
    assert len(reported) == 3 and all(u.status == EventRangeStatus.FAILED and u.error_code == 1137
                                      for u in reported)


def test_walltime_aware_dealing_gives_only_what_can_finish() -> None:
    s = _scheduler(deadline=100.0)  # guard at 90
    _opened(s)
    s.handle(2, [RangesReported(1, PANDA_ID, (), 2), RangesFetched(PANDA_ID, _ranges(range(40)))])
    book = s.es[PANDA_ID]
    slow = tuple(EventRangeUpdate(rid, EventRangeStatus.FAILED, 1220, wall_time=30.0) for rid in list(book.dealt))
    actions = s.handle(60, [RangesReported(1, PANDA_ID, slow, 2)])  # 30 s left, ranges take 30 s: one fits
    deal = _of(actions, DealRanges)
    assert len(deal) == 1 and len(deal[0].ranges) == 1
    actions = s.handle(85, [RangesReported(2, PANDA_ID, (), 2)])  # 5 s left: none fits on any rank
    assert any(d.no_more for d in _of(actions, DealRanges))
    assert book.leasing_stopped
    queued = [u for r in _of(actions, ReportRanges) for u in r.updates]
    assert queued == [] or all(u.status == EventRangeStatus.FAILED for u in queued)


def test_softkill_stops_leasing_but_lets_ranks_finish_what_they_hold() -> None:
    s = _scheduler(report_interval=0.0)
    _opened(s)
    s.handle(2, [RangesReported(1, PANDA_ID, (), 2), RangesFetched(PANDA_ID, _ranges(range(6)))])
    actions = s.handle(3, [ServerCommand(PANDA_ID, "softkill")])
    assert not _of(actions, Kill)
    failed = [u for r in _of(actions, ReportRanges) for u in r.updates]
    assert len(failed) == 4 and all(u.error_code == int(ErrorCode.ESRECOVERABLE) for u in failed)
    held = list(s.es[PANDA_ID].dealt)
    done = tuple(EventRangeUpdate(r, EventRangeStatus.FINISHED) for r in held)
    actions = s.handle(4, [RangesReported(1, PANDA_ID, done, 2)])
    assert _of(actions, DealRanges)[0].no_more


def test_tobekilled_kills_every_rank_of_the_job_and_the_job_fails() -> None:
    s = _scheduler(report_interval=0.0)
    _opened(s)
    actions = s.handle(3, [ServerCommand(PANDA_ID, "tobekilled")])
    assert sorted(k.rank for k in _of(actions, Kill)) == [1, 2, 3]
    late = s.handle(3.5, [RangesFetched(PANDA_ID, _ranges(range(2)))])  # the fetch that was under way
    failed = [u for r in _of(late, ReportRanges) for u in r.updates]
    assert len(failed) == 2 and all(u.error_code == int(ErrorCode.PANDAKILL) for u in failed)
    for rank in (1, 2, 3):
        record = JobRecord(PANDA_ID, rank=rank)
        record.fail(ErrorCode.PANDAKILL, "killed")
        actions = s.handle(4, [JobEnded(rank, record)])
    close = _of(actions, CloseEsJob)
    assert len(close) == 1 and close[0].record.pilot_error_code == int(ErrorCode.PANDAKILL)
    final = _of(s.handle(5, [EsJobClosed(close[0].record)]), Report)
    assert final and final[0].final and PANDA_ID not in s.es


def test_stop_fails_queued_ranges_and_stops_the_ranks() -> None:
    s = _scheduler(report_interval=0.0)
    _opened(s)
    s.handle(2, [RangesReported(1, PANDA_ID, (), 2), RangesFetched(PANDA_ID, _ranges(range(5)))])
    actions = s.handle(3, [StopRequested(1201, "pilot received SIGTERM")])
    assert sorted(a.rank for a in _of(actions, StopRank)) == [1, 2, 3]
    queued = [u for r in _of(actions, ReportRanges) for u in r.updates]
    assert len(queued) == 3 and all(u.error_code == 1201 for u in queued)


def test_an_es_job_with_no_ranges_fails_with_esnoevents() -> None:
    s = _scheduler(report_interval=0.0)
    _opened(s)
    s.handle(2, [RangesFetched(PANDA_ID, ())])
    for rank in (1, 2, 3):
        actions = s.handle(3, [RangesReported(rank, PANDA_ID, (), 2)])
        assert _of(actions, DealRanges)[0].no_more
    for rank in (1, 2, 3):
        actions = s.handle(4, [JobEnded(rank, JobRecord(PANDA_ID, state=JobState.FINISHED, rank=rank))])
    record = _of(actions, CloseEsJob)[0].record
    assert record.pilot_error_code == int(ErrorCode.ESNOEVENTS)


def test_an_es_jobs_cpu_is_the_precise_sum_of_its_ranks():
    """64 ranks that each used 0.4 s report 0 whole seconds each; the job used 25.6 s, and PanDA gets 26."""
    from hpcpilot.eventservice.esrecord import merge_members

    members = []
    for rank in range(1, 65):
        member = JobRecord(7, rank=rank)
        member.cpu_seconds, member.cpu_consumption_time = 0.4, 0
        members.append(member)
    record = JobRecord(7, rank=1)
    merge_members(record, members, leader=1)
    assert abs(record.cpu_seconds - 25.6) < 1e-9
    assert record.cpu_consumption_time == 26
