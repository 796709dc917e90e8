"""The numbers the scheduler decides with, and the server commands that kill a job.

Every default comes from the site configuration's own defaults (``hpcpilot.config`` owns them): a
``SchedulerPolicy()`` is what a run with no site file would use, and ``from_config`` what a run uses.
Only the start-up timeout is the scheduler's own number: no site has wanted to change it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.protocol import lost_after
from hpcpilot.records import JobSpec

STARTUP_TIMEOUT = 120.0
"""Seconds a worker rank has to answer its start-up check before it is given up."""

KILL_COMMANDS: dict[str, tuple[ErrorCode, str]] = {
    "tobekilled": (ErrorCode.PANDAKILL, "killed by the PanDA server"),
    "lostheartbeat": (ErrorCode.EXCEEDEDMAXWAITTIME, "no successful server update within the lost-heartbeat limit"),
}
"""Server commands that kill a job now, with the code and diagnostic it fails with."""


def fetch_retry(retry_max: float) -> float:
    """The pause after a failed job request: the client's longest back-off, kept within 1-30 s so an
    outage is probed often enough and a healthy but empty source is not hammered."""
    return min(30.0, max(1.0, retry_max))


_DEFAULTS = SiteConfig()


@dataclass
class SchedulerPolicy:
    """The numbers the scheduler decides with (from the site config and the command line)."""

    deadline: float | None = None
    margin: float = float(_DEFAULTS.walltime.margin)
    max_jobs: int | None = None
    heartbeat: float = _DEFAULTS.panda.heartbeat
    debug_heartbeat: float = _DEFAULTS.panda.debug_heartbeat
    lost_after: float = lost_after(_DEFAULTS.monitor)
    jobs_per_fetch: int = _DEFAULTS.panda.jobs_per_fetch
    fetches_in_flight: int = _DEFAULTS.panda.fetches_in_flight
    startup_timeout: float = STARTUP_TIMEOUT
    fetch_retry: float = fetch_retry(_DEFAULTS.panda.retry_max)
    getjob_failures: int = _DEFAULTS.panda.getjob_failures

    @classmethod
    def from_config(cls, config: SiteConfig, deadline: float | None, max_jobs: int | None) -> SchedulerPolicy:
        return cls(deadline=deadline, margin=float(config.walltime.margin), max_jobs=max_jobs,
                   heartbeat=config.panda.heartbeat, debug_heartbeat=config.panda.debug_heartbeat,
                   lost_after=lost_after(config.monitor),
                   jobs_per_fetch=config.panda.jobs_per_fetch,
                   fetches_in_flight=config.panda.fetches_in_flight,
                   fetch_retry=fetch_retry(config.panda.retry_max),
                   getjob_failures=config.panda.getjob_failures)

    @property
    def guard_at(self) -> float | None:
        """When the walltime guard fires (the deadline less the margin); None without a deadline."""
        return None if self.deadline is None else self.deadline - self.margin

    def guard_reached(self, now: float) -> bool:
        guard_at = self.guard_at
        return guard_at is not None and now >= guard_at

    def can_finish(self, job: JobSpec, now: float) -> bool:
        """A job started now would end within its maxWalltime before the walltime guard (event-service
        jobs always start: their ranges are dealt by the time left)."""
        guard_at = self.guard_at
        if guard_at is None or not job.max_walltime or job.event_service:
            return True
        return now + job.max_walltime <= guard_at

    def cannot_finish_diag(self, job: JobSpec, now: float) -> str:
        """Why a job was not started, with the numbers an operator checks: its need and the time left."""
        left = max(0.0, (self.deadline or now) - self.margin - now)
        return (f"not started: it needs up to {job.max_walltime} s (maxWalltime), {left:.0f} s left before the "
                "walltime guard")

    def limit_fetches(self, source_limit: int) -> int:
        """Fetches in flight at once: the policy's number, but no more than the job source can take in
        parallel (a Harvester access point has one request file); returns the number, for the thread pool."""
        self.fetches_in_flight = max(1, min(self.fetches_in_flight, source_limit))
        return self.fetches_in_flight
