"""Every message exchanged between rank 0 and the worker ranks, and its MPI tag.

Nothing else in hpcpilot knows a tag number or builds a message dict: controller and worker
code exchange these frozen dataclasses only.  Messages are small and pickled by the
transport; job records travel in their PanDA wire form (``JobRecord.to_summary()``) so that
what rank 0 reports is exactly what the worker measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
from itertools import starmap
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from hpcpilot.config import MonitorConfig
from hpcpilot.monitor.metrics import Limits
from hpcpilot.monitor.samples import MonitorReport, TreeSample
from hpcpilot.records import EventRange, EventRangeUpdate, JobSpec
from hpcpilot.records.outcomes import RangeOutcomes


def lost_after(monitor: MonitorConfig) -> float:
    """Seconds of silence after which one side of the liveness signal gives the other up: rank 0 a
    worker rank (any message counts; an idle rank sends ``Alive`` every report interval), and a
    signalled worker rank its rank 0."""
    return monitor.report_interval * monitor.lost_rank_intervals


class Tag(IntEnum):
    """MPI tags, one per message type."""

    READY = 1
    WORK_REQUEST = 2
    JOB = 3
    NO_MORE_WORK = 4
    JOB_UPDATE = 5
    HEARTBEAT = 6
    JOB_DONE = 7
    KILL_JOB = 8
    STOP = 9
    STOPPED = 10
    WORKER_FAILED = 11
    SET_DEBUG = 12
    ALIVE = 13
    SIGNALLED = 14
    RANGE_REPORT = 15
    EVENT_RANGES = 16
    CLONE_CLAIM = 17
    CLONE_VERDICT = 18
    RELEASE = 19


# ---- worker -> rank 0 -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ready:
    """Start-up check of one rank: rank 0 leases nothing before every rank has answered."""

    rank: int
    host: str
    ok: bool
    problems: tuple[str, ...] = ()
    node: dict[str, Any] = field(default_factory=dict)
    tag = Tag.READY


@dataclass(frozen=True, slots=True)
class WorkRequest:
    """The rank is idle and wants a job."""

    rank: int
    tag = Tag.WORK_REQUEST


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """A job changed state (starting -> running); ``record`` is ``JobRecord.to_summary()``."""

    rank: int
    record: dict[str, Any]
    tag = Tag.JOB_UPDATE


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A monitoring report and the samples taken since the previous one."""

    rank: int
    report: MonitorReport
    samples: tuple[TreeSample, ...] = ()
    debug_tail: str = ""
    job_metrics: str = ""
    tag = Tag.HEARTBEAT


@dataclass(frozen=True, slots=True)
class Alive:
    """The rank's loop is alive: sent every report interval, with or without work."""

    rank: int
    tag = Tag.ALIVE


@dataclass(frozen=True, slots=True)
class Signalled:
    """The rank received a signal: rank 0 winds the whole pilot down with the signal's code."""

    rank: int
    signum: int
    tag = Tag.SIGNALLED


@dataclass(frozen=True, slots=True)
class JobDone:
    """The final record of a job, after stage-out (or failure)."""

    rank: int
    record: dict[str, Any]
    tag = Tag.JOB_DONE


@dataclass(frozen=True, slots=True)
class Stopped:
    """The rank has no job and leaves its loop (answer to NoMoreWork or Stop)."""

    rank: int
    tag = Tag.STOPPED


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """An unexpected exception on a worker, as data naming the rank; its job is failed."""

    rank: int
    host: str
    panda_id: int | None
    error_code: int
    traceback: str
    tag = Tag.WORKER_FAILED


