"""``PandaSource``: the JobSource for a PanDA server, on top of ``PandaClient`` and the journal.

* ``fetch_jobs``/``fetch_event_ranges`` are synchronous but bounded by a short deadline
  (``fetch_deadline``, default min(30 s, panda.call_deadline)); the lease is journaled before the
  job or range is returned.  Each call answers a ``FetchOutcome``: nothing leased with a status that
  tells why (0 ok, 20 no jobs, ``FETCH_UNREACHABLE``, ``FETCH_REPLAYING``, or another server StatusCode).
* ``update_job``/``update_event_ranges`` only journal and wake a sender (``hpcpilot.panda.senders``),
  so rank 0's loop never waits for HTTP.  An update leaves the outbox only when the server proved it
  has it (``hpcpilot.panda.verdict``); ``delivery()`` tells what was acknowledged and what is owed.
* ``poll`` returns the server's backchannel commands and the lost-heartbeat ones
  (``hpcpilot.panda.commands``).
* On construction, what a previous run on the same workdir left is replayed and its leases are
  reported failed (``hpcpilot.panda.recovery``); no new job or range is leased before that replay has
  been acknowledged.
* ``pilotSecrets``/``secrets`` are taken out of leased job definitions (never journaled, never
  returned in the dict) and are available from ``job_secrets(panda_id)``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpilot import __version__
from hpcpilot.batchinfo import pilot_identity
from hpcpilot.config import SiteConfig
from hpcpilot.journal import Journal
from hpcpilot.panda import wire
from hpcpilot.panda.auth import register_secret
from hpcpilot.panda.client import PandaClient
from hpcpilot.panda.commands import Backchannel
from hpcpilot.panda.failures import PandaError, ServerUnusable
from hpcpilot.panda.gpumap import gpu_map_fields
from hpcpilot.panda.recovery import Replay
from hpcpilot.panda.senders import Outlet, Senders
from hpcpilot.panda.tally import DeliveryTally
from hpcpilot.panda.workernode import worker_node_fields
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec, attempt_nr_of, panda_id_of, show_value
from hpcpilot.sources import Command, Delivery, FetchOutcome, OutputBundle
from hpcpilot.states import EventRangeStatus, JobState

logger = logging.getLogger(__name__)

JOURNAL_NAME = "panda-journal.sqlite"
FETCH_UNREACHABLE = -1
FETCH_REPLAYING = -2
FETCH_REFUSED = -3
FETCH_UNUSABLE = -4
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

    concurrent_fetches = 64
    """Fetch calls may run in several threads at once (the controller pipelines getJob): the journal and the
    client lock their shared state, and each call answers its own ``FetchOutcome``."""

    coordinates_clones = True
    """The server's event table decides which clone of a job set goes on (``Controller.ask_clone``)."""

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
        self._secrets: dict[int, dict[str, Any]] = {}
        self._nodes_reported: set[str] = set()
        self._closed = False
        self._closing_delivery: Delivery | None = None  # the last word, once the journal is closed
        self.tally = DeliveryTally()
        self.backchannel = Backchannel(self.panda.lost_heartbeat)
        self.replay = Replay(self.journal, self._job_fields)
        self.senders = Senders(Outlet(self.journal, self.client, self.panda, self.fetch_deadline, self.tally,
                                      self.backchannel))
        self.senders.start()

    # ------------------------------------------------------------------------- JobSource methods

    def abandon(self) -> list[Mapping[str, Any]]:
        """A PanDA server hands out only what was leased, and leased jobs are all started: none."""
        return []

    matches_architecture = True
    """acquire_jobs takes the ranks' ``target_architecture`` (on panda-server >= 1.0; see PandaClient)."""

    def fetch_jobs(self, n: int, architecture: str | None = None) -> FetchOutcome:
        """Lease up to ``n`` (at most panda.jobs_per_fetch) jobs for ranks of ``architecture`` (their
        ``target_architecture``, sent where the server takes it); journaled before they are returned.
        Nothing leased with a negative status is a failed request (the outcome's ``error`` says why)."""
        if n <= 0:
            return FetchOutcome()
        if not self.replay.wait(self.senders, self.fetch_deadline):
            return self._fetch_failed(FETCH_REPLAYING, REPLAYING)
        try:
            status, jobs = self.client.acquire_jobs(min(n, max(1, self.panda.jobs_per_fetch)), self.node,
                                                    deadline=self.fetch_deadline, target=architecture)
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
        self.backchannel.started(panda_id)
        return clean

    def update_job(self, record: JobRecord, final: bool) -> None:
        """Journal a heartbeat or the final update; the sender delivers it."""
        fields = self._job_fields(record, final)
        self.journal.enqueue_job_update(record.panda_id, fields, final)
        if final:
            self.backchannel.ended(record.panda_id)
        self.senders.wake(record.panda_id)

    def fetch_event_ranges(self, job: JobSpec, n: int) -> FetchOutcome:
        """Lease up to ``n`` event ranges; journaled before they are returned."""
        if n <= 0:
            return FetchOutcome()
        if not self.replay.wait(self.senders, self.fetch_deadline):
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
        self.senders.wake(job.panda_id)

    def report_worker_node(self, node: Mapping[str, Any]) -> None:
        """Send one node's worker-node map (v1 ``update_worker_node``, 0.8.1 and 1.0) and, on a GPU node, its GPU
        map (``update_worker_node_gpu``, one call per GPU model) from a short-lived thread,
        so rank 0's loop never waits for it.  Best effort: the map serves brokerage, no job depends on it, so a
        failure is one INFO line and is not retried.  Not sent with ``panda.api = legacy`` (no such method)."""
        name = str(node.get("node") or "")
        with self._lock:
            if not name or name in self._nodes_reported or self.panda.api == "legacy":
                return
            self._nodes_reported.add(name)
        fields = worker_node_fields(node, self.config.site.name, self.config.site.queue)
        gpu_maps = gpu_map_fields(node, self.config.site.name)
        threading.Thread(target=self._send_worker_node, args=(fields, gpu_maps), name="panda-worker-node",
                         daemon=True).start()

    def _send_worker_node(self, fields: Mapping[str, Any], gpu_maps: Sequence[Mapping[str, Any]] = ()) -> None:
        """The worker-node map, then the GPU map (one call per GPU model), as pilot3 sends them: the GPU rows
        name the host of the worker-node row."""
        try:
            said = self.client.update_worker_node(fields, deadline=self.fetch_deadline)
        except PandaError as exc:
            logger.info("worker-node map of %s not sent: %s", fields.get("host_name"), exc)
        else:
            logger.info("worker-node map of %s sent (%s)", fields.get("host_name"), said or "ok")
        if not gpu_maps:
            return
        try:
            release_1_0 = self.client.is_release_1_0(self.fetch_deadline)
        except PandaError as exc:
            logger.info("GPU map of %s not sent: %s", fields.get("host_name"), exc)
            return
        if not release_1_0:
            logger.info("GPU map of %s not sent: the server is older than panda-server 1.0, whose "
                        "update_worker_node_gpu stores nothing", fields.get("host_name"))
            return
        for gpu_map in gpu_maps:
            try:
                said = self.client.update_worker_node_gpu(gpu_map, deadline=self.fetch_deadline)
            except PandaError as exc:
                logger.info("GPU map of %s (%s) not sent: %s", gpu_map.get("host_name"), gpu_map.get("model"), exc)
                continue
            logger.info("GPU map of %s sent: %d x %s (%s)", gpu_map.get("host_name"), gpu_map.get("count"),
                        gpu_map.get("model"), said or "ok")

    def rank_ready(self, rank: int, node: Mapping[str, Any]) -> None:
        """Nothing to keep: a rank's architecture comes with each fetch for it (``fetch_jobs``)."""

    def poll(self, now: float) -> list[Command]:
        """Commands received since the last poll, plus 'lostheartbeat' per running job when no job
        update succeeded for panda.lost_heartbeat seconds.  (``now`` is accepted for the interface;
        elapsed times are measured on the monotonic clock.)"""
        return self.backchannel.poll()

    def close(self) -> None:
        """Deliver what is owed within ``close_deadline``; what is left stays journaled for the next run."""
        if self._closed:
            return
        self._closed = True
        delivered = self.senders.flush(self.close_deadline, last=True)
        self.senders.abort()
        self.client.close()  # interrupts a sender's back-off inside a call
        busy = self.senders.join(min(self.panda.read_timeout + 1.0, 5.0))
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

    def delivery(self) -> Delivery:
        """What the server acknowledged this run (counted as acknowledgements come in), and what is still
        owed (the journal's in-memory outbox tally): no journal read, so summary.json, the closing line
        and the exit status cost the same at 10,000 jobs as at 100."""
        if self._closing_delivery is not None:
            return self._closing_delivery
        return self.tally.report(self.journal.owed(), str(self.journal.path))

    # ------------------------------------------------------------------------------------ extras

    def job_secrets(self, panda_id: int) -> dict[str, Any]:
        """pilotSecrets/secrets of a leased job (kept in memory only)."""
        merged = dict(self._secrets.get(panda_id, {}))
        if panda_id in self.client.pilot_secrets:
            merged["pilotSecrets"] = self.client.pilot_secrets[panda_id]
        return merged

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to empty; True if it did."""
        return self.senders.flush(timeout)

    def pending(self) -> int:
        """Updates journaled and not yet acknowledged."""
        return self.journal.pending_count()

    # --------------------------------------------------------------------------------- internals

    def _job_fields(self, record: JobRecord, final: bool) -> dict[str, Any]:
        """The updateJob fields of a record: what the pilot knows beside it (site, node, identity, attemptNr, a
        GUID for every output)."""
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
