"""Restart recovery: what a previous pilot run on the same work directory left in the journal.

Its queued updates are replayed, each checked with the server first (marked uncertain), since the old run
may have died while one was in flight.  Jobs and ranges it had leased without a final status are reported
failed -- jobs with KILLSIGNAL (1200), because a pilot that left work in flight was, in practice, killed
(SIGKILL by the batch system, node loss); ranges with UNKNOWNPAYLOADFAILURE (1220), "pilot restarted", so
the server hands them out again.  No new job or range is leased before that replay has been acknowledged
(``Replay.wait``), so the server never sees this run's work before the old run's end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hpcpilot.errors import ErrorCode
from hpcpilot.journal import JOB, RANGE, Journal
from hpcpilot.panda.senders import Senders
from hpcpilot.records import EventRangeUpdate, JobRecord
from hpcpilot.states import EventRangeStatus, JobState

logger = logging.getLogger(__name__)

RESTART_JOB_ERROR = ErrorCode.KILLSIGNAL
RESTART_JOB_DIAG = ("pilot restarted: the job was in flight when the previous pilot process on this workdir "
                    "ended without a final update")
RESTART_RANGE_ERROR = ErrorCode.UNKNOWNPAYLOADFAILURE
RESTART_RANGE_DIAG = "pilot restarted"

JobFields = Callable[[JobRecord, bool], dict[str, Any]]
"""The updateJob fields of a record (final or not), as the source sends them."""


class Replay:
    """The previous run's updates this run must see acknowledged before it leases anything."""

    def __init__(self, journal: Journal, job_fields: JobFields) -> None:
        self.journal = journal
        self.upto = recover(journal, job_fields)
        """The last outbox seq of the replay; 0 once it is acknowledged (or when there was none)."""

    def wait(self, senders: Senders, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the replay to be acknowledged; True once it is."""
        if not self.upto:
            return True
        if not senders.wait_for(self._replayed, timeout):
            return False
        self.upto = 0
        return True

    def _replayed(self) -> bool:
        head = self.journal.next_pending()
        return head is None or head.seq > self.upto


def recover(journal: Journal, job_fields: JobFields) -> int:
    """Report what a previous run left in flight; returns the last outbox seq of the replay (0: none)."""
    if journal.run - 1 <= 0:
        return 0
    # ranges first: the server only accepts range updates while their job is still active
    ranges = journal.in_flight(RANGE, before_run=journal.run)
    by_job: dict[int, list[str]] = {}
    for lease in ranges:
        by_job.setdefault(lease.panda_id, []).append(lease.key)
    for panda_id, ids in by_job.items():
        payload = [EventRangeUpdate(rid, EventRangeStatus.FAILED, int(RESTART_RANGE_ERROR),
                                    RESTART_RANGE_DIAG).to_wire() for rid in ids]
        journal.enqueue_range_update(panda_id, payload, 0, ids)
    jobs = journal.in_flight(JOB, before_run=journal.run)
    for lease in jobs:
        record = JobRecord(panda_id=lease.panda_id, state=JobState.FAILED)
        record.fail(RESTART_JOB_ERROR, RESTART_JOB_DIAG)
        journal.enqueue_job_update(lease.panda_id, job_fields(record, True), True)
    uncertain = journal.mark_run_uncertain(journal.run)
    replay = journal.pending()
    if uncertain:
        logger.warning("journal %s: %d update(s) of a previous run may have reached the server; each is "
                       "checked with the server before it is sent", journal.path, uncertain)
    if replay or jobs or ranges:
        logger.warning("journal %s from a previous run: %d job(s) and %d event range(s) were in flight "
                       "and are reported failed; %d update(s) to replay before leasing new work",
                       journal.path, len(jobs), len(ranges), len(replay))
    return replay[-1].seq if replay else 0
