"""What rank 0's scheduler decides: one frozen dataclass per kind of action.

The controller carries them out (MPI sends, source calls, kills); the scheduler never does I/O.
The event-service actions are the range ledger's own (``hpcpilot.eventservice.book``), re-exported
here so that one import names every action.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcpilot.eventservice.book import CloseEsJob, DealRanges, FetchRanges, MakeBundle, ReportRanges
from hpcpilot.monitor.metrics import Limits
from hpcpilot.protocol import CloneVerdict
from hpcpilot.records import JobRecord, JobSpec


@dataclass(frozen=True)
class Fetch:
    n: int
    architecture: str | None = None
    """Jobs for ranks of this architecture (their GPUs, ``RankReady.architecture``); None: any rank."""


@dataclass(frozen=True)
class Assign:
    """Run ``job`` on ``rank`` under ``limits`` (computed once, here, and sent with the job)."""

    rank: int
    job: JobSpec
    limits: Limits
    stage_in: bool = True


@dataclass(frozen=True)
class SendNoMoreWork:
    rank: int


@dataclass(frozen=True)
class Kill:
    rank: int
    panda_id: int
    code: int
    diag: str


@dataclass(frozen=True)
class StopRank:
    rank: int
    code: int
    diag: str


@dataclass(frozen=True)
class Report:
    """Send this record to the job source (a heartbeat, or the final update when ``final``)."""

    record: JobRecord
    final: bool


@dataclass(frozen=True)
class SetDebugMode:
    rank: int
    panda_id: int
    on: bool


@dataclass(frozen=True)
class Abandon:
    """The pilot is stopping: fail the jobs the source already handed out that will never start."""

    code: int
    diag: str


@dataclass(frozen=True)
class Finished:
    """Every rank has stopped: the controller may write its summary and exit."""


@dataclass(frozen=True)
class AskClone:
    """Ask the source for the clone job's one event range (the fetch thread answers with CloneAnswered)."""

    job: JobSpec
    phase: str


@dataclass(frozen=True)
class TellClone:
    """Send the clone's verdict to the rank that runs it."""

    rank: int
    verdict: CloneVerdict


Action = (Fetch | Assign | SendNoMoreWork | Kill | StopRank | Report | SetDebugMode | Abandon | Finished | FetchRanges
          | DealRanges | MakeBundle | ReportRanges | CloseEsJob | AskClone | TellClone)


__all__ = [
    "Abandon", "Action", "AskClone", "Assign", "CloseEsJob", "DealRanges", "Fetch", "FetchRanges", "Finished", "Kill",
    "MakeBundle", "Report", "ReportRanges", "SendNoMoreWork", "SetDebugMode", "StopRank", "TellClone",
]
