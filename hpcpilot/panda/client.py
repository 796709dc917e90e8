"""HTTP client for the PanDA server (rank 0 only): both APIs, retries, deadlines, credentials.

One ``requests.Session`` (connection reuse).  Every call retries transport failures (connection
refused, timeouts, HTTP 5xx/429/408/401) with exponential back-off and jitter until its deadline
(``panda.call_deadline`` unless the caller gives a shorter one), then raises ``ServerUnavailable``.
A reply the server means as a refusal (other 4xx, a non-zero StatusCode other than 10/20) raises
``RequestRejected``; a reply that cannot be read raises ``BadReply``.  All three are one line.

``api = "auto"`` tries v1 first and, the first time a v1 endpoint answers 404, remembers to use the
legacy path for that call from then on (panda-server < 0.8 has no v1; >= 1.0 has only v1).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from hpcpilot.config import PandaConfig, SiteSection
from hpcpilot.panda import wire
from hpcpilot.panda.auth import AuthError, Credentials, install_log_redaction, register_secret

logger = logging.getLogger(__name__)

TRANSIENT_HTTP = frozenset({401, 408, 425, 429})
USER_AGENT = "hpcpilot/0.1"


class PandaError(Exception):
    """A call to the PanDA server did not succeed (one-line message)."""


class ServerUnavailable(PandaError):
    """No usable answer before the call's deadline (server down, 5xx, timeouts); try again later."""


class RequestRejected(PandaError):
    """The server refused the request; sending it again will not help."""


class BadReply(PandaError):
    """The server answered something that is not a PanDA reply."""


class _Missing(Exception):
    """A v1 endpoint answered 404."""


@dataclass
class EventRangesResult:
    """What updateEventRanges answered: per-range True/False/None and commands per PandaID."""

    returns: list[Any] = field(default_factory=list)
    commands: dict[int, list[str]] = field(default_factory=dict)
    assumed_delivered: str = ""  # why the reply could not be read although the update was made


@dataclass
class _Reply:
    status: int
    content: bytes
    api: str


