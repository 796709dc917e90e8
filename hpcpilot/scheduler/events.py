"""What rank 0's scheduler hears: one frozen dataclass per kind of event.

The controller turns MPI messages, signals, server commands and the job source's answers into these;
``Scheduler.handle`` is the only consumer.  The event-service events are the range ledger's own
(``hpcpilot.eventservice.book``) and are re-exported here so that one import names every event.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcpilot.eventservice.book import BundleStaged, EsJobClosed, RangesFetched, RangesReported
from hpcpilot.monitor.samples import MonitorReport
from hpcpilot.protocol import CloneVerdict
from hpcpilot.records import JobRecord, JobSpec


@dataclass(frozen=True)
class RankReady:
    rank: int
    ok: bool
    problems: tuple[str, ...] = ()
    architecture: str | None = None
    """The rank's GPUs as a job source matches jobs to them (PanDA's ``target_architecture``); None: not matched."""


@dataclass(frozen=True)
class RankAlive:
    """A rank's alive signal, sent every report interval whether or not it has work.

    Any event naming a rank refreshes its lost-rank clock; this one exists so that an idle rank has
    something to say.
    """

    rank: int


@dataclass(frozen=True)
class WorkRequested:
    rank: int


@dataclass(frozen=True)
class JobsFetched:
    """The source's answer to a Fetch: parsed jobs, and records of jobs that failed to parse."""

    jobs: tuple[JobSpec, ...]
    rejected: tuple[JobRecord, ...] = ()
    unavailable: bool = False
    """The source could not answer (server down): try again later, it is not empty."""
    reason: str = ""
    """Why the request failed, in one line ('' = it did not fail: the source asks to wait, e.g. for a
    Harvester feed).  Failed requests count towards ``getjob_failures``."""
    hopeless: bool = False
    """The failure will not heal by asking again (a server certificate that does not verify)."""
    asked: int | None = None
    """The ``n`` of the Fetch this answers (None: not said, the oldest request under way is taken as answered)."""
    architecture: str | None = None
    """The architecture the Fetch asked for: its jobs go to ranks of that architecture only."""


@dataclass(frozen=True)
class JobProgress:
    """A job changed state on its rank (starting, running)."""

    rank: int
    record: JobRecord


@dataclass(frozen=True)
class ReportReceived:
    rank: int
    report: MonitorReport
    job_metrics: str = ""


@dataclass(frozen=True)
class JobEnded:
    rank: int
    record: JobRecord


@dataclass(frozen=True)
class RankStopped:
    rank: int


@dataclass(frozen=True)
class RankFailed:
    """A worker raised unexpectedly; its job (if any) fails with ``code``."""

    rank: int
    panda_id: int | None
    code: int
    diag: str


@dataclass(frozen=True)
class RankDied:
    """The MPI library reports the rank's process dead (a fault-tolerant launch, ``mpirun --with-ft ulfm``):
    it is lost now, without waiting for its liveness signal to run out."""

    rank: int
    diag: str


@dataclass(frozen=True)
class StopRequested:
    """A signal or an operator: wind everything down with this code."""

    code: int
    diag: str


@dataclass(frozen=True)
class ServerCommand:
    panda_id: int
    name: str


@dataclass(frozen=True)
class CloneClaimed:
    """A clone job asks whether it may run its payload (phase runonce) or stage out (storeonce); hpcpilot.clones."""

    rank: int
    panda_id: int
    phase: str


@dataclass(frozen=True)
class CloneAnswered:
    """The source's answer to a clone's claim (``AskClone``), as the verdict the clone gets."""

    verdict: CloneVerdict


Event = (RankReady | RankAlive | WorkRequested | JobsFetched | JobProgress | ReportReceived | JobEnded | RankStopped
         | RankFailed | RankDied | StopRequested | ServerCommand | RangesFetched | RangesReported | BundleStaged
         | EsJobClosed | CloneClaimed | CloneAnswered)

__all__ = [
    "BundleStaged", "CloneAnswered", "CloneClaimed", "EsJobClosed", "Event", "JobEnded", "JobProgress", "JobsFetched",
    "RangesFetched", "RangesReported", "RankAlive", "RankDied", "RankFailed", "RankReady", "RankStopped",
    "ReportReceived", "ServerCommand", "StopRequested", "WorkRequested",
]
