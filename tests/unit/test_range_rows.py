"""The run record's event-range rows as rank 0 writes them from range reports (``range_row``,
``RunRecorder.add_range_batches``): the direct formatting of a finished range must give exactly the
text of the general path (``to_wire`` plus the sorted-key encoder), and every outcome keeps its
``recordedAt`` and ``nEvents``."""

from __future__ import annotations

import json

import h5py
import pytest

from hpcpilot.records import EventRangeUpdate, RangeOutcomes
from hpcpilot.runrecord import _ENCODER, RunRecorder, batch_rows, range_row
from hpcpilot.states import EventRangeStatus

T0 = 1_700_000_000.123456


def general(outcome: EventRangeUpdate, n_events: int | None, stamp: float) -> str:
    """The general path, written out here so that the fast one is checked against it."""
    row = outcome.to_wire()
    if n_events is not None:
        row["nEvents"] = n_events
    row["recordedAt"] = stamp
    return _ENCODER.encode(row)


@pytest.mark.parametrize("outcome", [
    EventRangeUpdate("Range-1-2-3", EventRangeStatus.FINISHED),
    EventRangeUpdate("Range-1-2-4", EventRangeStatus.FINISHED, cpu_time=1.23456789, wall_time=2.0),
    EventRangeUpdate('quote"and\\backslash-é', EventRangeStatus.FINISHED, cpu_time=0.0004),
    EventRangeUpdate("Range-9", EventRangeStatus.FINISHED, cpu_time=float("nan")),
    EventRangeUpdate("Range-5", EventRangeStatus.FAILED, error_code=1220, error_diag="payload died"),
    EventRangeUpdate("Range-6", EventRangeStatus.FATAL),
])
@pytest.mark.parametrize("n_events", [1, 250, None])
def test_a_row_is_the_general_text_whatever_the_path(outcome: EventRangeUpdate, n_events: int | None) -> None:
    assert range_row(outcome, n_events, T0) == general(outcome, n_events, T0)


def test_batches_keep_every_outcome_with_its_time_and_events(tmp_path) -> None:
    path = tmp_path / "run.h5"
    first = (EventRangeUpdate("a", EventRangeStatus.FINISHED, cpu_time=0.5),
             EventRangeUpdate("b", EventRangeStatus.FAILED, error_code=1220))
    second = (EventRangeUpdate("c", EventRangeStatus.FINISHED),)
    with RunRecorder(path) as recorder:
        recorder.add_range_batches({(3, 77): [(T0, first, [4, None]), (T0 + 1, second, [2])],
                                    (4, 77): [(T0 + 2, second, [2])]})
        recorder.add_range_batches({(3, 77): []})
    with h5py.File(path, "r") as f:
        rows = [json.loads(row) for row in f["ranks/3/jobs/77/event_ranges"].asstr()[:]]
        other = list(f["ranks/4/jobs/77/event_ranges"].asstr()[:])
    assert [row["eventRangeID"] for row in rows] == ["a", "b", "c"]
    assert [row["recordedAt"] for row in rows] == [T0, T0, T0 + 1]
    assert [row.get("nEvents") for row in rows] == [4, None, 2]
    assert rows[0]["cpuConsumptionTime"] == 0.5 and rows[1]["errorCode"] == 1220
    assert [json.loads(row)["recordedAt"] for row in other] == [T0 + 2]


def test_a_report_s_rows_from_its_columns_are_the_rows_of_each_outcome() -> None:
    """``batch_rows`` reads a report's columns (``RangeOutcomes``): each row must be ``range_row``'s text."""
    outcomes = (EventRangeUpdate("Range-1-2-3", EventRangeStatus.FINISHED),
                EventRangeUpdate("Range-1-2-4", EventRangeStatus.FINISHED, cpu_time=1.23456789, wall_time=2.0),
                EventRangeUpdate('quote"and\\backslash-é', EventRangeStatus.FINISHED, cpu_time=0.0004),
                EventRangeUpdate("Range-9", EventRangeStatus.FINISHED, cpu_time=float("nan")),
                EventRangeUpdate("Range-10", EventRangeStatus.FINISHED, cpu_time=-0.5),
                EventRangeUpdate("Range-5", EventRangeStatus.FAILED, error_code=1220, error_diag="payload died"),
                EventRangeUpdate("Range-6", EventRangeStatus.FATAL))
    sizes = [1, 250, None, 3, 7, None, 2]
    expected = [range_row(outcome, n, T0) for outcome, n in zip(outcomes, sizes, strict=True)]
    assert batch_rows(RangeOutcomes.of(outcomes), sizes, T0) == expected
    assert batch_rows(outcomes, sizes, T0) == expected
