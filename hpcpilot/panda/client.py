"""HTTP client for the PanDA server (rank 0 only): both APIs, retries, deadlines, credentials.

One ``requests.Session`` (connection reuse).  What a reply proves is decided by ``replies.py``; what a
*failure* means -- whether the request may be sent again as it is -- by ``failures.py``, whose errors
(``ServerUnavailable``, ``Ambiguous``, ``ServerUnusable``, ``RequestRejected``) this client raises.
Retries use back-off and jitter until the call's deadline (``panda.call_deadline`` unless the caller
gives a shorter one); an update that may have been committed (``Ambiguous``) is never re-sent here.

Failures are logged once per episode (the first at WARNING, with the real cause; the rest at DEBUG;
the recovery at INFO), so a long outage does not flood the log.

``api = "auto"`` tries v1 first and, the first time a v1 endpoint answers 404, remembers to use the
legacy path for that call from then on (panda-server < 0.8 has no v1; >= 1.0 has only v1 and answers
every legacy path with HTTP 403 "method X is forbidden", which is read as "no legacy API here").
v1 ``update_event_ranges`` answers HTTP 500 on every release, also after committing (panda-wire A.5):
``UnconfirmedRangeUpdate``, said once at INFO; the source settles it with one look-up per job.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters

from hpcpilot.config import PandaConfig, SiteSection
from hpcpilot.panda import replies, wire
from hpcpilot.panda.auth import AuthError, Credentials, install_log_redaction, register_secret
from hpcpilot.panda.failures import (
    Ambiguous,
    EndpointMissing,
    MaybeSent,
    NoLegacyApi,
    NotSent,
    PandaError,
    RequestRejected,
    ServerUnavailable,
    ServerUnusable,
    UnconfirmedRangeUpdate,
    cause,
    certificate_rejected,
    classify_http,
    never_sent,
)

logger = logging.getLogger(__name__)

USER_AGENT = "hpcpilot/0.1"
MIN_ATTEMPT = 0.05
"""Seconds an attempt needs at least: with less left before the call's deadline, the call gives up."""


@dataclass
class EventRangesResult:
    """What updateEventRanges answered: per-range True/False/None and commands per PandaID."""

    returns: list[Any] = field(default_factory=list)
    commands: dict[int, list[str]] = field(default_factory=dict)


@dataclass
class _Reply:
    status: int
    content: bytes
    api: str


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server_url(url: str, carries_token: bool) -> None:
    """Refuse, in one line, a server URL that cannot work: not http(s), no host, or a token over plain
    http to a host that is not this machine."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _port = parts.port
    except ValueError as exc:
        raise ServerUnusable(f"panda.server {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ServerUnusable(f"panda.server {url!r} is not an http:// or https:// URL with a host")
    if carries_token and parts.scheme == "http" and not is_loopback(host):
        raise ServerUnusable(f"refusing to send a bearer token over plain http to {host}: use https")


def _session(connections: int) -> requests.Session:
    """A session keeping one HTTP connection per sender and per getJob in flight: urllib3 keeps 10 per host
    by default and, with more threads than that, drops the extras after each call (a new TCP/TLS handshake
    next time, and a warning per drop)."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(connections, requests.adapters.DEFAULT_POOLSIZE))
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    return session


def get_job_fields(site: SiteSection, n: int, node_info: Mapping[str, Any],
                   target: str | None = None) -> dict[str, Any]:
    """The getJob request (legacy names, panda-wire B.3); ``target`` is the ranks' ``target_architecture``, given
    only for a server that takes it (1.0)."""
    fields: dict[str, Any] = {
        "siteName": site.queue,
        "computingElement": site.queue,
        "prodSourceLabel": site.prod_source_label,
        "node": str(node_info.get("node", "")),
        "diskSpace": int(node_info.get("disk", 0) or 0),
        "mem": int(node_info.get("mem", 0) or 0),
        "cpu": int(node_info.get("cpu", 0) or 0),
        "nJobs": max(1, int(n)),
    }
    if site.resource_type:
        fields["resourceType"] = site.resource_type
    for key, env in (("harvester_id", "HARVESTER_ID"), ("worker_id", "HARVESTER_WORKER_ID")):
        if os.environ.get(env):
            fields[key] = os.environ[env]
    if target is not None:
        fields[wire.TARGET_ARCHITECTURE] = target
    return fields