class PandaClient:
    """The four pilot calls against one PanDA server, in the dialect the config asks for."""

    def __init__(self, panda: PandaConfig, site: SiteSection, credentials: Credentials | None = None,
                 *, legacy_accept_json: bool = True) -> None:
        if not panda.server:
            raise PandaError("panda.server is empty: no PanDA server configured")
        install_log_redaction()
        self.panda = panda
        self.site = site
        self.base = panda.server.rstrip("/")
        self.credentials = credentials if credentials is not None else Credentials.from_environ(panda.ca_dir)
        self.legacy_accept_json = legacy_accept_json
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.pilot_secrets: dict[int, Any] = {}
        self._resolved: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        logger.info("PanDA client for %s (api %s; %s)", self.base, panda.api, self.credentials.describe())

    # ------------------------------------------------------------------------------ public calls

    def api_for(self, method: str) -> str:
        """'v1' or 'legacy': what this client uses (or will try first) for ``method``."""
        if self.panda.api != "auto":
            return self.panda.api
        with self._lock:
            return self._resolved.get(method, "v1")

    def acquire_jobs(self, n: int, node_info: Mapping[str, Any],
                     deadline: float | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Ask for up to ``n`` jobs.  Returns (StatusCode, jobs); 20 = no jobs (not an error)."""
        fields = self.get_job_fields(n, node_info)
        reply = self._call(wire.GET_JOB, fields, deadline)
        data = self._decode(reply, wire.GET_JOB)
        if reply.api == "v1":
            status, jobs, message = wire.parse_acquire_jobs(data)
        else:
            status, jobs = self._parse(wire.parse_get_job, data)
            message = str(data.get("errorDialog") or "")
        if status not in (wire.STATUS_OK, wire.STATUS_NO_JOBS):
            logger.warning("getJob answered StatusCode %s: %s", status, wire.snippet(message or "-", 200))
        for job in jobs:
            for key in ("pilotSecrets", "secrets"):
                if not wire.is_null(job.get(key)):
                    register_secret(job[key])
        logger.info("getJob (%s): StatusCode %s, %d job(s) for %d asked", reply.api, status, len(jobs), n)
        return status, jobs

    def get_job_fields(self, n: int, node_info: Mapping[str, Any]) -> dict[str, Any]:
        """The getJob request (legacy names, panda-wire B.3)."""
        fields: dict[str, Any] = {
            "siteName": self.site.queue,
            "computingElement": self.site.queue,
            "prodSourceLabel": self.site.prod_source_label,
            "node": str(node_info.get("node", "")),
            "diskSpace": int(node_info.get("disk", 0) or 0),
            "mem": int(node_info.get("mem", 0) or 0),
            "cpu": int(node_info.get("cpu", 0) or 0),
            "nJobs": max(1, int(n)),
        }
        if self.site.resource_type:
            fields["resourceType"] = self.site.resource_type
        for key, env in (("harvester_id", "HARVESTER_ID"), ("worker_id", "HARVESTER_WORKER_ID")):
            if os.environ.get(env):
                fields[key] = os.environ[env]
        return fields

    def update_job(self, fields: Mapping[str, Any], deadline: float | None = None) -> list[str]:
        """Send one updateJob (legacy field names); returns the backchannel commands of the reply."""
        prepared = wire.prepare_update(fields)
        reply = self._call(wire.UPDATE_JOB, prepared, deadline)
        data = self._decode(reply, wire.UPDATE_JOB)
        status, commands, secrets, message = self._parse(wire.parse_update_job, data, reply.api == "v1")
        job_id = int(prepared.get("jobId", 0) or 0)
        if status == wire.STATUS_TIMEOUT:
            raise ServerUnavailable(f"updateJob {job_id}: server timed out (StatusCode 10)")
        if status != wire.STATUS_OK:
            raise RequestRejected(f"updateJob {job_id}: StatusCode {status}: "
                                  f"{wire.snippet(message or '-', 200)}")
        if secrets is not None:
            register_secret(secrets)
            self.pilot_secrets[job_id] = secrets
        logger.info("updateJob %s state=%s (%s): command %s", job_id, prepared.get("state"), reply.api,
                    ",".join(commands) or "NULL")
        return commands

    def acquire_event_ranges(self, panda_id: int, jobset_id: int | None, task_id: int | None, n: int,
                             deadline: float | None = None) -> list[dict[str, Any]]:
        """Lease up to ``n`` event ranges of a job; an empty list means no more ranges."""
        fields: dict[str, Any] = {"pandaID": panda_id, "jobsetID": jobset_id, "taskID": task_id,
                                  "nRanges": max(1, int(n))}
        reply = self._call(wire.GET_EVENT_RANGES, fields, deadline)
        data = self._decode(reply, wire.GET_EVENT_RANGES)
        status, ranges, message = self._parse(wire.parse_get_event_ranges, data, reply.api == "v1")
        if status != wire.STATUS_OK:
            raise RequestRejected(f"getEventRanges {panda_id}: StatusCode {status}: "
                                  f"{wire.snippet(message or '-', 200)}")
        logger.info("getEventRanges %s (%s): %d range(s) for %d asked", panda_id, reply.api, len(ranges), n)
        return ranges

    def update_event_ranges(self, payload: Sequence[Mapping[str, Any]], version: int = 0,
                            deadline: float | None = None) -> EventRangesResult:
        """Report event-range statuses (payload as in panda-wire C.2)."""
        ids = wire.range_ids_of(payload)
        fields = {"eventRanges": json.dumps(list(payload)), "version": int(version)}
        reply = self._call(wire.UPDATE_EVENT_RANGES, fields, deadline)
        if reply.status == 500:
            # v1 update_event_ranges serialises a set and fails after committing (panda-wire A.5).
            note = f"v1 update_event_ranges answered HTTP 500 ({wire.snippet(reply.content, 100)})"
            logger.warning("%s; the update is stored by the server, taking it as delivered", note)
            return EventRangesResult([None] * len(ids), {}, note)
        data = self._decode(reply, wire.UPDATE_EVENT_RANGES)
        try:
            status, returns, commands = wire.parse_update_event_ranges(data, reply.api == "v1")
        except wire.WireError as exc:
            if self._status0(data):
                # A.6.4: status 0 with garbage; the server could not use our input, resending won't help.
                logger.warning("updateEventRanges answered StatusCode 0 with garbage (%s); not resending",
                               exc)
                return EventRangesResult([None] * len(ids), {}, str(exc))
            raise BadReply(f"updateEventRanges: {exc}") from None
        if status != wire.STATUS_OK:
            raise RequestRejected(f"updateEventRanges: StatusCode {status}")
        if len(returns) > len(ids):
            logger.debug("updateEventRanges: %d extra Returns entries ignored", len(returns) - len(ids))
        returns = (list(returns) + [None] * len(ids))[:len(ids)]
        rejected = [rid for rid, ok in zip(ids, returns, strict=True) if ok is False]
        if rejected:
            logger.warning("updateEventRanges: server rejected %d range(s): %s", len(rejected),
                           ", ".join(rejected[:5]))
        logger.info("updateEventRanges (%s): %d range(s) version %s", reply.api, len(ids), version)
        return EventRangesResult(returns, commands)

    def close(self) -> None:
        """Interrupt back-off waits and close the session."""
        self._stop.set()
        self.session.close()

    # ------------------------------------------------------------------------------- internals

    @staticmethod
    def _status0(data: Mapping[str, Any]) -> bool:
        try:
            return wire.status_of(data) == wire.STATUS_OK
        except wire.WireError:
            return False

    @staticmethod
    def _parse(parser: Any, *args: Any) -> Any:
        try:
            return parser(*args)
        except wire.WireError as exc:
            raise BadReply(str(exc)) from None

    @staticmethod
    def _decode(reply: _Reply, method: str) -> dict[str, Any]:
        try:
            return wire.decode_body(reply.content)
        except wire.WireError as exc:
            raise BadReply(f"{method}: {exc}") from None

    def _call(self, method: str, fields: Mapping[str, Any], deadline: float | None) -> _Reply:
        end = time.monotonic() + (self.panda.call_deadline if deadline is None else deadline)
        if self.api_for(method) == "v1":
            body, headers = wire.encode_v1(wire.to_v1(method, fields))
            try:
                return self._request(method, wire.V1_PATHS[method], body, headers, end, "v1")
            except _Missing:
                if self.panda.api != "auto":
                    raise RequestRejected(f"{method}: {wire.V1_PATHS[method]} not found (HTTP 404) "
                                          "and panda.api is v1") from None
                with self._lock:
                    self._resolved[method] = "legacy"
                logger.info("%s: no v1 endpoint on %s, using the legacy API from now on", method, self.base)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if self.legacy_accept_json:
            headers["Accept"] = "application/json"
        return self._request(method, wire.LEGACY_PREFIX + method, wire.encode_legacy(fields), headers, end,
                             "legacy")

    def _request(self, method: str, path: str, body: bytes, headers: dict[str, str], end: float,
                 api: str) -> _Reply:
        backoff = max(self.panda.retry_initial, 0.01)
        last_error = "no attempt made"
        attempt = 0
        while not self._stop.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            attempt += 1
            try:
                reply = self._attempt(method, path, body, headers, remaining, api)
            except _Transient as exc:
                last_error = str(exc)
                logger.warning("%s attempt %d: %s", method, attempt, last_error)
            else:
                return reply
            pause = min(backoff * random.uniform(0.5, 1.5), self.panda.retry_max, end - time.monotonic())
            if pause > 0 and self._stop.wait(pause):
                break
            backoff = min(backoff * 2, max(self.panda.retry_max, 0.01))
        why = "client closed" if self._stop.is_set() else f"gave up after {attempt} attempt(s)"
        raise ServerUnavailable(f"{method}: {why}: {last_error}")

    def _attempt(self, method: str, path: str, body: bytes, headers: dict[str, str], remaining: float,
                 api: str) -> _Reply:
        try:
            all_headers = {**headers, **self.credentials.headers()}
        except AuthError as exc:
            raise _Transient(str(exc)) from None
        timeout = (min(self.panda.connect_timeout, remaining), min(self.panda.read_timeout, remaining))
        started = time.monotonic()
        try:
            response = self.session.post(self.base + path, data=body, headers=all_headers, timeout=timeout,
                                         verify=self.credentials.verify, cert=self.credentials.client_cert)
        except requests.exceptions.SSLError as exc:
            raise _Transient(f"TLS failure talking to {self.base} (server certificate not trusted by the "
                             f"configured CA?): {wire.snippet(str(exc), 160)}") from None
        except requests.exceptions.Timeout:
            raise _Transient(f"no answer from {self.base} within {timeout[1]:.1f}s") from None
        except requests.exceptions.RequestException as exc:
            raise _Transient(f"cannot reach {self.base}: {type(exc).__name__}: "
                             f"{wire.snippet(str(exc), 160)}") from None
        code = response.status_code
        logger.debug("POST %s -> HTTP %d in %.2fs", path, code, time.monotonic() - started)
        if code == 200:
            return _Reply(200, response.content, api)
        if code == 404 and api == "v1":
            raise _Missing()
        if code == 500 and api == "v1" and method == wire.UPDATE_EVENT_RANGES \
                and b"serializable" in response.content:
            return _Reply(500, response.content, api)
        if code >= 500 or code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {code} from {path}: {wire.snippet(response.content)}")
        raise RequestRejected(f"{method}: HTTP {code} from {path}: {wire.snippet(response.content)}")


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""
