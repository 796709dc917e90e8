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


@dataclass(frozen=True)
class FetchOutcome:
    """What one fetch call (jobs or event ranges) brought, and why it brought nothing.

    Returned by the call rather than kept on the source: several fetches may be in flight at once, and each
    answer must be read with its own status (another call's success read with this one's outage would look
    like "no more work").
    """

    leased: list[Mapping[str, Any]] = field(default_factory=list)
    """Job definitions (getJob dicts) or event ranges, now handed to this pilot."""
    status: int = 0
    """0 (or another non-negative answer such as PanDA's 20, "no jobs"); negative: the call failed or must be
    asked again later (a source's own FETCH_* codes)."""
    error: str = ""
    """Why the call failed ('' when it did not)."""
    hopeless: bool = False
    """The failure will not heal by asking again (a certificate that does not verify)."""

    @property
    def unavailable(self) -> bool:
        """Nothing leased because of an outage (or an open request), not because there is no more work."""
        return not self.leased and self.status < 0


class JobSource(Protocol):
    """What rank 0 needs from a job source."""

    concurrent_fetches: int
    """Fetch calls (jobs, ranges) the source takes at once, from as many of the controller's fetch threads."""

    coordinates_clones: bool
    """Whether the source decides which clone of a job set goes on (one range per clone); if not, every
    clone goes on (``Controller.ask_clone``)."""

    matches_architecture: bool
    """Whether the source hands out jobs for the ranks' GPUs (``fetch_jobs``' ``architecture``): rank 0 then
    fetches per architecture and gives each job to a rank of the architecture it was fetched for."""

    def fetch_jobs(self, n: int, architecture: str | None = None) -> FetchOutcome:
        """Lease up to ``n`` job definitions (getJob dicts) for ranks of ``architecture`` (a PanDA
        ``target_architecture``; None: any).  Nothing leased and not ``unavailable``: no more jobs."""

    def abandon(self) -> list[Mapping[str, Any]]:
        """Job definitions already handed to this pilot that it will not start (the pilot is stopping).

        They are reported failed, so nothing handed out is lost: a Harvester access point hands
        out all its jobs at once; a PanDA server only what was leased, so it returns none.
        """

    def update_job(self, record: JobRecord, final: bool) -> None:
        """Queue a heartbeat or the final update of a job; durable before it returns."""

    def fetch_event_ranges(self, job: JobSpec, n: int) -> FetchOutcome:
        """Lease up to ``n`` event ranges of an event-service job.  Nothing leased and not ``unavailable``:
        no more ranges."""

    def update_event_ranges(self, job: JobSpec, updates: Sequence[EventRangeUpdate],
                            bundle: OutputBundle | None = None) -> None:
        """Queue final event-range statuses (with the zip bundle that holds their outputs)."""

    def report_worker_node(self, node: Mapping[str, Any]) -> None:
        """Tell the source about one node of the allocation (once per node, from its first rank's Ready):
        a PanDA server gets its worker-node map; it must not block rank 0's loop."""

    def rank_ready(self, rank: int, node: Mapping[str, Any]) -> None:
        """Tell the source a rank is ready, with its node info (every rank's Ready): a PanDA server is asked for
        jobs that the ranks' GPUs fit (``target_architecture``); Harvester reports name the node a job ran on."""

    def poll(self, now: float) -> list[Command]:
        """Housekeeping (send queued updates, heartbeat files); returns commands received since the last poll."""

    def delivery(self) -> Delivery | None:
        """What the source has acknowledged and what is still owed; None for a source without
        acknowledgements (a report is delivered once written), for which the controller counts what it
        reported."""

    def close(self) -> None:
        """Flush what is owed (within the source's own deadline) and release resources."""