def _parse(reply: _Reply, method: str, parser: Any, ambiguous: bool) -> Any:
    """Decode and parse a reply; one that proves nothing is ``Ambiguous`` for an update that may
    have been committed, ``ServerUnavailable`` otherwise."""
    try:
        return parser(replies.decode_body(reply.content), reply.api == "v1")
    except wire.WireError as exc:
        error = Ambiguous if ambiguous else ServerUnavailable
        raise error(f"{method}: not acknowledged: {exc}") from None


class PandaClient:
    """The pilot's calls against one PanDA server, in the dialect the config asks for."""

    def __init__(self, panda: PandaConfig, site: SiteSection, credentials: Credentials | None = None,
                 *, legacy_accept_json: bool = True) -> None:
        if not panda.server:
            raise PandaError("panda.server is empty: no PanDA server configured")
        install_log_redaction()
        self.panda = panda
        self.site = site
        self.base = panda.server.rstrip("/")
        self.credentials = credentials if credentials is not None else Credentials.from_environ(panda.ca_dir)
        check_server_url(self.base, self.credentials.token is not None)
        self.legacy_accept_json = legacy_accept_json
        self.session = _session(panda.senders + panda.fetches_in_flight)
        self.pilot_secrets: dict[int, Any] = {}
        self._resolved: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._trouble = ""
        self._told_range_500 = False
        self._takes_target: bool | None = None  # None: not yet known (see is_release_1_0)
        logger.info("PanDA client for %s (api %s; %s)", self.base, panda.api, self.credentials.describe())

    # ------------------------------------------------------------------------------ public calls

    def api_for(self, method: str) -> str:
        """'v1' or 'legacy': what this client uses (or will try first) for ``method``."""
        if self.panda.api != "auto":
            return self.panda.api
        with self._lock:
            return self._resolved.get(method, "v1")

    def acquire_jobs(self, n: int, node_info: Mapping[str, Any], deadline: float | None = None,
                     target: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Ask for up to ``n`` jobs.  Returns (StatusCode, jobs); 20 = the server said "no jobs".  ``target`` (a
        ``target_architecture`` JSON string) goes only to a server that takes it (``is_release_1_0``)."""
        if target is not None and not self.is_release_1_0(deadline):
            target = None
        fields = get_job_fields(self.site, n, node_info, target)
        reply = self._call(wire.GET_JOB, fields, deadline, repeatable=True)
        answer = _parse(reply, wire.GET_JOB, replies.parse_jobs, ambiguous=False)
        if answer.status == wire.STATUS_TIMEOUT:
            raise ServerUnavailable(f"getJob: the server timed out (StatusCode 10) {answer.message}".strip())
        if answer.status not in (wire.STATUS_OK, wire.STATUS_NO_JOBS):
            logger.warning("getJob answered StatusCode %s: %s", answer.status, wire.snippet(answer.message or "-", 200))
        for job in answer.jobs:
            for key in ("pilotSecrets", "secrets"):
                if not wire.is_null(job.get(key)):
                    register_secret(job[key])
        logger.info("getJob (%s): StatusCode %s, %d job(s) for %d asked", reply.api, answer.status,
                    len(answer.jobs), n)
        return answer.status, answer.jobs

    def update_job(self, fields: Mapping[str, Any], deadline: float | None = None) -> list[str]:
        """Send one updateJob (legacy field names); returns the backchannel commands of the reply.

        An answer that leaves its fate open (5xx, a timeout after sending, a reply that proves nothing)
        raises ``Ambiguous``: one look-up of the job's state then settles it, cheaper than repeating."""
        prepared = wire.prepare_update(fields)
        reply = self._call(wire.UPDATE_JOB, prepared, deadline, repeatable=False)
        answer = _parse(reply, wire.UPDATE_JOB, replies.parse_job_update, ambiguous=True)
        job_id = prepared.get("jobId")
        if answer.status == wire.STATUS_TIMEOUT:
            raise Ambiguous(f"updateJob {job_id}: the server timed out (StatusCode 10)")
        if answer.status != wire.STATUS_OK:
            raise RequestRejected(f"updateJob {job_id}: StatusCode {answer.status}: "
                                  f"{wire.snippet(answer.message or '-', 200)}")
        if answer.secrets is not None:
            register_secret(answer.secrets)
            self.pilot_secrets[int(str(job_id))] = answer.secrets
        logger.info("updateJob %s state=%s (%s): command %s", job_id, prepared.get("state"), reply.api,
                    ",".join(answer.commands) or "NULL")
        return answer.commands

    def acquire_event_ranges(self, panda_id: int, jobset_id: int | None, task_id: int | None, n: int,
                             deadline: float | None = None) -> list[dict[str, Any]]:
        """Lease up to ``n`` event ranges of a job; an empty list means no more ranges."""
        fields: dict[str, Any] = {"pandaID": panda_id, "jobsetID": jobset_id, "taskID": task_id,
                                  "nRanges": max(1, int(n))}
        reply = self._call(wire.GET_EVENT_RANGES, fields, deadline, repeatable=True)
        answer = _parse(reply, wire.GET_EVENT_RANGES, replies.parse_ranges, ambiguous=False)
        if answer.status == wire.STATUS_TIMEOUT:
            raise ServerUnavailable(f"getEventRanges {panda_id}: the server timed out (StatusCode 10)")
        if answer.status != wire.STATUS_OK:
            raise RequestRejected(f"getEventRanges {panda_id}: StatusCode {answer.status}: "
                                  f"{wire.snippet(answer.message or '-', 200)}")
        logger.info("getEventRanges %s (%s): %d range(s) for %d asked", panda_id, reply.api, len(answer.ranges), n)
        return answer.ranges

    def update_event_ranges(self, payload: Sequence[Mapping[str, Any]], version: int = 0,
                            deadline: float | None = None) -> EventRangesResult:
        """Report event-range statuses (payload as in panda-wire C.2).  Any answer that does not prove
        the update (including v1's HTTP 500 after committing, panda-wire A.5) raises ``Ambiguous``."""
        ids = wire.range_ids_of(payload)
        fields = {"eventRanges": json.dumps(list(payload)), "version": int(version)}
        try:
            reply = self._call(wire.UPDATE_EVENT_RANGES, fields, deadline, repeatable=False)
        except Ambiguous as exc:
            if exc.http_status == 500 and self.api_for(wire.UPDATE_EVENT_RANGES) == "v1":
                raise UnconfirmedRangeUpdate(str(exc), 500) from None
            raise
        answer = _parse(reply, wire.UPDATE_EVENT_RANGES, replies.parse_range_update, ambiguous=True)
        if answer.status == wire.STATUS_TIMEOUT:
            raise Ambiguous("updateEventRanges: the server timed out (StatusCode 10)")
        if answer.status != wire.STATUS_OK:
            raise RequestRejected(f"updateEventRanges: StatusCode {answer.status}: "
                                  f"{wire.snippet(answer.message or '-', 200)}")
        returns = (list(answer.returns) + [None] * len(ids))[:len(ids)]  # A.6.5: a trailing extra false
        rejected = [rid for rid, ok in zip(ids, returns, strict=True) if ok is False]
        if rejected:
            logger.warning("updateEventRanges: server rejected %d range(s): %s", len(rejected),
                           ", ".join(rejected[:5]))
        logger.info("updateEventRanges (%s): %d range(s) version %s", reply.api, len(ids), version)
        return EventRangesResult(returns, answer.commands)

    def job_statuses(self, panda_ids: Sequence[int], deadline: float | None = None) -> dict[int, str]:
        """The server's state of jobs ('not found'/'notfound' for unknown ones): v1 get_job_status,
        legacy getStatus."""
        ids = [int(i) for i in panda_ids]
        if self.api_for(wire.GET_JOB_STATUS) == "v1":
            query: dict[str, Any] = {"job_ids": ids}  # List[int] cast from repeated parameters (A.5)
        else:
            query = {"ids": " ".join(str(i) for i in ids)}  # the server splits on whitespace (A.5)
        reply = self._call(wire.GET_JOB_STATUS, query, deadline, repeatable=True)
        return _parse(reply, wire.GET_JOB_STATUS,
                           lambda data, v1: replies.parse_job_statuses(data, v1, ids), ambiguous=False)

    def range_statuses(self, job_tasks: Sequence[tuple[int, int | None]],
                       deadline: float | None = None) -> dict[str, str]:
        """The server's status of every event range of the given (PandaID, jediTaskID) jobs:
        v1 get_event_range_statuses, legacy get_events_status."""
        # the server's code reads "panda_id" (its docstring says "job_id", A.5): send both, extra keys are ignored
        pairs = json.dumps([{"task_id": task, "panda_id": job, "job_id": job} for job, task in job_tasks])
        key = "job_task_ids" if self.api_for(wire.GET_EVENTS_STATUS) == "v1" else "ids"
        reply = self._call(wire.GET_EVENTS_STATUS, {key: pairs}, deadline, repeatable=True)
        return _parse(reply, wire.GET_EVENTS_STATUS, replies.parse_range_statuses, ambiguous=False)

    def update_worker_node(self, fields: Mapping[str, Any], deadline: float | None = None) -> str:
        """Send the worker-node map of one node (v1 only; B.10); returns the server's message.  A server
        without the endpoint (404) or one that refuses it raises ``RequestRejected``."""
        return self._post_map(wire.UPDATE_WORKER_NODE, wire.UPDATE_WORKER_NODE_PATH, fields, deadline)

    def update_worker_node_gpu(self, fields: Mapping[str, Any], deadline: float | None = None) -> str:
        """Send one GPU model of a node's GPU map (v1 only; 0.8.1 and 1.0.4 have it); as ``update_worker_node``."""
        return self._post_map(wire.UPDATE_WORKER_NODE_GPU, wire.UPDATE_WORKER_NODE_GPU_PATH, fields, deadline)

    def is_release_1_0(self, deadline: float | None = None) -> bool:
        """Whether this server is panda-server >= 1.0, which takes acquire_jobs' ``target_architecture`` (0.8.1
        refuses it) and stores the GPU map (0.8.1's update_worker_node_gpu answers "Another pilot was updating the
        worker node GPU at the same time" to every call: its row look-up was left out of the code).  v1 has no
        version call.  What tells them apart is the legacy API, which 1.0 removed: one legacy
        ``getStatus`` of no job, asked once -- HTTP 403 "forbidden" is 1.0; any answer is a server with the legacy
        API (<= 0.8.1), which is sent nothing new.  ``panda.api = legacy`` never sends it.  No answer (the server
        is down) raises what the look-up raised -- the fetch then fails as its own call would -- and the
        question is asked again next time."""
        if self.panda.api == "legacy":
            return False
        with self._lock:
            known = self._takes_target
        if known is not None:
            return known
        end = time.monotonic() + (self.panda.call_deadline if deadline is None else deadline)
        request = _Request("POST", wire.LEGACY_PREFIX + wire.GET_JOB_STATUS, wire.encode_legacy({"ids": ""}),
                           {"Content-Type": "application/x-www-form-urlencoded"})
        try:
            self._request(wire.GET_JOB_STATUS, request, end, "legacy", repeatable=True)
            takes = False
        except NoLegacyApi:
            takes = True
        except RequestRejected:  # the legacy API is there and refused an empty look-up: an older server
            takes = False
        with self._lock:
            self._takes_target = takes
        logger.info("%s: %s", self.base, "no legacy API: panda-server >= 1.0, sent target_architecture and GPU maps"
                    if takes else "legacy API present: panda-server < 1.0, sent neither target_architecture nor "
                    "GPU maps")
        return takes

    def _post_map(self, name: str, path: str, fields: Mapping[str, Any], deadline: float | None) -> str:
        """POST one worker-node or GPU map (v1 JSON); the server's message, or ``RequestRejected``."""
        end = time.monotonic() + (self.panda.call_deadline if deadline is None else deadline)
        body, headers = wire.encode_v1(dict(fields))
        request = _Request("POST", path, body, headers)
        try:
            reply = self._request(name, request, end, "v1", repeatable=True)
        except EndpointMissing:
            raise RequestRejected(f"{name}: not offered by {self.base} (HTTP 404)") from None
        try:
            answer = replies.decode_body(reply.content)
        except wire.WireError as exc:
            raise ServerUnavailable(f"{name}: not acknowledged: {exc}") from None
        if answer.get("success") is not True:
            raise RequestRejected(f"{name}: {wire.snippet(str(answer.get('message') or '-'))}")
        return str(answer.get("message") or "")

    def close(self) -> None:
        """Interrupt back-off waits and close the session."""
        self._stop.set()
        self.session.close()

    # ------------------------------------------------------------------------------- internals

    def _call(self, method: str, fields: Mapping[str, Any], deadline: float | None, repeatable: bool) -> _Reply:
        end = time.monotonic() + (self.panda.call_deadline if deadline is None else deadline)
        lookup = method in wire.LOOKUPS
        if self.api_for(method) == "v1":
            if lookup:  # v1 look-ups are GETs with query parameters
                request = _Request("GET", wire.V1_PATHS[method], b"", {"Accept": "application/json"}, dict(fields))
            else:
                body, headers = wire.encode_v1(wire.to_v1(method, fields))
                request = _Request("POST", wire.V1_PATHS[method], body, headers)
            try:
                return self._request(method, request, end, "v1", repeatable)
            except EndpointMissing:
                if self.panda.api != "auto":
                    raise RequestRejected(f"{method}: {wire.V1_PATHS[method]} not found (HTTP 404) "
                                          "and panda.api is v1") from None
                with self._lock:
                    self._resolved[method] = "legacy"
                logger.info("%s: no v1 endpoint on %s, using the legacy API from now on", method, self.base)
        fields = {k: v for k, v in fields.items() if k != wire.TARGET_ARCHITECTURE}  # v1 (1.0) only
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if self.legacy_accept_json:
            headers["Accept"] = "application/json"
        request = _Request("POST", wire.LEGACY_PREFIX + method, wire.encode_legacy(fields), headers)
        try:
            return self._request(method, request, end, "legacy", repeatable)
        except NoLegacyApi:
            if self.panda.api == "auto":
                raise ServerUnusable(f"{method}: {self.base} offers it neither on /api/v1 (HTTP 404) nor on the "
                                     "legacy API (HTTP 403 'forbidden')") from None
            raise ServerUnusable(f"{method}: {self.base} has no legacy API (HTTP 403 'method {method} is "
                                 "forbidden', as on panda-server >= 1.0): set panda.api = v1 or auto") from None

    def _request(self, method: str, request: _Request, end: float, api: str, repeatable: bool) -> _Reply:
        backoff = max(self.panda.retry_initial, 0.01)
        last_error = "no attempt made"
        attempt = 0
        maybe_sent = False
        while not self._stop.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0 or (attempt and remaining < MIN_ATTEMPT):
                break  # a last attempt cut to a few ms could only time out and hide the real cause
            attempt += 1
            try:
                reply = self._attempt(request, remaining, api)
            except NotSent as exc:
                last_error = str(exc)
            except MaybeSent as exc:
                last_error, maybe_sent = str(exc), True
                if not repeatable:
                    if not self._expected(method, api, exc):
                        self._episode(method, last_error)
                    raise Ambiguous(f"{method}: {last_error}", exc.http_status) from None
            else:
                self._recovered()
                return reply
            self._episode(method, last_error)
            pause = min(backoff * random.uniform(0.5, 1.5), self.panda.retry_max, end - time.monotonic())
            if pause > 0 and self._stop.wait(pause):
                break
            backoff = min(backoff * 2, max(self.panda.retry_max, 0.01))
        why = "client closed" if self._stop.is_set() else f"gave up after {attempt} attempt(s)"
        error = Ambiguous if maybe_sent else ServerUnavailable  # a repeated request may have been taken too
        raise error(f"{method}: {why}: {last_error}")

    def _expected(self, method: str, api: str, exc: MaybeSent) -> bool:
        """v1 update_event_ranges answering 500 is its normal answer (A.5): said once at INFO, never as trouble."""
        if not (method == wire.UPDATE_EVENT_RANGES and api == "v1" and exc.http_status == 500):
            return False
        with self._lock:
            first, self._told_range_500 = not self._told_range_500, True
        if first:
            logger.info("%s answers update_event_ranges with HTTP 500, as every panda-server release does after "
                        "committing (panda-wire A.5): each job's range updates are confirmed by one status "
                        "look-up per batch", self.base)
        return True

    def _episode(self, method: str, error: str) -> None:
        """Log the first failure of an outage at WARNING with its cause, later ones at DEBUG."""
        with self._lock:
            first, self._trouble = not self._trouble, self._trouble or error
        if first:
            logger.warning("%s: %s (retrying with back-off)", method, error)
        else:
            logger.debug("%s: %s", method, error)

    def _recovered(self) -> None:
        with self._lock:
            trouble, self._trouble = self._trouble, ""
        if trouble:
            logger.info("PanDA server %s answers again (last failure: %s)", self.base, trouble)

    def _attempt(self, request: _Request, remaining: float, api: str) -> _Reply:
        try:
            headers = {**request.headers, **self.credentials.headers()}
        except AuthError as exc:
            raise NotSent(str(exc)) from None
        timeout = (min(self.panda.connect_timeout, remaining), min(self.panda.read_timeout, remaining))
        started = time.monotonic()
        try:
            response = self.session.request(request.verb, self.base + request.path, data=request.body or None,
                                            params=request.query, headers=headers, timeout=timeout,
                                            verify=self.credentials.verify, cert=self.credentials.client_cert)
        except requests.exceptions.SSLError as exc:
            if certificate_rejected(exc):
                raise ServerUnusable(f"TLS failure talking to {self.base}: its certificate does not verify "
                                     f"against the configured CA ({cause(exc)})") from None
            raise NotSent(f"TLS failure talking to {self.base}: {cause(exc)}") from None
        except requests.exceptions.ConnectTimeout:
            raise NotSent(f"no connection to {self.base} within {timeout[0]:.1f}s") from None
        except requests.exceptions.Timeout:
            raise MaybeSent(f"no answer from {self.base} within {timeout[1]:.1f}s") from None
        except requests.exceptions.ConnectionError as exc:
            if never_sent(exc):
                raise NotSent(f"cannot reach {self.base}: {cause(exc)}") from None
            raise MaybeSent(f"connection to {self.base} lost: {cause(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise ServerUnusable(f"cannot send to {self.base}: {type(exc).__name__}: {cause(exc)}") from None
        logger.debug("%s %s -> HTTP %d in %.2fs", request.verb, request.path, response.status_code,
                     time.monotonic() - started)
        if response.status_code != 200:
            classify_http(response.status_code, response.content, request.path, api)
        return _Reply(200, response.content, api)


@dataclass(frozen=True)
class _Request:
    verb: str
    path: str
    body: bytes
    headers: dict[str, str]
    query: dict[str, Any] | None = None
