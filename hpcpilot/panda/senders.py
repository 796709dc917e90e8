"""The sender threads: they drain the journal's outbox to the PanDA server, so rank 0 never waits for HTTP.

``panda.senders`` threads, each the jobs of its shard (PandaID modulo the sender count) oldest first: one
job's updates arrive strictly in order (heartbeat before final, range updates in order) while different
jobs' updates are in flight together, so the update rate is not one per server round trip.  An update that
keeps failing holds up only its shard's jobs, whose order must be kept anyway; each sender has its own
back-off, and while the server is down it keeps retrying: nothing is lost and payloads go on.

What each answer or look-up proves is decided by ``hpcpilot.panda.verdict``; this module acts on it: it
removes what was delivered, narrows an update to what the server lacks, asks the server when an update's
fate is open (one look-up, before anything is sent again), and keeps what was refused for good in the
journal's ``rejected`` table.  Range updates that their answer did not confirm (v1's 500) are parked until
their job's one batched status look-up (``hpcpilot.panda.rangecheck``); meanwhile the sender goes on with the
shard's other updates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcpilot.config import PandaConfig
from hpcpilot.errors import PilotError
from hpcpilot.journal import JOB, Journal, OutboxEntry, count_ranges
from hpcpilot.panda import wire
from hpcpilot.panda.client import PandaClient
from hpcpilot.panda.commands import Backchannel
from hpcpilot.panda.failures import PandaError
from hpcpilot.panda.rangecheck import RangeChecks
from hpcpilot.panda.tally import ACKNOWLEDGED, REJECTED, DeliveryTally
from hpcpilot.panda.verdict import (
    INTERNAL_ERROR,
    Fate,
    Verdict,
    after_job_lookup,
    after_range_lookup,
    after_range_reply,
    after_reply,
    job_ended,
    needs_job_state,
)
from hpcpilot.records import parse_int

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outlet:
    """What every sender shares: the outbox, the server, and where acknowledgements and commands go."""

    journal: Journal
    client: PandaClient
    panda: PandaConfig
    lookup_deadline: float
    """Seconds a status look-up may take (the source's fetch deadline)."""
    tally: DeliveryTally
    backchannel: Backchannel


class Senders:
    """The sender threads of one source: started, woken, flushed and stopped together."""

    def __init__(self, outlet: Outlet) -> None:
        self.journal = outlet.journal
        self._cond = threading.Condition()  # notified whenever a sender made progress or is idle
        self._wakes = [threading.Event() for _ in range(self.journal.shards)]  # one per sender: none misses one
        self._stopping = threading.Event()
        self._flushing = threading.Event()  # parked range updates are checked at once, not when due
        self._abort = threading.Event()
        self._threads = [
            threading.Thread(target=ShardSender(outlet, shard, self).run, name=f"panda-sender-{shard}", daemon=True)
            for shard in range(self.journal.shards)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self, panda_id: int) -> None:
        """Wake the one sender that owns this job's updates."""
        self._wakes[self.journal.shard_of(panda_id)].set()

    def wake_all(self) -> None:
        for wake in self._wakes:
            wake.set()

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def wait_for(self, done: Callable[[], bool], timeout: float, while_alive: bool = False) -> bool:
        """Wake every sender and wait, up to ``timeout`` seconds, until ``done()`` (checked whenever a sender
        made progress); False at the timeout or, with ``while_alive``, once no sender is left."""
        end = time.monotonic() + timeout
        self.wake_all()
        with self._cond:
            while not done():
                remaining = end - time.monotonic()
                if remaining <= 0 or (while_alive and not self.alive()):
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True

    def flush(self, timeout: float, last: bool = False) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to empty, parked range updates checked at once; True if
        it did.  ``last``: the flush before stopping, which leaves the senders flushing to the end."""
        if last:
            self._stopping.set()
        self._flushing.set()
        try:
            return self.wait_for(lambda: not self.journal.pending_count(), timeout, while_alive=True)
        finally:
            if not self._stopping.is_set():
                self._flushing.clear()

    def abort(self) -> None:
        """Tell every sender to stop after its current request."""
        self._abort.set()
        self.wake_all()

    def join(self, timeout: float) -> int:
        """Wait for the sender threads, ``timeout`` seconds for all of them together; how many are still busy."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        return sum(thread.is_alive() for thread in self._threads)

    def notify(self) -> None:
        """A sender made progress (or has nothing to do): wake who waits in ``wait_for``."""
        with self._cond:
            self._cond.notify_all()

    @property
    def flushing(self) -> bool:
        return self._flushing.is_set()

    @property
    def aborted(self) -> threading.Event:
        return self._abort

    def wake_event(self, shard: int) -> threading.Event:
        return self._wakes[shard]


class ShardSender:
    """One sender thread: the updates of the jobs of one shard, and the look-ups they need."""

    def __init__(self, outlet: Outlet, shard: int, pool: Senders) -> None:
        self.shard = shard
        self.pool = pool
        self.journal, self.client, self.panda = outlet.journal, outlet.client, outlet.panda
        self.lookup_deadline = outlet.lookup_deadline
        self.tally, self.backchannel = outlet.tally, outlet.backchannel
        self.checks = RangeChecks()  # a job's updates all belong to one sender: its look-ups too

    def run(self) -> None:
        """Send until aborted: progress goes on at once, nothing to do waits for a wake-up (or a parked job's
        look-up falling due), a failure backs off."""
        wake, abort = self.pool.wake_event(self.shard), self.pool.aborted
        backoff = self.panda.retry_initial
        while not abort.is_set():
            wake.clear()
            progress = self._send_next()
            if progress is None:  # nothing to send now
                self.pool.notify()
                wait = self.checks.wait_time(time.monotonic())
                wake.wait(timeout=5.0 if wait is None else min(5.0, max(wait, 0.01)))
                continue
            if progress:
                backoff = self.panda.retry_initial
                self.pool.notify()
                continue
            pause = min(max(backoff, 0.01) * random.uniform(0.5, 1.5), max(self.panda.retry_max, 0.01))
            if abort.wait(pause):
                break
            backoff = min(backoff * 2, self.panda.retry_max)
        self.pool.notify()

    def _send_next(self) -> bool | None:
        """Do the shard's next piece of work: a due look-up, else the oldest update not parked.
        True: progress; False: failed, back off; None: nothing to do now."""
        checks = self.checks
        entry = self.journal.next_pending(self.shard, skip=checks.parked_seqs())
        job = checks.due_job(time.monotonic())
        if job is None and entry is not None and entry.kind == JOB and entry.final and checks.is_parked(entry.panda_id):
            job = entry.panda_id  # the server takes range updates only while the job is active: ranges first
        if job is None and entry is None and self.pool.flushing:
            job = checks.due_job(time.monotonic(), flushing=True)  # all sent: check what is parked now
        if job is not None:
            return self._check_ranges(job)
        if entry is None:
            return None
        if entry.kind != JOB and entry.uncertain:  # left open by a failed look-up or a previous run
            return self._check_ranges(entry.panda_id)
        return self._send(entry)

    def _send(self, entry: OutboxEntry) -> bool:
        """Deliver one outbox entry; False if it must be tried again later.  An answer that leaves the
        update's fate open is followed at once by one look-up (the server that answered is up), except
        v1's range-update 500, which is its normal answer: that update waits for its job's batched look-up."""
        outcome = self._send_once(entry)
        if outcome is None:
            if entry.kind != JOB:
                return self._check_ranges(entry.panda_id)
            outcome = self._send_once(dataclasses.replace(entry, uncertain=True)) is True
        return outcome

    def _send_once(self, entry: OutboxEntry) -> bool | None:
        """True: done with it (or parked); False: try again later; None: its fate is open (marked uncertain)."""
        try:
            if entry.uncertain:
                checked = self._check_job(entry)
                if checked is None:
                    return True
                entry = checked
            self._deliver(entry)
        except Exception as exc:  # the sender thread must live on: the journal keeps the update
            return self._settle(entry, after_reply(exc))
        return True

    def _settle(self, entry: OutboxEntry, verdict: Verdict) -> bool | None:
        """Act on the verdict of a send that did not succeed (``_send_once``'s answer)."""
        if verdict.fate is Fate.ASK:
            self.journal.mark_uncertain(entry, verdict.why)
            if verdict.batched:
                self.checks.park(entry.panda_id, entry.seq, count_ranges(entry.body), time.monotonic())
                return True
            logger.warning("update #%d for job %s: %s; asking the server what it has before sending again",
                           entry.seq, entry.panda_id, verdict.why)
            return None
        if verdict.fate is Fate.REFUSED:
            logger.error("server refused update #%d for job %s, not resending: %s", entry.seq, entry.panda_id,
                         verdict.why)
            self.tally.count(entry, wire.range_ids_of(entry.body["payload"]) if entry.kind != JOB else [], REJECTED)
            self.journal.reject(entry, verdict.why)
            return True
        if verdict.internal:
            logger.error("unexpected error sending update #%d for job %s: %s", entry.seq, entry.panda_id,
                         verdict.why)
            self.journal.note_failure(entry, INTERNAL_ERROR)
            return False
        if entry.attempts == 0:
            logger.warning("update #%d for job %s not delivered yet: %s", entry.seq, entry.panda_id, verdict.why)
        self.journal.note_failure(entry, verdict.why)
        return False

    def _deliver(self, entry: OutboxEntry) -> None:
        """Send one entry; on an acknowledging reply, remove it (or narrow it to what was not taken).

        The reply's server commands are queued before the entry leaves the outbox: ``flush`` returns once
        the outbox is empty, and a caller that then polls must find them (with several senders another
        sender's wake-up can end the flush in between)."""
        if entry.kind == JOB:
            names = self.client.update_job(entry.body)
            self.backchannel.job_update_taken()
            if entry.final:
                self.tally.final(entry.panda_id, ACKNOWLEDGED)
                self.checks.forget(entry.panda_id)
            self.backchannel.heard({entry.panda_id: names})
            self.journal.acknowledge(entry)
            return
        result = self.client.update_event_ranges(entry.body["payload"], entry.body["version"])
        self.backchannel.heard(result.commands)
        reply = after_range_reply(wire.range_ids_of(entry.body["payload"]), result.returns)
        self.tally.count(entry, reply.taken, None)
        self.tally.count(entry, reply.refused, REJECTED)
        if reply.fate is Fate.ASK:  # null for a final status: not stored, or not said; the server is asked next
            narrowed = self.journal.narrow(entry, _only(entry.body, reply.open))
            self.journal.mark_uncertain(narrowed, f"{len(reply.open)} range(s) without a true/false answer")
        else:
            self.journal.acknowledge(entry)

    # ---- look-ups ------------------------------------------------------------------------------

    def _check_ranges(self, panda_id: int) -> bool:
        """One status look-up for every range update of a job whose fate is open: each is acknowledged,
        narrowed to what the server lacks (sent again next), or -- sent too often without ever showing up
        at the server -- refused for good.  False if the look-up failed (the updates stay uncertain)."""
        checks = self.checks
        entries = self.journal.uncertain_range_updates(panda_id)
        if not entries:
            checks.settled(panda_id, None)
            return True
        ids = [rid for entry in entries for rid in wire.range_ids_of(entry.body["payload"])]
        try:
            known = self.client.range_statuses([(panda_id, self._task_of(panda_id, ids))],
                                               deadline=self.lookup_deadline)
        except PandaError as exc:
            checks.lookup_failed(panda_id)
            log = logger.warning if checks.failing == 1 else logger.debug
            log("job %s: status look-up for %d unconfirmed range update(s) failed: %s", panda_id, len(entries), exc)
            return False
        checks.settled(panda_id, len(known))
        ended = self._job_ended_at_server(panda_id) if any(
            needs_job_state(checks.sends(entry.seq)) for entry in entries) else False
        confirmed = resend = 0
        for entry in entries:
            sends = checks.sends(entry.seq)
            verdict = after_range_lookup(wire.range_ids_of(entry.body["payload"]), known, sends, ended)
            for status in set(verdict.have.values()):
                self.tally.count(entry, [rid for rid, s in verdict.have.items() if s == status], status)
            confirmed += len(verdict.have)
            resend += len(verdict.missing)
            if verdict.fate is Fate.DELIVERED:
                self.journal.acknowledge(entry)
                checks.done(entry.seq)
            elif verdict.fate is Fate.REFUSED:
                self._refuse_unconfirmed(entry, verdict.missing, sends)
                checks.done(entry.seq)
            else:
                self.journal.narrow(entry, _only(entry.body, set(verdict.missing)))
        logger.debug("job %s: one look-up (%d range(s) listed) settles %d update(s): %d range(s) confirmed, %d to "
                     "send again", panda_id, len(known), len(entries), confirmed, resend)
        return True

    def _job_ended_at_server(self, panda_id: int) -> bool:
        """True when the server no longer runs the job; False while it does, or when the look-up fails (a
        range update it never shows is then still owed)."""
        try:
            state = self.client.job_statuses([panda_id], deadline=self.lookup_deadline).get(panda_id)
        except PandaError:
            return False
        return job_ended(state)

    def _refuse_unconfirmed(self, entry: OutboxEntry, missing: Sequence[str], sends: int) -> None:
        reason = (f"sent {sends} times and never shown by the server's status look-up, and the job is no longer "
                  f"active there: {len(missing)} range(s), e.g. {missing[0]}")
        logger.error("job %s: update #%d refused for good: %s", entry.panda_id, entry.seq, reason)
        self.tally.count(entry, list(missing), REJECTED)
        self.journal.reject(entry, reason)

    def _check_job(self, entry: OutboxEntry) -> OutboxEntry | None:
        """A job update whose fate is unknown: ask the server.  None when it has it (the entry is then
        acknowledged); otherwise the entry, to be sent again."""
        state = self.client.job_statuses([entry.panda_id], deadline=self.lookup_deadline).get(entry.panda_id)
        owed = after_job_lookup(entry, state) is Fate.OWED
        if entry.final:
            if owed:
                logger.info("job %s: the server's state is %s; sending the final update again", entry.panda_id,
                            state)
                return entry
            logger.info("job %s: the server already has a final state (%s); not sent again", entry.panda_id, state)
            self.tally.final(entry.panda_id, ACKNOWLEDGED)
        elif owed:  # a heartbeat is done once the server's state is at or past it
            return entry
        self.journal.acknowledge(entry)
        return None

    def _task_of(self, panda_id: int, range_ids: Sequence[str]) -> int | None:
        """The jediTaskID of a job: the first field of its eventRangeIDs, else the journaled definition."""
        job = self.journal.leased_job(panda_id) or {}
        for value in [*(rid.split("-", 1)[0] for rid in range_ids), job.get("taskID"), job.get("jediTaskID")]:
            with contextlib.suppress(PilotError):
                return parse_int(value, "jediTaskID")
        return None


def _only(body: Mapping[str, Any], keep: set[str]) -> dict[str, Any]:
    """An updateEventRanges body narrowed to the ranges in ``keep`` (version 1 chunks keep their zipFile)."""
    payload: list[dict[str, Any]] = []
    for item in body["payload"]:
        if "eventRanges" in item:
            ranges = [r for r in item["eventRanges"] if str(r.get("eventRangeID")) in keep]
            if ranges:
                payload.append({**item, "eventRanges": ranges})
        elif str(item.get("eventRangeID")) in keep:
            payload.append(dict(item))
    return {**body, "payload": payload}
