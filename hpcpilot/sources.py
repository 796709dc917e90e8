"""The job source interface: where rank 0 gets work and where it reports.

Two implementations: a Harvester access point (``hpcpilot.harvester``) and a PanDA server
(``hpcpilot.panda.source``).  Only rank 0 holds a source.  Every method must return quickly:
rank 0's loop also serves MPI messages and the walltime guard, so slow I/O (HTTP retries)
belongs in the source's own background machinery, with a durable journal behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec


@dataclass(frozen=True, slots=True)
class Command:
    """A backchannel command from the server for one job: tobekilled, softkill, debug, debugoff."""

    panda_id: int
    name: str


@dataclass(frozen=True, slots=True)
class OutputBundle:
    """A staged-out zip of event outputs, reported with the ranges it holds (updateEventRanges version 1)."""

    lfn: str
    fsize: int
    adler32: str
    num_events: int
    objstore_id: int
    path_convention: int
    path: str = ""
    range_ids: tuple[str, ...] = field(default_factory=tuple)
    guid: str = ""
    """One GUID for the zip, the same in every range's entry (Harvester gives an entry without one a new GUID)."""


@dataclass
class Delivery:
    """What the job source has acknowledged, and what is still owed to it.

    ``ranges[PandaID]`` counts event ranges by the status the source acknowledged (``finished``,
    ``failed``, ``fatal``), plus ``rejected`` (refused for good) and ``owed`` (queued, not yet
    acknowledged).  ``jobs[PandaID]`` is ``acknowledged``, ``owed`` or ``rejected`` for the final
    update.  ``owed`` counts updates not yet acknowledged; ``journal`` names the file that holds them.
    """

    ranges: dict[int, dict[str, int]] = field(default_factory=dict)
    jobs: dict[int, str] = field(default_factory=dict)
    owed: int = 0
    journal: str = ""


class JobSource(Protocol):
    """What rank 0 needs from a job source."""

    def fetch_jobs(self, n: int) -> list[Mapping[str, Any]]:
        """Lease up to ``n`` job definitions (getJob dicts).  An empty list means no more jobs."""

    def abandon(self) -> list[Mapping[str, Any]]:
        """Job definitions already handed to this pilot that it will not start (the pilot is stopping).

        They are reported failed, so nothing handed out is lost: a Harvester access point hands
        out all its jobs at once; a PanDA server only what was leased, so it returns none.
        """

    def update_job(self, record: JobRecord, final: bool) -> None:
        """Queue a heartbeat or the final update of a job; durable before it returns."""

    def fetch_event_ranges(self, job: JobSpec, n: int) -> list[Mapping[str, Any]]:
        """Lease up to ``n`` event ranges of an event-service job.  Empty means no more ranges."""

    def update_event_ranges(self, job: JobSpec, updates: Sequence[EventRangeUpdate],
                            bundle: OutputBundle | None = None) -> None:
        """Queue final event-range statuses (with the zip bundle that holds their outputs)."""

    def report_worker_node(self, node: Mapping[str, Any]) -> None:
        """Tell the source about one node of the allocation (once per node, from its first rank's Ready):
        a PanDA server gets its worker-node map; it must not block rank 0's loop."""

    def poll(self, now: float) -> list[Command]:
        """Housekeeping (send queued updates, heartbeat files); returns commands received since the last poll."""

    def close(self) -> None:
        """Flush what is owed (within the source's own deadline) and release resources."""