@dataclass(frozen=True, slots=True)
class RangeReport:
    """Event-range outcomes of an event-service job on this rank, and a request for ``want`` more.

    One message does both so that a busy rank costs rank 0 one message per batch of ranges.
    """

    rank: int
    panda_id: int
    outcomes: Sequence[EventRangeUpdate] = ()
    want: int = 0
    tag = Tag.RANGE_REPORT

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the outcomes' columns (``RangeOutcomes``): nine tuples, however many outcomes, and no
        Python object per outcome on rank 0 when it loads them (the default pickling of a slots dataclass
        runs Python code per object on both sides; a tuple per outcome still built one object each)."""
        return _unpack_range_report, (self.rank, self.panda_id, self.want, RangeOutcomes.of(self.outcomes).columns())


def _unpack_range_report(rank: int, panda_id: int, want: int, columns: tuple[tuple[Any, ...], ...]) -> RangeReport:
    return RangeReport(rank, panda_id, RangeOutcomes.from_columns(columns) if columns else (), want)


# ---- rank 0 -> worker -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AssignJob:
    """Run this job: the definition as rank 0 parsed it and the limits rank 0 enforces (the worker's
    cgroup applies the same memory limit), so neither is worked out twice.

    For an event-service job only the first rank stages the inputs in (``stage_in``); the ranks that
    join later use the shared copy.
    """

    job: JobSpec
    limits: Limits
    stage_in: bool = True
    tag = Tag.JOB


@dataclass(frozen=True, slots=True)
class NoMoreWork:
    """No job for this rank: finish what runs, then stop."""

    tag = Tag.NO_MORE_WORK


@dataclass(frozen=True, slots=True)
class KillJob:
    """Rank 0 decided this job must die (looping, memory, server kill, ...) with this code."""

    panda_id: int
    error_code: int
    diag: str
    tag = Tag.KILL_JOB


@dataclass(frozen=True, slots=True)
class Stop:
    """Wind down now: stop the payload gracefully with this code, send the final record, stop."""

    error_code: int
    diag: str
    tag = Tag.STOP


@dataclass(frozen=True, slots=True)
class EventRanges:
    """Event ranges for the rank's event-service job, as rank 0 parsed them; ``no_more`` ends its supply."""

    panda_id: int
    ranges: tuple[EventRange, ...]
    no_more: bool = False
    tag = Tag.EVENT_RANGES

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as tuples of the fields, so that neither side builds or checks a getEventRanges dict per
        range (rank 0 checked each one when it leased it); extra keys, rare, travel by index."""
        extras = {i: dict(r.extra) for i, r in enumerate(self.ranges) if r.extra}
        return _unpack_event_ranges, (self.panda_id, tuple(map(_range_values, self.ranges)), extras, self.no_more)


_range_values = attrgetter(*(f.name for f in fields(EventRange) if f.name != "extra"))


def _unpack_event_ranges(panda_id: int, packed: tuple[tuple[Any, ...], ...], extras: dict[int, dict[str, Any]],
                         no_more: bool) -> EventRanges:
    if not extras:  # the usual case: no Python frame per range
        return EventRanges(panda_id, tuple(starmap(EventRange, packed)), no_more)
    ranges = tuple(EventRange(*values, MappingProxyType(extras[i])) if i in extras else EventRange(*values)
                   for i, values in enumerate(packed))
    return EventRanges(panda_id, ranges, no_more)


@dataclass(frozen=True, slots=True)
class SetDebug:
    """Debug mode on or off for a job: heartbeats then carry the tail of its newest text file."""

    panda_id: int
    on: bool
    tag = Tag.SET_DEBUG


@dataclass(frozen=True, slots=True)
class Release:
    """Rank 0 is about to end: a rank that stopped may leave now.  Until then it stays in its loop with its
    signal handler in place: under MPICH's Hydra a SIGTERM to a rank already in MPI_Finalize (its default
    action restored) kills it, and Hydra then SIGKILLs every rank, rank 0 before its final updates."""

    tag = Tag.RELEASE


# ---- clone jobs (hpcpilot.clones) -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class CloneClaim:
    """worker -> rank 0: may this clone job run its payload (phase 'runonce') or stage out ('storeonce')?"""

    rank: int
    panda_id: int
    phase: str
    tag = Tag.CLONE_CLAIM


@dataclass(frozen=True, slots=True)
class CloneVerdict:
    """rank 0 -> worker: ``go``, or the job ends with ``code`` (EXECUTEDCLONEJOB when another clone won)."""

    panda_id: int
    go: bool
    code: int = 0
    diag: str = ""
    tag = Tag.CLONE_VERDICT


Message = (Ready | WorkRequest | JobUpdate | Heartbeat | Alive | Signalled | JobDone | Stopped | WorkerFailed
           | RangeReport | AssignJob | NoMoreWork | KillJob | Stop | SetDebug | EventRanges | CloneClaim
           | CloneVerdict | Release)
