"""``HarvesterSource``: the JobSource for a Harvester access point (rank 0 only).

Jobs and event ranges come in as files Harvester wrote; reports go out as files Harvester reads
(see ``hpcpilot.harvester.layout`` for where, ``hpcpilot.harvester.files`` for how).

Late binding.  When rank 0 asks for jobs and none is left, the source writes
``worker_requestjob.json`` (``{"nJobs": n}``) and answers "nothing now" (a ``FetchOutcome`` status < 0),
so rank 0 asks again after ``harvester.poll_interval``; once Harvester has deleted the request
(it does so after writing the new job files) the new jobs are read.  Event ranges likewise: when
rank 0 leases ranges and fewer than it asked for are left in hand, ``worker_requestevents.json``
asks for as many as rank 0 just wanted (its prefetch), so the next feed is on its way before the
ranges in hand run out; each ``JobsEventRanges.json`` is renamed aside before it is read.  A feed
with an empty list for a job means Harvester has no more ranges for it.  The pilot waits at
most ``harvester.feed_timeout`` seconds after it found nothing in hand before it concludes that
nothing is coming (jobs: the pilot winds down; ranges: the job ends), and ``close`` withdraws
open requests and writes ``kill_worker.json``.  ``feed_timeout = 0`` never asks: the pilot runs
what the access point held at start.

Bounded at scale.  A feed is not held in memory: it is checked when taken and its ranges are
decoded as they are leased (``hpcpilot.harvester.feed``).  Range statuses gather for
``harvester.status_interval`` seconds and are then appended to ``event_status.dump.json`` in place
(``EventStatusFile``), at a cost of what is added, however much Harvester has not taken yet; a
job's outputs and log are written at once, and ``close`` (also after a signal: the controller winds
down and closes the source) writes what is gathered.  The Harvester path has no journal: a pilot
killed outright (SIGKILL) loses the statuses of at most the last interval, and Harvester, having
no status for those ranges, re-dispatches them, exactly as it does the ranges that were in flight.

Secrets: ``pilotSecrets``/``secrets`` are taken out of each job definition before it is queued
(so they reach no rank, workdir, log tarball or report), registered for log redaction and kept
in memory only, for ``job_secrets``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcpilot.config import HarvesterConfig
from hpcpilot.errors import ConfigError
from hpcpilot.harvester.catalog import place_inputs
from hpcpilot.harvester.feed import FeedList, RangeStock, scan_feed
from hpcpilot.harvester.files import EventStatusFile, Request, take_aside, write_json_atomically
from hpcpilot.harvester.layout import AccessPoint, FoundJob
from hpcpilot.harvester.reports import node_maps, output_entries, worker_attributes, write_job_report
from hpcpilot.panda.auth import install_log_redaction, register_secret
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec, RangeOutcomes, panda_id_of, show_value
from hpcpilot.sources import Command, FetchOutcome, OutputBundle

log = logging.getLogger(__name__)


FETCH_OK = 0
FETCH_AWAITING_FEED = -1
"""The status of an empty fetch while a request to Harvester is open: ask again later."""
HEARTBEAT_INTERVAL = 60.0
SECRET_KEYS = ("pilotSecrets", "secrets")


class HarvesterSource:
    """Jobs from the access point's job-spec files; reports to the files Harvester reads."""

    concurrent_fetches = 1
    """Fetch calls (jobs, ranges) this source takes at once: one, the access point has one request file."""

    coordinates_clones = False
    """Clone jobs are not coordinated through the access point's files: every clone goes on
    (``Controller.ask_clone`` says why)."""

    def __init__(self, access_point: Path, config: HarvesterConfig | None = None,
                 clock: Callable[[], float] = time.time, *, site: str = "", queue: str = "") -> None:
        self.cfg = config if config is not None else HarvesterConfig()
        self.site, self.site_queue = site, queue  # the worker-node map's site and panda_queue
        self.rank_nodes: dict[int, Mapping[str, Any]] = {}  # rank -> its node info (Ready), for the job reports
        self.ap = AccessPoint(access_point, self.cfg)
        self.dir = self.ap.dir
        self.clock = clock
        self.lock = threading.Lock()  # the fetch thread and rank 0's loop both use the job tables
        self.seen: set[str] = set()
        self.queue: deque[Any] = deque()
        self.job_dirs: dict[int, Path] = {}
        self.log_files: dict[int, str] = {}
        self.secrets: dict[int, dict[str, Any]] = {}
        self.job_request = Request(self.ap.top(self.cfg.job_request_file))
        self.jobs_wait_since: float | None = None
        self.no_more_jobs = False
        self.ranges: dict[int, RangeStock] = {}
        self.range_requests: dict[Path, Request] = {}
        self.range_wait_since: dict[int, float] = {}
        self.no_more_ranges: set[int] = set()
        self.status_files: dict[Path, EventStatusFile] = {}
        self.status_written = 0.0  # when the gathered range statuses were last written
        self.gathering: dict[Path, EventStatusFile] = {}  # the files with statuses not written yet
        self.last_heartbeat = 0.0
        self.closed = False
        install_log_redaction()
        self._queue_jobs(self.ap.read_jobs(self.seen, strict=True))
        self._take_range_feeds(strict=True)

    # ---- JobSource: jobs ----------------------------------------------------------------

    matches_architecture = False
    """The access point holds what Harvester put there, for any rank."""

    def fetch_jobs(self, n: int, architecture: str | None = None) -> FetchOutcome:
        if n <= 0:
            return FetchOutcome()
        if self.job_request.answered():
            self.job_request.close()
            found = self.ap.read_jobs(self.seen, strict=False)
            if found:
                log.info("Harvester fed %d job(s)", len(found))
                self._queue_jobs(found)
        with self.lock:
            taken = [self.queue.popleft() for _ in range(min(n, len(self.queue)))]
        if taken:
            self.jobs_wait_since = None
            return FetchOutcome(taken, FETCH_OK)
        return FetchOutcome([], self._wait_for_jobs(n))

    def _wait_for_jobs(self, n: int) -> int:
        """Ask Harvester for ``n`` jobs, or conclude that none is coming; the fetch status to answer with."""
        if self.cfg.feed_timeout <= 0 or self.no_more_jobs or self.closed:
            return FETCH_OK
        now = self.clock()
        if self.jobs_wait_since is None:
            self.jobs_wait_since = now
        if now - self.jobs_wait_since >= self.cfg.feed_timeout:
            log.info("Harvester fed no job within %.0f s of being asked: no more jobs", self.cfg.feed_timeout)
            self.job_request.withdraw()
            self.no_more_jobs = True
            return FETCH_OK
        if not self.job_request.is_open:
            log.info("asking Harvester for %d job(s) (%s)", n, self.job_request.path.name)
            self.job_request.open({"nJobs": n}, now)
        return FETCH_AWAITING_FEED

    def report_worker_node(self, node: Mapping[str, Any]) -> None:
        """Harvester has no worker-node endpoint: the maps go into each job's report instead (``rank_ready``)."""

    def rank_ready(self, rank: int, node: Mapping[str, Any]) -> None:
        """Keep the rank's node info: a job's final jobReport.json carries its node's maps, as pilot3's does."""
        with self.lock:
            self.rank_nodes[rank] = node

    def abandon(self) -> list[Mapping[str, Any]]:
        """Jobs read from the access point and never started: the pilot is stopping."""
        with self.lock:
            taken, self.queue = list(self.queue), deque()
        return taken

    def _queue_jobs(self, found: Sequence[FoundJob]) -> None:
        for item in found:
            job = item.job
            if isinstance(job, dict):
                panda_id = panda_id_of(job)
                if not panda_id and panda_id_of({"PandaID": item.key}):
                    # Harvester files every job under its PandaID: that key is the job's identity
                    panda_id = panda_id_of({"PandaID": item.key})
                    log.error("job %s: its PandaID %s is not a number; taken from the access point", panda_id,
                              show_value(job.get("PandaID"), 40))
                    job["PandaID"] = panda_id
                secrets = {k: job.pop(k) for k in SECRET_KEYS if k in job}
                if secrets:
                    register_secret(secrets)
                    self.secrets[panda_id] = secrets
                if self.cfg.stage == "harvester":
                    place_inputs(job, item.job_dir, [item.job_dir / self.cfg.pool_catalog_file,
                                                     self.ap.top(self.cfg.pool_catalog_file)])
                with self.lock:
                    self.job_dirs[panda_id] = item.job_dir
                    self.log_files[panda_id] = job["logFile"] if isinstance(job.get("logFile"), str) else ""
            with self.lock:
                self.seen.add(item.key)
                self.queue.append(job)

    def job_secrets(self, panda_id: int) -> dict[str, Any]:
        """pilotSecrets/secrets of a job (kept in memory only)."""
        return dict(self.secrets.get(panda_id, {}))

    # ---- JobSource: event ranges --------------------------------------------------------

    def fetch_event_ranges(self, job: JobSpec, n: int) -> FetchOutcome:
        panda_id = job.panda_id
        self._take_range_feeds(strict=False, directories={self.dir, self.job_dir(panda_id)})
        taken = self._stock(panda_id).take(n)
        self._ask_for_ranges(job, n)
        if taken:
            self.range_wait_since.pop(panda_id, None)
            return FetchOutcome(taken, FETCH_OK)
        return FetchOutcome([], self._wait_for_ranges(panda_id))

    def _ask_for_ranges(self, job: JobSpec, n: int) -> None:
        """Ahead of demand: ask for ``n`` more once fewer than ``n`` are in hand (one request open per directory)."""
        panda_id = job.panda_id
        if (self.cfg.feed_timeout <= 0 or panda_id in self.no_more_ranges or self.closed
                or self._stock(panda_id).count >= n):
            return
        request = self._range_request(self.job_dir(panda_id))
        if request.is_open:
            return
        log.debug("job %d: asking Harvester for %d event range(s)", panda_id, n)
        request.open({str(panda_id): {"nRanges": n, "pandaID": panda_id, "taskID": job.task_id,
                                      "jobsetID": job.jobset_id}}, self.clock())

    def _wait_for_ranges(self, panda_id: int) -> int:
        if self.cfg.feed_timeout <= 0 or panda_id in self.no_more_ranges or self.closed:
            return FETCH_OK
        now = self.clock()
        since = self.range_wait_since.setdefault(panda_id, now)
        if now - since < self.cfg.feed_timeout:
            return FETCH_AWAITING_FEED
        log.info("job %d: Harvester fed no event range within %.0f s: no more ranges", panda_id,
                 self.cfg.feed_timeout)
        self.no_more_ranges.add(panda_id)
        self._range_request(self.job_dir(panda_id)).withdraw()
        return FETCH_OK

    def _range_request(self, directory: Path) -> Request:
        if directory not in self.range_requests:
            self.range_requests[directory] = Request(directory / self.cfg.events_request_file)
        return self.range_requests[directory]

    def _stock(self, panda_id: int) -> RangeStock:
        return self.ranges.setdefault(panda_id, RangeStock())

    def _take_range_feeds(self, strict: bool, directories: set[Path] | None = None) -> None:
        """Take every complete range feed: one in a directory whose request Harvester has answered (or without one).

        A lease looks only where its job's feed can be (its directory, the top): with a directory per
        job, looking in all of them made every lease cost the number of jobs.
        """
        if directories is None:
            with self.lock:
                directories = {self.dir, *self.job_dirs.values()}
        for directory in sorted(directories):
            request = self.range_requests.get(directory)
            if request is not None and request.is_open and not request.answered():
                continue  # Harvester may be writing the feed right now
            if request is not None:
                request.close()
            aside = take_aside(directory / self.cfg.event_ranges_file)
            if aside is not None:
                self._read_range_feed(aside, strict)

    def _read_range_feed(self, path: Path, strict: bool) -> None:
        """Check a feed whole and put where its ranges are in hand; they are decoded as they are leased."""
        try:
            sections = scan_feed(path, self.cfg.event_ranges_file)
        except ConfigError as exc:
            if strict:
                raise
            log.error("%s; its ranges are not used", exc)
            return
        for section in sections:
            panda_id = panda_id_of({"PandaID": section.key})
            if section.offset < 0:
                log.error("%s: ranges of job %s are not a list; not used", path, section.key)
                continue
            if not section.count:
                log.info("job %d: Harvester has no more event ranges", panda_id)
                self.no_more_ranges.add(panda_id)
                continue
            self._stock(panda_id).add(FeedList(path, section.offset, section.count))

    def update_event_ranges(self, job: JobSpec, updates: Sequence[EventRangeUpdate],
                            bundle: OutputBundle | None = None) -> None:
        batch = RangeOutcomes.of(updates)  # (the outbox's columns as they are)
        if bundle is None and not any(batch.outputs) and not any(batch.error_codes):  # a plain report
            entries = [{"eventRangeID": range_id, "eventStatus": status}
                       for range_id, status in zip(batch.ids, map(str, batch.statuses), strict=True)]
        else:
            entries = self._entries(updates, bundle)
        status = self._status_file(job.panda_id)
        status.queue({str(job.panda_id): entries})
        self.gathering[status.path] = status
        self.write_statuses(self.clock())

    @staticmethod
    def _entries(updates: Sequence[EventRangeUpdate], bundle: OutputBundle | None) -> list[dict[str, Any]]:
        """The status file's entry of each update: with its bundle's or its own output file, and its error."""
        entries = []
        in_bundle = frozenset(bundle.range_ids) if bundle is not None else frozenset()  # O(1) per update
        for update in updates:
            entry: dict[str, Any] = {"eventRangeID": update.event_range_id, "eventStatus": str(update.status)}
            if bundle is not None and (not bundle.range_ids or update.event_range_id in in_bundle):
                entry.update({"path": bundle.path, "type": "zip_output", "fsize": bundle.fsize,
                              "chksum": bundle.adler32, "guid": bundle.guid})
            elif update.output:
                entry.update({"path": update.output, "type": "es_output", "fsize": update.fsize,
                              "chksum": update.adler32})
            if update.error_code:
                entry["errorCode"] = update.error_code
            entries.append(entry)
        return entries

    # ---- JobSource: reports ---------------------------------------------------------------

    def update_job(self, record: JobRecord, final: bool) -> None:
        job_dir = self.job_dir(record.panda_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(job_dir / self.cfg.attributes_file, worker_attributes(record))
        if final:
            node = self.rank_nodes.get(record.rank)
            maps = node_maps(node, self.site, self.site_queue) if node else None
            write_job_report(job_dir / self.cfg.job_report_file, record, maps)
            status = self._status_file(record.panda_id)
            status.queue({str(record.panda_id): output_entries(record, self.log_files.get(record.panda_id))})
            status.flush()  # after the job's range statuses: Harvester may finish the job on seeing its log

    def poll(self, now: float) -> list[Command]:
        if now - self.last_heartbeat >= HEARTBEAT_INTERVAL:
            self.write_heartbeat(now)
        self.write_statuses(now)
        return []

    def delivery(self) -> None:
        """No acknowledgements: a report is delivered once its file is written (the controller counts them)."""
        return None

    def close(self) -> None:
        """The worker is done: statuses written, no request stays open, and Harvester is told (kill_worker.json)."""
        self.write_statuses(self.clock(), due=True)
        self.closed = True
        for stock in self.ranges.values():
            stock.close()
        self.job_request.withdraw()
        for request in self.range_requests.values():
            request.withdraw()
        now = self.clock()
        self.write_heartbeat(now)
        write_json_atomically(self.ap.top(self.cfg.kill_worker_file), {"time": now, "pid": os.getpid()})

    # ---- files ------------------------------------------------------------------------

    def job_dir(self, panda_id: int) -> Path:
        """The directory of a job's per-job files (the access point itself for a job it never read)."""
        with self.lock:
            return self.job_dirs.get(panda_id, self.dir)

    def _status_file(self, panda_id: int) -> EventStatusFile:
        directory = self.job_dir(panda_id)
        if directory not in self.status_files:
            directory.mkdir(parents=True, exist_ok=True)
            self.status_files[directory] = EventStatusFile(directory / self.cfg.event_status_file)
        return self.status_files[directory]

    def write_statuses(self, now: float, due: bool = False) -> None:
        """Append the gathered range statuses, once per ``status_interval`` (``due``: now).

        A file that cannot be written keeps its statuses for the next time (logged); Harvester
        re-dispatches the ranges of statuses that never reach it.
        """
        if not due and now - self.status_written < self.cfg.status_interval:
            return
        self.status_written = now
        for path, status in list(self.gathering.items()):
            try:
                status.flush()
            except OSError as exc:
                log.error("%s: cannot write event statuses (%s); %d kept to try again", status.path, exc,
                          sum(len(v) for v in status.pending.values()))
                continue
            del self.gathering[path]

    def write_heartbeat(self, now: float) -> None:
        self.last_heartbeat = now
        write_json_atomically(self.ap.top(self.cfg.heartbeat_file), {"time": now, "pid": os.getpid()})
