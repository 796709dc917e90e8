"""The event-range messages between rank 0 and a worker rank, as MPI carries them (pickled), and the
worker's batch path for ranges: what arrives must be exactly what was sent, and a range rank 0 has
already checked is not parsed again on the worker (counted, not timed)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest

from hpcpilot.config import SiteConfig
from hpcpilot.eventservice.link import NoMoreRanges, RangeLink
from hpcpilot.monitor.metrics import limits_for_job
from hpcpilot.protocol import AssignJob, EventRanges, RangeReport
from hpcpilot.records import EventRange, EventRangeUpdate, JobSpec
from hpcpilot.states import EventRangeStatus
from tests.pilotrun import make_job


def _wire(i: int, **extra: object) -> dict[str, object]:
    return {"eventRangeID": f"7-50-1-{i}-1", "startEvent": i, "lastEvent": i + 9, "LFN": "EVNT.pool.root.1",
            "GUID": "G-1", "scope": "mc23", **extra}


def _over_mpi(message: object) -> object:
    """What mpi4py's send/recv do with a message: pickle it with the highest protocol and load it."""
    return pickle.loads(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


@pytest.fixture
def from_wire_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every EventRange.from_wire call from now on (the check rank 0 makes when it leases a range)."""
    calls: list[object] = []
    original = EventRange.from_wire.__func__  # type: ignore[attr-defined]

    def counting(cls: type[EventRange], wire: object) -> EventRange:
        calls.append(wire)
        return original(cls, wire)

    monkeypatch.setattr(EventRange, "from_wire", classmethod(counting))
    yield calls


def test_a_range_report_arrives_with_every_field_of_every_outcome() -> None:
    outcomes = (EventRangeUpdate("7-50-1-1-1", EventRangeStatus.FINISHED, cpu_time=1.25, wall_time=2.5,
                                 output="/w/rank1/out", fsize=123, adler32="0a1b2c3d"),
                EventRangeUpdate("7-50-1-2-1", EventRangeStatus.FAILED, 1220, "payload died"),
                EventRangeUpdate("7-50-1-3-1", EventRangeStatus.FATAL, 1228, "ERR_FATAL"))
    report = RangeReport(rank=3, panda_id=50, outcomes=outcomes, want=32)
    received = _over_mpi(report)
    assert received == report
    assert isinstance(received, RangeReport)
    assert [type(o.status) for o in received.outcomes] == [EventRangeStatus] * 3
    assert _over_mpi(RangeReport(1, 50)) == RangeReport(1, 50)  # a bare request: no outcomes


def test_dealt_ranges_arrive_parsed_with_their_extra_keys_and_are_not_checked_again(
        from_wire_calls: list[object]) -> None:
    ranges = (EventRange.from_wire(_wire(1)), EventRange.from_wire(_wire(2, PFN="/lustre/f", numEvents=10)))
    from_wire_calls.clear()  # rank 0's own checks, when it leased them
    received = _over_mpi(EventRanges(50, ranges, no_more=True))
    assert isinstance(received, EventRanges) and received.no_more and received.panda_id == 50
    assert [r.to_wire() for r in received.ranges] == [_wire(1), _wire(2, PFN="/lustre/f", numEvents=10)]
    link = RangeLink(rank=1, panda_id=50, per_request=4)
    link.deliver(received.ranges, received.no_more)
    assert [r.event_range_id for r in link.take_all(0)] == ["7-50-1-1-1", "7-50-1-2-1"]
    assert from_wire_calls == []  # the worker parsed nothing again


def test_a_getevent_ranges_dict_given_to_the_link_is_still_checked(from_wire_calls: list[object]) -> None:
    link = RangeLink(rank=1, panda_id=50, per_request=4)
    link.deliver([_wire(1)], no_more=False)
    assert len(from_wire_calls) == 1
    with pytest.raises(Exception, match="before it starts"):
        link.deliver([{**_wire(2), "lastEvent": 0}], no_more=False)


def test_take_all_empties_the_buffer_and_done_all_reports_each_outcome_once() -> None:
    link = RangeLink(rank=2, panda_id=50, per_request=4)
    link.start()
    assert link.pump() is not None  # the first request
    assert link.take_all(0) == []  # nothing arrived yet
    link.deliver([_wire(i) for i in range(4)], no_more=False)
    taken = link.take_all(0)
    assert len(taken) == 4 and link.take_all(0) == []
    link.done_all(EventRangeUpdate(r.event_range_id, EventRangeStatus.FINISHED) for r in taken)
    report = link.pump()
    assert report is not None and report.want == 4  # the buffer is empty: the next request goes with them
    assert [o.event_range_id for o in report.outcomes] == [r.event_range_id for r in taken]
    assert link.pump(final=True) is None  # each outcome went once
    link.deliver([], no_more=True)
    with pytest.raises(NoMoreRanges):
        link.take_all(0)


def test_a_job_travels_to_its_rank_as_rank_0_parsed_it_with_its_limits() -> None:
    """AssignJob carries the parsed JobSpec and the limits rank 0 enforces; the worker parses nothing again."""
    spec = JobSpec.from_wire({**make_job(77, "true", ["o.txt"]), "minRamCount": 3000, "coreCount": 4,
                              "unknownField": {"nested": [1, 2]}})
    limits = limits_for_job(spec.min_ram_count, spec.core_count, spec.looping_check, SiteConfig().monitor)
    sent = AssignJob(spec, limits, stage_in=False)
    received = _over_mpi(sent)
    assert isinstance(received, AssignJob)
    assert received == sent and dict(received.job.wire) == dict(spec.wire)
    assert received.job.inputs == spec.inputs and received.limits.memory_kb == limits.memory_kb > 0
    with pytest.raises(TypeError):  # the definition stays read-only on the worker
        received.job.wire["PandaID"] = 1  # type: ignore[index]
