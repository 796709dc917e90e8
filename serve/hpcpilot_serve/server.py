"""A small PanDA-compatible test server (``hpcpilot serve``): both APIs, the real wire quirks.

A test double of the real panda-server releases for the pilot's calls, not a scheduler, built from the
servers' code and their observed answers (panda-wire A.5-A.7).  ``release`` picks which: "1.0" (the
default, the current line) serves only v1 and answers every legacy path HTTP 403 ``ERROR : method X is
forbidden``; "0.8" (0.8.1, the last release with both) also serves the legacy
``/server/panda/getJob|updateJob|getEventRanges|updateEventRanges`` (form-encoded or gzip
JSON requests; URL-encoded replies, or JSON with ``Accept: application/json``) and the v1
``/api/v1/pilot/acquire_jobs|update_job`` and ``/api/v1/event/acquire_event_ranges|
update_event_ranges`` (JSON bodies, ``{success, message, data}`` replies) on 127.0.0.1, with the
observed behaviours of panda-wire A.6: ``tobekilled`` for an unknown/archived job or a wrong
attemptNr, status 0 and no change for an invalid state, empty ranges for unknown or killed jobs,
``StatusCode=0&Returns=%22&Command=E`` for non-JSON event input, the extra trailing ``false`` when
events finish, 403 for unknown methods, 500 with the exception text, and v1 update_event_ranges
answering HTTP 500 after committing on both releases (its body depends on ``version``, A.5).  The
status look-ups the pilot asks when an update's fate is open are served in the forms the real servers
accept, and refused as they refuse the others: v1 ``pilot/get_job_status`` (GET, ``job_ids`` as repeated
parameters; a JSON string is a type error) and ``event/get_event_range_statuses`` (GET, items keyed
``task_id`` and ``panda_id``; an item without ``panda_id`` is "database error in the PanDA server"),
legacy ``getStatus`` (``ids`` split on whitespace) and ``get_events_status`` (bare JSON, ``null`` on any
error).  A job the pilot reported finished or failed reads ``holding``, as on the real server before
its Adder.

State (jobs, event ranges, every request received) lives in SQLite (``state.py``), so the server can be
stopped and started again on the same port ("down") without losing anything, and ``dump_state`` reads
the final state of every job and range for assertions.  Faults for tests (``hpcpilot_serve.faults``):
``set_fault(kind, count, delay, method=..., after_commit=...)`` in-process, ``POST /admin/fault``
from another process, or ``hpcpilot serve --fault``.

This module is the server object; the methods are in ``jobs.py`` and ``ranges.py`` (with ``clones.py``
and ``loading.py``), the HTTP side in ``routing.py``, ``v1.py``, ``legacy.py`` and ``handler.py``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from hpcpilot.panda import wire
from hpcpilot_serve.faults import Fault, FaultBox
from hpcpilot_serve.jobs import get_job, get_status, update_job, upsert_worker_node, upsert_worker_node_gpu
from hpcpilot_serve.listener import Listener, RequestConcurrency
from hpcpilot_serve.loading import load_jobs, load_ranges
from hpcpilot_serve.ranges import get_event_ranges, get_events_status, update_event_ranges
from hpcpilot_serve.reply import Reply
from hpcpilot_serve.routing import Handler
from hpcpilot_serve.state import dump, open_state, read_requests, record_request

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
RELEASES = {"1.0": ("v1",), "0.8": ("v1", "legacy")}
"""The APIs each modelled panda-server release serves (1.0.x: v1 only; 0.8.1: both)."""
DEFAULT_RELEASE = "1.0"


class PandaTestServer:
    """The server object: state, faults and the HTTP listener (start/stop to go up/down)."""

    def __init__(self, state: Path, port: int = 0, *, release: str = DEFAULT_RELEASE,
                 apis: Iterable[str] | None = None, tls: tuple[str, str] | None = None, client_ca: str | None = None,
                 trailing_false: bool = True, v1_event_update_bug: bool = True,
                 tokens: Iterable[str] | None = None, host: str = HOST) -> None:
        if release not in RELEASES:
            raise ValueError(f"release {release!r}: expected one of {', '.join(RELEASES)}")
        self.state_path = Path(state)
        self.port = port
        self.host = host  # 127.0.0.1 unless clients elsewhere must reach it (the nodes tier: the bridge's address)
        self.release = release
        self.apis = frozenset(RELEASES[release] if apis is None else apis)
        self.tls = tls
        self.client_ca = client_ca
        self.trailing_false = trailing_false
        self.v1_event_update_bug = v1_event_update_bug
        self.tokens = frozenset(tokens) if tokens is not None else None
        self._lock = threading.RLock()
        self._db = open_state(self.state_path)
        self._httpd: Listener | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self.faults = FaultBox()
        self.concurrency = RequestConcurrency()  # how many calls of each method were served at once (tests)
        self._methods: dict[str, Callable[[Mapping[str, Any]], Reply]] = {
            wire.GET_JOB: partial(get_job, self._db), wire.UPDATE_JOB: partial(update_job, self._db),
            wire.GET_EVENT_RANGES: partial(get_event_ranges, self._db),
            wire.UPDATE_EVENT_RANGES: lambda fields: update_event_ranges(self._db, fields, self.trailing_false),
            wire.GET_JOB_STATUS: partial(get_status, self._db),
            wire.GET_EVENTS_STATUS: partial(get_events_status, self._db)}

    # ---------------------------------------------------------------------------- control

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> PandaTestServer:
        """Listen (again) on the port; the first start picks a free port if none was given."""
        if self._httpd is not None:
            return self
        httpd = Listener((self.host, self.port), Handler)
        httpd.app = self  # type: ignore[attr-defined]
        if self.tls:
            httpd.socket = _tls_context(self.tls, self.client_ca).wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self._release.clear()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"panda-test-server-{self.port}", daemon=True)
        self._thread.start()
        logger.info("PanDA test server on %s", self.url)
        return self

    def listens_on(self, listener: object) -> bool:
        """Whether ``listener`` is the live one (a stopped listener's last requests get no answer)."""
        return self._httpd is listener

    def stop(self) -> None:
        """Stop listening (connections are then refused); the state is kept."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._release.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.cut_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        with self._lock:
            self._db.close()

    def __enter__(self) -> PandaTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_fault(self, kind: str | None, count: int | None = None, delay: float = 0.0, *,
                  method: str | None = None, after_commit: bool = False) -> None:
        """Inject a fault (``hpcpilot_serve.faults``) for the next ``count`` requests (all if None) of
        ``method`` (a legacy method name; all if None), before or after the call is committed; None clears."""
        self.faults.set(None if kind is None else Fault(kind, count, float(delay), method, after_commit))

    def set_command(self, panda_id: int, command: str) -> None:
        """Queue a backchannel command (tobekilled, softkill, debug, debugoff) for a job."""
        with self._lock:
            self._db.execute("UPDATE jobs SET command=? WHERE panda_id=?", (command, panda_id))

    def wait_released(self, delay: float) -> None:
        """A slow fault's wait, cut short when the server stops."""
        self._release.wait(delay)

    # ------------------------------------------------------------------------------ loading

    def load_jobs(self, jobs: Iterable[Mapping[str, Any]] | Mapping[str, Any], ranges_per_job: int = 0,
                  events_per_range: int = 1) -> list[int]:
        """Add job definitions (getJob dicts; a Harvester ``{PandaID: job}`` map or a list).  Event-service
        jobs (eventService=True) get ``ranges_per_job`` ranges.  Known PandaIDs are left as they are."""
        with self._lock:
            return load_jobs(self._db, jobs, ranges_per_job, events_per_range)

    def load_ranges(self, panda_id: int, ranges: Iterable[Mapping[str, Any]]) -> None:
        """Add explicit event ranges (getEventRanges dicts) for a job."""
        with self._lock:
            load_ranges(self._db, panda_id, ranges)

    # ------------------------------------------------------------------------------- views

    def dump(self) -> dict[str, Any]:
        """Every job, range and worker node now, and how many requests came."""
        with self._lock:
            return dump(self._db)

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        """Every request received (optionally only one legacy method name), oldest first."""
        with self._lock:
            return read_requests(self._db, method)

    # ------------------------------------------------------------------------- the methods

    def call(self, method: str, fields: dict[str, Any]) -> Reply:
        """Run one PanDA method (a legacy name, legacy field names) in its own transaction."""
        handler = self._methods[method]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                reply = handler(fields)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return reply

    def upsert_worker_node(self, fields: Mapping[str, Any]) -> str:
        """Keep one row per host, as the server's worker-node map does; the server's message."""
        with self._lock:
            return upsert_worker_node(self._db, fields)

    def upsert_worker_node_gpu(self, fields: Mapping[str, Any]) -> str:
        """Keep one row per (site, host, vendor, model), as the server's GPU map does; the server's message."""
        with self._lock:
            return upsert_worker_node_gpu(self._db, fields)

    def record(self, api: str, method: str, fields: Mapping[str, Any], http_status: int, auth: str) -> None:
        """Log one request as received and answered (``requests()``, ``/admin/requests``)."""
        with self._lock:
            record_request(self._db, api, method, fields, http_status, auth)


def _tls_context(cert_and_key: tuple[str, str], client_ca: str | None) -> ssl.SSLContext:
    """HTTPS with the server's certificate; with ``client_ca`` a client certificate is asked (not required)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert_and_key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
