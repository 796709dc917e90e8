"""``SourceCalls``: rank 0's calls into its job source that run beside its loop, on the fetch threads.

Each call turns the source's answer -- or whatever the source raised -- into one scheduler event, so a
fetch thread always answers and rank 0's loop never waits for HTTP or a Harvester file.  Job definitions
and event ranges are parsed here, once, where they arrive: one that does not parse is failed with its
PanDA code and never handed out.  Clone jobs (hpcpilot.clones) ask for their one range here too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from operator import attrgetter

from hpcpilot import clones
from hpcpilot.errors import PilotError
from hpcpilot.eventservice.messages import RangesFetched, ReportRanges
from hpcpilot.records import EventRange, EventRangeUpdate, JobRecord, JobSpec, RangeOutcomes, panda_id_of, range_id_of
from hpcpilot.scheduler import AskClone, CloneAnswered, JobsFetched, SchedulerPolicy
from hpcpilot.sources import FetchOutcome, JobSource
from hpcpilot.states import EventRangeStatus, JobState

log = logging.getLogger("hpcpilot.controller")

_status = attrgetter("status")


class SourceCalls:
    """The job source as rank 0's fetch threads and loop call it."""

    def __init__(self, source: JobSource, policy: SchedulerPolicy) -> None:
        self.source, self.policy = source, policy
        # clone job -> (its spec, the event range it was given): reported with the job's outcome (ask_clone)
        self.clone_ranges: dict[int, tuple[JobSpec, tuple[str, ...]]] = {}
        self.range_counts: defaultdict[int, Counter[str]] = defaultdict(Counter)
        """Range statuses reported per job: what a source without acknowledgements counts as delivered."""

    def abandon(self, code: int, diag: str) -> JobsFetched:
        records = []
        for wire in self.source.abandon():
            record = JobRecord(panda_id_of(wire))
            record.fail(code, diag)
            records.append(record)
        return JobsFetched((), tuple(records))

    def fetch(self, n: int, architecture: str | None = None) -> JobsFetched:
        """Lease jobs (fetch thread) for ranks of ``architecture``; it always answers, whatever the source raised."""
        try:
            outcome = self.source.fetch_jobs(n, architecture)
        except Exception as exc:  # a source bug must not end every rank: it is a failed request
            log.error("cannot fetch jobs: %s: %s", type(exc).__name__, exc)
            return JobsFetched((), (), True, f"{type(exc).__name__}: {exc}"[:300], asked=n,
                               architecture=architecture)
        jobs, rejected = [], []
        wires = outcome.leased
        for wire in wires:
            try:
                jobs.append(JobSpec.from_wire(wire))
            except PilotError as exc:
                panda_id = panda_id_of(wire)
                log.error("job %s rejected: %s", panda_id, exc.diag)
                record = JobRecord(panda_id)
                record.fail(exc.code, exc.diag)
                rejected.append(record)
        if wires:
            log.info("leased %d job(s)", len(wires))
        unavailable = outcome.unavailable
        if unavailable:
            log.warning("job source unavailable; asking again later")
        reason = outcome.error if unavailable else ""
        return JobsFetched(tuple(jobs), tuple(rejected), unavailable, reason, outcome.hopeless, asked=n,
                           architecture=architecture)

    def fetch_ranges(self, job: JobSpec, n: int) -> RangesFetched:
        """Lease ranges (fetch thread); a range that does not parse is failed fatal, never dealt."""
        try:
            outcome = self.source.fetch_event_ranges(job, n)
        except PilotError as exc:
            log.error("cannot fetch event ranges of job %d: %s", job.panda_id, exc)
            outcome = FetchOutcome()
        except Exception as exc:  # the fetch thread must always answer, or the job would wait for ever
            log.error("fetching event ranges of job %d failed: %s", job.panda_id, exc)
            return RangesFetched(job.panda_id, (), (), unavailable=True)
        ranges, bad = [], []
        wires = outcome.leased
        for wire in wires:
            try:
                ranges.append(EventRange.from_wire(wire))
            except PilotError as exc:
                range_id = range_id_of(wire)
                log.error("job %d: unusable event range: %s", job.panda_id, exc.diag)
                if range_id:
                    bad.append(EventRangeUpdate(range_id, EventRangeStatus.FATAL, int(exc.code), exc.diag))
        unavailable = outcome.unavailable
        if wires:
            log.debug("job %d: leased %d event range(s)", job.panda_id, len(wires))
        return RangesFetched(job.panda_id, tuple(ranges), tuple(bad), unavailable)

    def report_ranges(self, action: ReportRanges) -> None:
        self.source.update_event_ranges(action.job, action.updates, action.bundle)
        updates = action.updates
        # str() once per status, not once per range; a batch's status column as it is
        by_status = Counter(updates.statuses if isinstance(updates, RangeOutcomes) else map(_status, updates))
        self.range_counts[action.job.panda_id].update({str(status): n for status, n in by_status.items()})

    def ask_clone(self, action: AskClone) -> CloneAnswered:
        """Ask the source for the clone's one event range (fetch thread; always answers).

        A Harvester access point does not coordinate clones (its range files serve event-service jobs of
        this worker only, and Harvester hands a job set's clones to workers without sharing their event
        table): it says so with ``coordinates_clones = False`` and every clone goes on -- a duplicate run
        costs CPU, a wrong "another clone won" would lose the job.  An outage is retried
        ``clones.CLONE_TRIES`` times before the clone is given up with a retryable code.
        """
        job = action.job
        if not self.source.coordinates_clones:
            return CloneAnswered(clones.verdict_of(job.panda_id, action.phase, [job.panda_id]))
        why = "no answer"
        for attempt in range(clones.CLONE_TRIES):
            if attempt:
                time.sleep(self.policy.fetch_retry)  # the pause between two failed getJob requests
            try:
                outcome = self.source.fetch_event_ranges(job, 1)
            except Exception as exc:  # the fetch thread must always answer, or the clone would wait for ever
                why = f"{type(exc).__name__}: {exc}"
                continue
            wires = outcome.leased
            if wires or not outcome.unavailable:
                if wires:
                    self.clone_ranges[job.panda_id] = (job, tuple(filter(None, map(range_id_of, wires))))
                log.info("job %d: clone %s", job.panda_id, "goes on" if wires else "lost to another clone",
                         extra={"PandaID": job.panda_id})
                return CloneAnswered(clones.verdict_of(job.panda_id, action.phase, list(wires)))
            why = outcome.error or why
        return CloneAnswered(clones.verdict_of(job.panda_id, action.phase, None, why))

    def report_clone_range(self, record: JobRecord) -> None:
        """The range a clone took ends with the clone (before its final update: the server takes range
        updates only from an active job), so the journal closes its lease and the server knows which clone
        ran; a failed clone's range goes back, for a retry of the job to take."""
        taken = self.clone_ranges.pop(record.panda_id, None)
        if taken is None:
            return
        job, range_ids = taken
        status = EventRangeStatus.FINISHED if record.state == JobState.FINISHED else EventRangeStatus.FAILED
        self.source.update_event_ranges(job, [EventRangeUpdate(rid, status, record.pilot_error_code,
                                                               record.pilot_error_diag) for rid in range_ids])
