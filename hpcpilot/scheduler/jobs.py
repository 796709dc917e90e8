"""Rank 0's view of one running (non-event-service) job, and the timers that drive its heartbeats and
its maxWalltime kill.

``JobTimers`` is the only code that looks at jobs by time: it reads the ``DueQueue``, so a loop pass
costs O(due), never a walk over every running job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.metrics import Limits
from hpcpilot.monitor.samples import MonitorReport
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler.actions import Action, Kill, Report
from hpcpilot.scheduler.due import BEAT, WALLTIME, DueEntry, DueQueue
from hpcpilot.scheduler.policy import SchedulerPolicy
from hpcpilot.states import JobState


@dataclass
class RunningJob:
    spec: JobSpec
    rank: int
    limits: Limits
    record: JobRecord
    assigned_at: float
    payload_start: float | None = None
    last_heartbeat: float = 0.0
    killing: bool = False
    debug: bool = False
    beat_token: int = -1
    """Which heartbeat entry of the due queue is this job's live one (older entries are skipped)."""


class JobTimers:
    """Heartbeats and maxWalltime ends of the running jobs, in one ``DueQueue``."""

    def __init__(self, policy: SchedulerPolicy, jobs: dict[int, RunningJob]) -> None:
        self.policy = policy
        self.jobs = jobs
        self.due = DueQueue(self._live)

    def _live(self, entry: DueEntry) -> bool:
        job = self.jobs.get(entry.panda_id)
        if job is None:
            return False
        return entry.seq == job.beat_token if entry.kind == BEAT else not job.killing

    def schedule_beat(self, job: RunningJob, when: float | None = None) -> None:
        """Make a new entry the job's live heartbeat one (the old one, if any, is skipped when popped);
        sequence numbers are unique over the run, so an entry of an earlier job with the same PandaID is
        never taken for live."""
        job.beat_token = self.due.upcoming
        self.due.push(job.last_heartbeat + self.beat_interval(job) if when is None else when, BEAT,
                      job.spec.panda_id, len(self.jobs))

    def payload_started(self, job: RunningJob, now: float) -> None:
        """The payload runs: its maxWalltime counts from now."""
        job.payload_start = now
        if job.spec.max_walltime:
            self.due.push(now + job.spec.max_walltime, WALLTIME, job.spec.panda_id, len(self.jobs))

    def beat_interval(self, job: RunningJob) -> float:
        return self.policy.debug_heartbeat if job.debug else self.policy.heartbeat

    def due_actions(self, now: float) -> list[Action]:
        """Heartbeats and maxWalltime kills whose time has come: O(due) per pass."""
        if not self.due.has_due(now):
            return []
        actions: list[Action] = []
        for entry in self.due.pop_due(now):
            job = self.jobs.get(entry.panda_id)
            if job is None:
                continue  # closed since
            actions += self._beat_due(job, entry.seq, now) if entry.kind == BEAT else self._walltime_due(job, now)
        return actions

    def _walltime_due(self, job: RunningJob, now: float) -> list[Action]:
        """A maxWalltime entry came due: kill, or (at the limit exactly: only beyond it kills) look again later."""
        kill = walltime_kill(job, now)
        if not kill and not job.killing and job.payload_start is not None:
            self.due.push(_later(job.payload_start, job.spec.max_walltime, now), WALLTIME, job.spec.panda_id,
                          len(self.jobs))
        return kill

    def _beat_due(self, job: RunningJob, token: int, now: float) -> list[Action]:
        """A heartbeat entry came due: beat if the interval since the last update passed, else wait for it."""
        if token != job.beat_token:
            return []  # superseded (the debug interval changed)
        interval = self.beat_interval(job)
        if now - job.last_heartbeat < interval:  # a progress update came meanwhile
            self.schedule_beat(job, _later(job.last_heartbeat, interval, now))
            return []
        job.last_heartbeat = now
        self.schedule_beat(job)
        return [Report(job.record, final=False)]


def walltime_kill(job: RunningJob, now: float) -> list[Action]:
    """The kill of a job whose payload ran beyond its maxWalltime (none before, or while it is being killed)."""
    limit = job.spec.max_walltime
    if job.killing or not limit or job.payload_start is None or now - job.payload_start <= limit:
        return []
    job.killing = True
    return [Kill(job.rank, job.spec.panda_id, int(ErrorCode.REACHEDMAXTIME),
                 f"job ran longer than its maxWalltime of {limit} s")]


def _later(start: float, interval: float, now: float) -> float:
    """``start + interval``, but after now: an entry re-queued in this pass must not come due again in it."""
    return max(start + interval, math.nextafter(now, math.inf))


def merge_report(record: JobRecord, report: MonitorReport) -> None:
    """Fold a monitoring report into the record that heartbeats carry."""
    tree = report.tree
    record.state = JobState.RUNNING
    record.cpu_consumption_time = max(record.cpu_consumption_time, round(tree.utime + tree.stime))
    record.max_pss = max(record.max_pss, tree.pss)
    record.max_rss = max(record.max_rss, tree.rss)
    record.max_vmem = max(record.max_vmem, tree.vmem)
    record.max_swap = max(record.max_swap, tree.swap)
