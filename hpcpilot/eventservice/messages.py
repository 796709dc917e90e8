"""What the scheduler hands rank 0's event-service ledger (events) and what the ledger asks of it (actions).

Plain frozen records, so the ledger stays pure: it never calls the source, MPI or the file system,
it answers with one of these and the scheduler and the controller carry it out.  ``failed`` is
here too because the worker side reports ranges failed in the same form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import OutputBundle
from hpcpilot.states import EventRangeStatus

MAX_RANGES_PER_FETCH = 1000
"""nRanges asked in one getEventRanges call (the server caps a call at 100000 events)."""


def failed(range_id: str, code: int, diag: str) -> EventRangeUpdate:
    return EventRangeUpdate(range_id, EventRangeStatus.FAILED, int(code), diag)


# ---- events (into the scheduler) ------------------------------------------------------

@dataclass(frozen=True)
class RangesFetched:
    """The source's answer to FetchRanges: parsed ranges, unusable ones (already failed), outage."""

    panda_id: int
    ranges: tuple[EventRange, ...]
    bad: tuple[EventRangeUpdate, ...] = ()
    unavailable: bool = False


@dataclass(frozen=True)
class RangesReported:
    """A rank's range outcomes (``RangeOutcomes`` as they come from a rank: columns), and how many more
    ranges it wants."""

    rank: int
    panda_id: int
    outcomes: Sequence[EventRangeUpdate]
    want: int


@dataclass(frozen=True)
class BundleStaged:
    """A bundle was written and staged out (``bundle``), or could not be (``error``)."""

    panda_id: int
    updates: tuple[EventRangeUpdate, ...]
    bundle: OutputBundle | None
    error: tuple[int, str] | None = None


@dataclass(frozen=True)
class EsJobClosed:
    """The job's log was staged out; ``record`` is the final record to report."""

    record: JobRecord


# ---- actions (out of the scheduler) ------------------------------------------------------


@dataclass(frozen=True)
class FetchRanges:
    job: JobSpec
    n: int


@dataclass(frozen=True)
class DealRanges:
    rank: int
    panda_id: int
    ranges: tuple[EventRange, ...]
    no_more: bool


@dataclass(frozen=True)
class MakeBundle:
    """Zip these finished outputs, stage the zip out, answer with BundleStaged."""

    job: JobSpec
    updates: tuple[EventRangeUpdate, ...]
    num_events: int


@dataclass(frozen=True)
class ReportRanges:
    """Statuses for the source (``RangeOutcomes`` when they come from the outbox: columns)."""

    job: JobSpec
    updates: Sequence[EventRangeUpdate]
    bundle: OutputBundle | None = None


@dataclass(frozen=True)
class CloseEsJob:
    """Stage the job's log out and answer with EsJobClosed carrying ``record``."""

    job: JobSpec
    record: JobRecord
