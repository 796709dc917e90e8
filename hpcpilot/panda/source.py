"""``PandaSource``: the JobSource for a PanDA server, on top of ``PandaClient`` and the journal.

* ``fetch_jobs``/``fetch_event_ranges`` are synchronous but bounded by a short deadline
  (``fetch_deadline``, default min(30 s, panda.call_deadline)); the lease is journaled before the
  job or range is returned.  Each call answers a ``FetchOutcome``: nothing leased with a status that
  tells why (0 ok, 20 no jobs, ``FETCH_UNREACHABLE``, ``FETCH_REPLAYING``, or another server StatusCode).
* ``update_job``/``update_event_ranges`` only journal and wake a sender, so rank 0's loop never
  waits for HTTP.  ``panda.senders`` background threads drain the outbox, each the jobs of its shard
  (PandaID modulo the sender count) oldest first: one job's updates arrive strictly in order
  (heartbeat before final, range updates in order) while different jobs' updates are in flight
  together, so the update rate is not one per server round trip.  An update leaves the outbox
  only when the server proved it has it: an acknowledging reply (``replies.py``), or -- after an
  answer that leaves its fate open (HTTP 5xx, a timeout after sending, a reply that proves nothing,
  or a restart) -- the server's own status of the job or ranges, asked before anything is sent
  again; then only what the server lacks is sent.  A refusal for good is kept in the journal's
  ``rejected`` table and logged.  While the server is down the sender keeps retrying with back-off;
  nothing is lost and payloads go on.  ``delivery()`` tells what was acknowledged and what is owed.
* ``poll`` returns backchannel commands (updateJob ``command`` and updateEventRanges ``Command``),
  only for jobs this pilot is running, and one ``Command(panda_id, "lostheartbeat")`` per running
  job once no job update has succeeded for ``panda.lost_heartbeat`` seconds (the controller fails
  those with EXCEEDEDMAXWAITTIME 1317, as pilot3 does after 3 h).
* On construction, what a previous run on the same workdir left is handled first: its queued
  updates are replayed (each checked with the server first, since the old run may have died while
  it was in flight), and jobs/ranges it had leased without a final status are reported failed
  -- jobs with KILLSIGNAL (1200), because a pilot that left work in flight was, in practice, killed
  (SIGKILL by the batch system, node loss); ranges with UNKNOWNPAYLOADFAILURE (1220), "pilot
  restarted", so the server hands them out again.  No new job or range is leased before that
  replay has been acknowledged.
* ``pilotSecrets``/``secrets`` are taken out of leased job definitions (never journaled, never
  returned in the dict) and are available from ``job_secrets(panda_id)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpilot import __version__
from hpcpilot.batchinfo import pilot_identity
from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.journal import JOB, RANGE, Journal, OutboxEntry, count_ranges
from hpcpilot.panda import wire
from hpcpilot.panda.auth import register_secret
from hpcpilot.panda.client import (
    Ambiguous,
    PandaClient,
    PandaError,
    RequestRejected,
    ServerUnusable,
    UnconfirmedRangeUpdate,
)
from hpcpilot.panda.rangecheck import MAX_UNCONFIRMED_SENDS, RangeChecks, settle
from hpcpilot.panda.workernode import worker_node_fields
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec, attempt_nr_of, panda_id_of, parse_int, show_value
from hpcpilot.sources import Command, Delivery, FetchOutcome, OutputBundle
from hpcpilot.states import EventRangeStatus, JobState

logger = logging.getLogger(__name__)

JOURNAL_NAME = "panda-journal.sqlite"
FETCH_UNREACHABLE = -1
FETCH_REPLAYING = -2
FETCH_REFUSED = -3
FETCH_UNUSABLE = -4
SERVER_FINAL_JOB_STATES = frozenset({"holding", "finished", "failed", "cancelled", "closed", "merging"})
"""Job states that prove the server has a final update (finished/failed are 'holding' until its Adder)."""
LOST_HEARTBEAT = "lostheartbeat"
RESTART_JOB_ERROR = ErrorCode.KILLSIGNAL
RESTART_JOB_DIAG = ("pilot restarted: the job was in flight when the previous pilot process on this workdir "
                    "ended without a final update")
RESTART_RANGE_ERROR = ErrorCode.UNKNOWNPAYLOADFAILURE
RESTART_RANGE_DIAG = "pilot restarted"
REPLAYING = "updates of the previous run on this workdir are not yet acknowledged; no new lease now"


@dataclass(frozen=True)
class NodeInfo:
    """What getJob says about the node: name, CPU clock (MHz), memory and free disk (MB)."""

    node: str
    cpu: int = 0
    mem: int = 0
    disk: int = 0

    def as_mapping(self) -> dict[str, Any]:
        return {"node": self.node, "cpu": self.cpu, "mem": self.mem, "disk": self.disk}


NodeInfoLike = NodeInfo | Mapping[str, Any]


class PandaSource:
    """JobSource backed by a PanDA server, with a durable outbox and background senders (``panda.senders``)."""

    def __init__(self, config: SiteConfig, workdir: Path, node: NodeInfoLike, *,
                 client: PandaClient | None = None, fetch_deadline: float | None = None,
                 close_deadline: float | None = None) -> None:
        self.config = config
        self.panda = config.panda
        self.node = node.as_mapping() if isinstance(node, NodeInfo) else dict(node)
        self.identity = pilot_identity(os.environ, __version__)  # batchID, pilotID, schedulerID: once per pilot
        cap = self.panda.call_deadline
        self.fetch_deadline = fetch_deadline if fetch_deadline is not None else min(30.0, cap)
        self.close_deadline = close_deadline if close_deadline is not None else min(60.0, cap)
        self.journal = Journal(Path(workdir) / JOURNAL_NAME, shards=self.panda.senders)
        self.client = client if client is not None else PandaClient(config.panda, config.site)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._commands: list[Command] = []
        self._running: dict[int, float] = {}  # PandaID -> monotonic time leased
        self._secrets: dict[int, dict[str, Any]] = {}
        self._lost_reported: set[int] = set()
        self._nodes_reported: set[str] = set()
        self._acked: dict[int, Counter[str]] = {}
        self._final: dict[int, str] = {}
        self._closing_delivery: Delivery | None = None  # the last word, once the journal is closed
        self._last_success: float | None = None
        self._wakes = [threading.Event() for _ in range(self.journal.shards)]  # one per sender: none misses one
        self._stopping = threading.Event()
        self._flushing = threading.Event()  # parked range updates are checked at once, not when due
        self._abort = threading.Event()
        self._replay_upto = self._recover()
        self._senders = [threading.Thread(target=self._send_loop, args=(shard,), name=f"panda-sender-{shard}",
                                          daemon=True) for shard in range(self.journal.shards)]
        for sender in self._senders:
            sender.start()

    concurrent_fetches = 64
    """Fetch calls may run in several threads at once (the controller pipelines getJob): the journal and the
    client lock their shared state, and each call answers its own ``FetchOutcome``."""

    coordinates_clones = True
    """The server's event table decides which clone of a job set goes on (``Controller.ask_clone``)."""

    # ------------------------------------------------------------------------- JobSource methods

    def abandon(self) -> list[Mapping[str, Any]]:
        """A PanDA server hands out only what was leased, and leased jobs are all started: none."""
        return []

    def fetch_jobs(self, n: int) -> FetchOutcome:
        """Lease up to ``n`` (at most panda.jobs_per_fetch) jobs; journaled before they are returned.
        Nothing leased with a negative status is a failed request (the outcome's ``error`` says why)."""
        if n <= 0:
            return FetchOutcome()
        if not self._wait_replayed():
            return self._fetch_failed(FETCH_REPLAYING, REPLAYING)
        try:
            status, jobs = self.client.acquire_jobs(min(n, max(1, self.panda.jobs_per_fetch)), self.node,
                                                    deadline=self.fetch_deadline)
        except ServerUnusable as exc:
            return self._fetch_failed(FETCH_UNUSABLE, str(exc))
        except PandaError as exc:
            return self._fetch_failed(FETCH_UNREACHABLE, str(exc))
        if status not in (wire.STATUS_OK, wire.STATUS_NO_JOBS):
            return self._fetch_failed(FETCH_REFUSED, f"getJob answered StatusCode {status}")
        return FetchOutcome([job for job in (self._lease(job) for job in jobs) if job is not None], status)

    @staticmethod
    def _fetch_failed(status: int, why: str) -> FetchOutcome:
        logger.warning("getJob failed: %s", why)
        return FetchOutcome([], status, why, hopeless=status == FETCH_UNUSABLE)

    def _lease(self, job: Mapping[str, Any]) -> dict[str, Any] | None:
        """Journal one leased job (secrets kept in memory only); None for a job without a PandaID."""
        panda_id = panda_id_of(job) or None
        if panda_id is None:
            logger.error("getJob returned a job without a valid PandaID (%s); ignored",
                         show_value(job.get("PandaID"), 40))
            return None
        secrets = {k: job[k] for k in ("pilotSecrets", "secrets") if k in job}
        clean = {k: v for k, v in job.items() if k not in secrets}
        if secrets:
            register_secret(secrets)
            self._secrets[panda_id] = secrets
        self.journal.record_job_lease(panda_id, clean)
        with self._lock:
            self._running[panda_id] = time.monotonic()
        return clean

    def update_job(self, record: JobRecord, final: bool) -> None:
        """Journal a heartbeat or the final update; the sender delivers it."""
        fields = self._job_fields(record, final)
        self.journal.enqueue_job_update(record.panda_id, fields, final)
        if final:
            with self._lock:
                self._running.pop(record.panda_id, None)
        self._wake_sender(record.panda_id)

    def fetch_event_ranges(self, job: JobSpec, n: int) -> FetchOutcome:
        """Lease up to ``n`` event ranges; journaled before they are returned."""
        if n <= 0:
            return FetchOutcome()
        if not self._wait_replayed():
            return self._fetch_failed(FETCH_REPLAYING, REPLAYING)
        try:
            ranges = self.client.acquire_event_ranges(job.panda_id, job.jobset_id, job.task_id, n,
                                                      deadline=self.fetch_deadline)
        except PandaError as exc:
            logger.warning("getEventRanges for %s failed: %s", job.panda_id, exc)
            return FetchOutcome([], FETCH_UNREACHABLE, str(exc))
        good = [r for r in ranges if not wire.is_null(r.get("eventRangeID"))]
        if len(good) != len(ranges):
            logger.error("getEventRanges for %s: %d range(s) without eventRangeID ignored", job.panda_id,
                         len(ranges) - len(good))
        if good:
            self.journal.record_range_leases(job.panda_id, good)
        return FetchOutcome(good)

    def update_event_ranges(self, job: JobSpec, updates: Sequence[EventRangeUpdate],
                            bundle: OutputBundle | None = None) -> None:
        """Journal event-range statuses: ranges in the bundle go as version 1 with its zipFile, the
        others as version 0."""
        if not updates:
            return
        if bundle is not None:
            zipped_ids = set(bundle.range_ids) or {u.event_range_id for u in updates
                                                   if u.status == EventRangeStatus.FINISHED}
        else:
            zipped_ids = set()
        zipped = [u.to_wire() for u in updates if u.event_range_id in zipped_ids]
        plain = [u.to_wire() for u in updates if u.event_range_id not in zipped_ids]
        if zipped and bundle is not None:
            zip_file = {"numEvents": bundle.num_events, "objstoreID": bundle.objstore_id, "lfn": bundle.lfn,
                        "fsize": bundle.fsize, "adler32": bundle.adler32,
                        "pathConvention": bundle.path_convention}
            self.journal.enqueue_range_update(job.panda_id, [{"zipFile": zip_file, "eventRanges": zipped}], 1,
                                              [u["eventRangeID"] for u in zipped])
        if plain:
            self.journal.enqueue_range_update(job.panda_id, plain, 0, [u["eventRangeID"] for u in plain])
        self._wake_sender(job.panda_id)

    def report_worker_node(self, node: Mapping[str, Any]) -> None:
        """Send one node's worker-node map (v1 ``update_worker_node``, 0.8.1 and 1.0) from a short-lived thread,
        so rank 0's loop never waits for it.  Best effort: the map serves brokerage, no job depends on it, so a
        failure is one INFO line and is not retried.  Not sent with ``panda.api = legacy`` (no such method)."""
        name = str(node.get("node") or "")
        with self._lock:
            if not name or name in self._nodes_reported or self.panda.api == "legacy":
                return
            self._nodes_reported.add(name)
        fields = worker_node_fields(node, self.config.site.name, self.config.site.queue)
        threading.Thread(target=self._send_worker_node, args=(fields,), name="panda-worker-node", daemon=True).start()

    def _send_worker_node(self, fields: Mapping[str, Any]) -> None:
        try:
            said = self.client.update_worker_node(fields, deadline=self.fetch_deadline)
        except PandaError as exc:
            logger.info("worker-node map of %s not sent: %s", fields.get("host_name"), exc)
            return
        logger.info("worker-node map of %s sent (%s)", fields.get("host_name"), said or "ok")

    def poll(self, now: float) -> list[Command]:
        """Commands received since the last poll, plus 'lostheartbeat' per running job when no job
        update succeeded for panda.lost_heartbeat seconds.  (``now`` is accepted for the interface;
        elapsed times are measured on the monotonic clock.)"""
        mono = time.monotonic()
        with self._lock:
            out, self._commands = self._commands, []
            for panda_id, leased_at in self._running.items():
                baseline = max(leased_at, self._last_success or leased_at)
                if mono - baseline >= self.panda.lost_heartbeat and panda_id not in self._lost_reported:
                    self._lost_reported.add(panda_id)
                    logger.error("job %s: no successful server update for %.0f s (lost heartbeat)", panda_id,
                                 mono - baseline)
                    out.append(Command(panda_id, LOST_HEARTBEAT))
        return out

    def close(self) -> None:
        """Deliver what is owed within ``close_deadline``; what is left stays journaled for the next run."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        delivered = self.flush(self.close_deadline)
        self._abort.set()
        self._wake_senders()
        self.client.close()
        busy = self._join_senders(min(self.panda.read_timeout + 1.0, 5.0))
        self._closing_delivery = self.delivery()
        left = self._closing_delivery.owed
        if not delivered or left:
            logger.warning("closing with %d update(s) not yet acknowledged; they stay in %s for the next run",
                           left, self.journal.path)
        if busy:
            # a request is still in flight; the journal is crash-safe, leave it open to the process exit
            logger.warning("%d sender thread(s) still busy with a request; not waiting for them", busy)
            return
        self.journal.close()

    def _join_senders(self, timeout: float) -> int:
        """Wait for the sender threads, ``timeout`` seconds for all of them together; how many are still busy."""
        end = time.monotonic() + timeout
        for sender in self._senders:
            sender.join(timeout=max(0.0, end - time.monotonic()))
        return sum(sender.is_alive() for sender in self._senders)

    def _senders_alive(self) -> bool:
        return any(sender.is_alive() for sender in self._senders)

    def _wake_sender(self, panda_id: int) -> None:
        """Wake the one sender that owns this job's updates."""
        self._wakes[self.journal.shard_of(panda_id)].set()

    def _wake_senders(self) -> None:
        for wake in self._wakes:
            wake.set()

    # ------------------------------------------------------------------------------------ extras

    def job_secrets(self, panda_id: int) -> dict[str, Any]:
        """pilotSecrets/secrets of a leased job (kept in memory only)."""
        merged = dict(self._secrets.get(panda_id, {}))
        if panda_id in self.client.pilot_secrets:
            merged["pilotSecrets"] = self.client.pilot_secrets[panda_id]
        return merged

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to empty; True if it did."""
        end = time.monotonic() + timeout
        self._flushing.set()
        self._wake_senders()
        try:
            with self._cond:
                while self.journal.pending_count():  # every shard drained
                    remaining = end - time.monotonic()
                    if remaining <= 0 or not self._senders_alive():
                        return False
                    self._cond.wait(min(remaining, 0.5))
            return True
        finally:
            if not self._stopping.is_set():
                self._flushing.clear()

    def pending(self) -> int:
        """Updates journaled and not yet acknowledged."""
        return self.journal.pending_count()

    # --------------------------------------------------------------------------------- internals

    def _job_fields(self, record: JobRecord, final: bool) -> dict[str, Any]:
        fields = record.to_wire()
        job = self.journal.leased_job(record.panda_id) or {}
        fields.setdefault("siteName", self.config.site.queue)
        fields.setdefault("node", str(self.node.get("node", "")))
        for key, value in self.identity.items():
            fields.setdefault(key, value)
        fields["timestamp"] = wire.timestamp()
        attempt = attempt_nr_of(job)
        if attempt is not None:
            fields["attemptNr"] = attempt  # the server kills a job on a wrong attemptNr
        if final and record.state not in (JobState.FINISHED, JobState.FAILED):
            logger.warning("job %s: final update with state %s", record.panda_id, record.state)
        if "xml" in fields:
            fields["xml"] = json.dumps(_with_guids(json.loads(fields["xml"]), job))
        return fields

    def _recover(self) -> int:
        """Report what a previous run left in flight; returns the last outbox seq of the replay."""
        previous = self.journal.run - 1
        if previous <= 0:
            return 0
        # ranges first: the server only accepts range updates while their job is still active
        ranges = self.journal.in_flight(RANGE, before_run=self.journal.run)
        by_job: dict[int, list[str]] = {}
        for lease in ranges:
            by_job.setdefault(lease.panda_id, []).append(lease.key)
        for panda_id, ids in by_job.items():
            payload = [EventRangeUpdate(rid, EventRangeStatus.FAILED, int(RESTART_RANGE_ERROR),
                                        RESTART_RANGE_DIAG).to_wire() for rid in ids]
            self.journal.enqueue_range_update(panda_id, payload, 0, ids)
        jobs = self.journal.in_flight(JOB, before_run=self.journal.run)
        for lease in jobs:
            record = JobRecord(panda_id=lease.panda_id, state=JobState.FAILED)
            record.fail(RESTART_JOB_ERROR, RESTART_JOB_DIAG)
            self.journal.enqueue_job_update(lease.panda_id, self._job_fields(record, True), True)
        uncertain = self.journal.mark_run_uncertain(self.journal.run)
        replay = self.journal.pending()
        if uncertain:
            logger.warning("journal %s: %d update(s) of a previous run may have reached the server; each is "
                           "checked with the server before it is sent", self.journal.path, uncertain)
        if replay or jobs or ranges:
            logger.warning("journal %s from a previous run: %d job(s) and %d event range(s) were in flight "
                           "and are reported failed; %d update(s) to replay before leasing new work",
                           self.journal.path, len(jobs), len(ranges), len(replay))
        return replay[-1].seq if replay else 0

    def _wait_replayed(self) -> bool:
        if not self._replay_upto:
            return True
        end = time.monotonic() + self.fetch_deadline
        self._wake_senders()
        with self._cond:
            while True:
                head = self.journal.next_pending()
                if head is None or head.seq > self._replay_upto:
                    self._replay_upto = 0
                    return True
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))

    def _send_loop(self, shard: int) -> None:
        """One sender: the updates of the jobs of ``shard``, oldest first, with its own back-off (an update
        that keeps failing holds up only its shard's jobs, whose order must be kept anyway).  Range updates
        that their answer did not confirm (v1's 500) are parked until their job's one status look-up
        (``rangecheck``); meanwhile the sender goes on with the shard's other updates."""
        wake = self._wakes[shard]
        checks = RangeChecks()
        backoff = self.panda.retry_initial
        while not self._abort.is_set():
            wake.clear()
            progress = self._send_next(shard, checks)
            if progress is None:  # nothing to send now
                with self._cond:
                    self._cond.notify_all()
                wait = checks.wait_time(time.monotonic())
                wake.wait(timeout=5.0 if wait is None else min(5.0, max(wait, 0.01)))
                continue
            if progress:
                backoff = self.panda.retry_initial
                with self._cond:
                    self._cond.notify_all()
                continue
            pause = min(max(backoff, 0.01) * random.uniform(0.5, 1.5), max(self.panda.retry_max, 0.01))
            if self._abort.wait(pause):
                break
            backoff = min(backoff * 2, self.panda.retry_max)
        with self._cond:
            self._cond.notify_all()

    def _send_next(self, shard: int, checks: RangeChecks) -> bool | None:
        """Do the shard's next piece of work: a due look-up, else the oldest update not parked.
        True: progress; False: failed, back off; None: nothing to do now."""
        entry = self.journal.next_pending(shard, skip=checks.parked_seqs())
        job = checks.due_job(time.monotonic())
        if job is None and entry is not None and entry.kind == JOB and entry.final and checks.is_parked(entry.panda_id):
            job = entry.panda_id  # the server takes range updates only while the job is active: ranges first
        if job is None and entry is None and self._flushing.is_set():
            job = checks.due_job(time.monotonic(), flushing=True)  # all sent: check what is parked now
        if job is not None:
            return self._check_ranges(job, checks)
        if entry is None:
            return None
        if entry.kind != JOB and entry.uncertain:  # left open by a failed look-up or a previous run
            return self._check_ranges(entry.panda_id, checks)
        return self._send(entry, checks)

    def _send(self, entry: OutboxEntry, checks: RangeChecks) -> bool:
        """Deliver one outbox entry; False if it must be tried again later.  An answer that leaves the
        update's fate open is followed at once by one look-up (the server that answered is up), except
        v1's range-update 500, which is its normal answer: that update waits for its job's batched look-up."""
        outcome = self._send_once(entry, checks)
        if outcome is None:
            if entry.kind != JOB:
                return self._check_ranges(entry.panda_id, checks)
            outcome = self._send_once(dataclasses.replace(entry, uncertain=True), checks) is True
        return outcome

    def _send_once(self, entry: OutboxEntry, checks: RangeChecks) -> bool | None:
        """True: done with it (or parked); False: try again later; None: its fate is open (marked uncertain)."""
        try:
            if entry.uncertain:
                checked = self._check_job(entry)
                if checked is None:
                    return True
                entry = checked
            self._deliver(entry, checks)
        except UnconfirmedRangeUpdate as exc:
            self.journal.mark_uncertain(entry, str(exc))
            checks.park(entry.panda_id, entry.seq, count_ranges(entry.body), time.monotonic())
            return True
        except RequestRejected as exc:
            logger.error("server refused update #%d for job %s, not resending: %s", entry.seq, entry.panda_id,
                         exc)
            self._count(entry, wire.range_ids_of(entry.body["payload"]) if entry.kind != JOB else [], "rejected")
            self.journal.reject(entry, str(exc))
            return True
        except Ambiguous as exc:
            logger.warning("update #%d for job %s: %s; asking the server what it has before sending again",
                           entry.seq, entry.panda_id, exc)
            self.journal.mark_uncertain(entry, str(exc))
            return None
        except PandaError as exc:
            if entry.attempts == 0:
                logger.warning("update #%d for job %s not delivered yet: %s", entry.seq, entry.panda_id, exc)
            self.journal.note_failure(entry, str(exc))
            return False
        except Exception as exc:  # the sender thread must live on: the journal keeps the update
            logger.error("unexpected error sending update #%d for job %s: %s: %s", entry.seq, entry.panda_id,
                         type(exc).__name__, wire.snippet(str(exc), 200))
            self.journal.note_failure(entry, "internal error")
            return False
        return True

    def _deliver(self, entry: OutboxEntry, checks: RangeChecks) -> None:
        """Send one entry; on an acknowledging reply, remove it (or narrow it to what was not taken).

        The reply's server commands are queued before the entry leaves the outbox: ``flush`` returns once
        the outbox is empty, and a caller that then polls must find them (with several senders another
        sender's wake-up can end the flush in between)."""
        if entry.kind == JOB:
            names = self.client.update_job(entry.body)
            with self._lock:
                self._last_success = time.monotonic()
            if entry.final:
                self._set_final(entry.panda_id, "acknowledged")
                checks.forget(entry.panda_id)
            self._queue_commands({entry.panda_id: names})
            self.journal.acknowledge(entry)
            return
        result = self.client.update_event_ranges(entry.body["payload"], entry.body["version"])
        self._queue_commands(result.commands)
        ids = wire.range_ids_of(entry.body["payload"])
        taken = {rid for rid, ok in zip(ids, result.returns, strict=True) if ok is True}
        refused = [rid for rid, ok in zip(ids, result.returns, strict=True) if ok is False]
        self._count(entry, [rid for rid in ids if rid in taken], None)
        self._count(entry, refused, "rejected")
        unknown = set(ids) - taken - set(refused)
        if unknown:  # null for a final status: not stored, or not said; the server is asked next time
            narrowed = self.journal.narrow(entry, _only(entry.body, unknown))
            self.journal.mark_uncertain(narrowed, f"{len(unknown)} range(s) without a true/false answer")
        else:
            self.journal.acknowledge(entry)

    def _check_ranges(self, panda_id: int, checks: RangeChecks) -> bool:
        """One status look-up for every range update of a job whose fate is open: each is acknowledged,
        narrowed to what the server lacks (sent again next), or -- sent too often without ever showing up
        at the server -- refused for good.  False if the look-up failed (the updates stay uncertain)."""
        entries = self.journal.uncertain_range_updates(panda_id)
        if not entries:
            checks.settled(panda_id, None)
            return True
        ids = [rid for entry in entries for rid in wire.range_ids_of(entry.body["payload"])]
        try:
            known = self.client.range_statuses([(panda_id, self._task_of(panda_id, ids))],
                                               deadline=self.fetch_deadline)
        except PandaError as exc:
            checks.lookup_failed(panda_id)
            log = logger.warning if checks.failing == 1 else logger.debug
            log("job %s: status look-up for %d unconfirmed range update(s) failed: %s", panda_id, len(entries), exc)
            return False
        checks.settled(panda_id, len(known))
        ended = self._job_ended_at_server(panda_id) if any(
            checks.sends(entry.seq) >= MAX_UNCONFIRMED_SENDS for entry in entries) else False
        confirmed = resend = 0
        for entry in entries:
            verdict = settle(wire.range_ids_of(entry.body["payload"]), known)
            for status in set(verdict.have.values()):
                self._count(entry, [rid for rid, s in verdict.have.items() if s == status], status)
            confirmed += len(verdict.have)
            resend += len(verdict.missing)
            if not verdict.missing:
                self.journal.acknowledge(entry)
                checks.done(entry.seq)
            elif ended and checks.sends(entry.seq) >= MAX_UNCONFIRMED_SENDS:
                self._refuse_unconfirmed(entry, verdict.missing, checks.sends(entry.seq))
                checks.done(entry.seq)
            else:
                self.journal.narrow(entry, _only(entry.body, set(verdict.missing)))
        logger.debug("job %s: one look-up (%d range(s) listed) settles %d update(s): %d range(s) confirmed, %d to "
                     "send again", panda_id, len(known), len(entries), confirmed, resend)
        return True

    def _job_ended_at_server(self, panda_id: int) -> bool:
        """True when the server no longer runs the job (final, or unknown): it takes no range update of it any
        more.  While the job is active a range update it never shows is still owed (a failing server)."""
        try:
            state = self.client.job_statuses([panda_id], deadline=self.fetch_deadline).get(panda_id)
        except PandaError:
            return False
        return state in SERVER_FINAL_JOB_STATES or state in ("not found", "notfound")

    def _refuse_unconfirmed(self, entry: OutboxEntry, missing: Sequence[str], sends: int) -> None:
        reason = (f"sent {sends} times and never shown by the server's status look-up, and the job is no longer "
                  f"active there: {len(missing)} range(s), e.g. {missing[0]}")
        logger.error("job %s: update #%d refused for good: %s", entry.panda_id, entry.seq, reason)
        self._count(entry, list(missing), "rejected")
        self.journal.reject(entry, reason)

    def _check_job(self, entry: OutboxEntry) -> OutboxEntry | None:
        """A job update whose fate is unknown: ask the server.  None when it has it (the entry is then
        acknowledged); otherwise the entry, to be sent again."""
        state = self.client.job_statuses([entry.panda_id], deadline=self.fetch_deadline).get(entry.panda_id)
        if not entry.final:  # a heartbeat is done once the server's state is at or past it
            if _progress(state) < _progress(entry.body.get("state")):
                return entry
            self.journal.acknowledge(entry)
            return None
        if state not in SERVER_FINAL_JOB_STATES:
            logger.info("job %s: the server's state is %s; sending the final update again", entry.panda_id,
                        state)
            return entry
        logger.info("job %s: the server already has a final state (%s); not sent again", entry.panda_id, state)
        self._set_final(entry.panda_id, "acknowledged")
        self.journal.acknowledge(entry)
        return None

    def _task_of(self, panda_id: int, range_ids: Sequence[str]) -> int | None:
        """The jediTaskID of a job: the first field of its eventRangeIDs, else the journaled definition."""
        for value in [*(rid.split("-", 1)[0] for rid in range_ids), *self._task_fields(panda_id)]:
            with contextlib.suppress(PilotError):
                return parse_int(value, "jediTaskID")
        return None

    def _task_fields(self, panda_id: int) -> list[Any]:
        job = self.journal.leased_job(panda_id) or {}
        return [job.get("taskID"), job.get("jediTaskID")]

    def _count(self, entry: OutboxEntry, range_ids: Sequence[str], status: str | None) -> None:
        """Count acknowledged (or rejected) outcomes; ``status`` None = the status each range was sent with."""
        if entry.kind == JOB:
            if entry.final and status == "rejected":
                self._set_final(entry.panda_id, "rejected")
            return
        if not range_ids:
            return
        sent = _statuses(entry.body["payload"]) if status is None else {}
        with self._lock:  # delivery() copies the counts from rank 0's thread
            counter = self._acked.setdefault(entry.panda_id, Counter())
            for range_id in range_ids:
                counter[status or sent.get(range_id, "finished")] += 1

    def _set_final(self, panda_id: int, state: str) -> None:
        """The fate of a job's final update ('acknowledged' or 'rejected'), kept for delivery()."""
        with self._lock:
            self._final[panda_id] = state

    def delivery(self) -> Delivery:
        """What the server acknowledged this run (counted as acknowledgements come in), and what is still
        owed (the journal's in-memory outbox tally): no journal read, so summary.json, the closing line
        and the exit status cost the same at 10,000 jobs as at 100."""
        if self._closing_delivery is not None:
            return self._closing_delivery
        owed = self.journal.owed()
        with self._lock:
            ranges = {pid: dict(counts) for pid, counts in self._acked.items()}
            jobs = dict(self._final)
        for pid, n in owed.ranges.items():
            ranges.setdefault(pid, {})["owed"] = n
        jobs.update(dict.fromkeys(owed.final_jobs, "owed"))
        return Delivery(ranges, jobs, owed.entries, str(self.journal.path))

    def _queue_commands(self, commands: Mapping[int, list[str]]) -> None:
        with self._lock:
            for panda_id, names in commands.items():
                for name in names:
                    if panda_id in self._running:
                        logger.info("job %s: server command %s", panda_id, name)
                        self._commands.append(Command(panda_id, name))
                    else:
                        logger.info("job %s: server command %s ignored (job not running here)",
                                    panda_id, name)


def _with_guids(report: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """The output report with a GUID for every file: the log's from getJob's logGUID, new ones for outputs."""
    log_file = str(job.get("logFile") or "")
    log_guid = str(job.get("logGUID") or "")
    out: dict[str, Any] = {}
    for lfn, info in report.items():
        entry = dict(info) if isinstance(info, Mapping) else {}
        if wire.is_null(entry.get("guid")):
            entry["guid"] = log_guid if lfn == log_file and not wire.is_null(log_guid) else str(uuid.uuid4())
        out[lfn] = entry
    return out


_PROGRESS = {"starting": 1, "running": 2, "transferring": 3}


def _progress(state: Any) -> int:
    """How far a job's server state is along starting -> running -> transferring -> final (0 = before)."""
    if state in SERVER_FINAL_JOB_STATES:
        return 4
    return _PROGRESS.get(str(state), 0)


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


def _statuses(payload: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """eventRangeID -> the status it was sent with."""
    out: dict[str, str] = {}
    for item in payload:
        for event in item.get("eventRanges", [item]):
            out[str(event.get("eventRangeID"))] = str(event.get("eventStatus"))
    return out
