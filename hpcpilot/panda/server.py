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

State (jobs, event ranges, every request received) lives in SQLite, so the server can be stopped
and started again on the same port ("down") without losing anything, and ``dump_state`` reads the
final state of every job and range for assertions.  Faults for tests (``hpcpilot.panda.faults``):
``set_fault(kind, count, delay, method=..., after_commit=...)`` in-process, ``POST /admin/fault``
from another process, or ``hpcpilot serve --fault``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import socket
import sqlite3
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from hpcpilot.panda import replies, wire
from hpcpilot.panda.faults import Fault, FaultBox, fault_answer

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
VALID_JOB_STATES = frozenset({"running", "failed", "finished", "holding", "starting", "transferring"})
ACTIVE_JOB_STATES = frozenset({"sent", "starting", "running", "transferring", "holding"})
FINAL_EVENT_STATES = frozenset({"finished", "failed", "fatal"})
SKIPPED_EVENT_STATES = frozenset({"running", "transferring"})
ONE_SHOT_COMMANDS = frozenset({"debug", "debugoff"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    panda_id INTEGER PRIMARY KEY, definition TEXT NOT NULL, status TEXT NOT NULL,
    attempt_nr INTEGER NOT NULL, command TEXT NOT NULL DEFAULT '', states TEXT NOT NULL DEFAULT '[]',
    final TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (
    event_range_id TEXT PRIMARY KEY, panda_id INTEGER NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL,
    error_code INTEGER, error_diag TEXT, zip TEXT, ord INTEGER NOT NULL, updates INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, api TEXT NOT NULL, method TEXT NOT NULL,
    fields TEXT NOT NULL, http_status INTEGER NOT NULL, auth TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS worker_nodes (
    host_name TEXT PRIMARY KEY, fields TEXT NOT NULL, updates INTEGER NOT NULL);
"""


def _int(value: Any, default: int | None = None) -> int | None:
    if wire.is_null(value) or isinstance(value, bool):
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        return default


class _Reply:
    """What a method returns: a legacy-style dict, or a ready HTTP answer."""

    def __init__(self, data: Any, http_status: int = 200, raw: bytes | None = None, v1: Any = None,
                 v1_error: str | None = None) -> None:
        self.data = data
        self.http_status = http_status
        self.raw = raw
        self.v1 = v1  # the v1 ``data`` where it is not derived from the legacy reply
        self.v1_error = v1_error  # v1 answers ``success: false`` with this message


RELEASES = {"1.0": ("v1",), "0.8": ("v1", "legacy")}
"""The APIs each modelled panda-server release serves (1.0.x: v1 only; 0.8.1: both)."""
DEFAULT_RELEASE = "1.0"
LOOKUP_DB_ERROR = "database error in the PanDA server"
"""What v1 get_event_range_statuses answers when the server's code fails on an item (no ``panda_id``)."""

class PandaTestServer:
    """The server object: state, faults and the HTTP listener (start/stop to go up/down)."""

    def __init__(self, state: Path, port: int = 0, *, release: str = DEFAULT_RELEASE,
                 apis: Iterable[str] | None = None, tls: tuple[str, str] | None = None, client_ca: str | None = None,
                 trailing_false: bool = True, v1_event_update_bug: bool = True,
                 tokens: Iterable[str] | None = None) -> None:
        if release not in RELEASES:
            raise ValueError(f"release {release!r}: expected one of {', '.join(RELEASES)}")
        self.state_path = Path(state)
        self.port = port
        self.release = release
        self.apis = frozenset(RELEASES[release] if apis is None else apis)
        self.tls = tls
        self.client_ca = client_ca
        self.trailing_false = trailing_false
        self.v1_event_update_bug = v1_event_update_bug
        self.tokens = frozenset(tokens) if tokens is not None else None
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.state_path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self.faults = FaultBox()
        self.concurrency = RequestConcurrency()  # how many calls of each method were served at once (tests)

    # ---------------------------------------------------------------------------- control

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def start(self) -> PandaTestServer:
        """Listen (again) on the port; the first start picks a free port if none was given."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((HOST, self.port), _Handler)
        httpd.app = self  # type: ignore[attr-defined]
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            if self.client_ca:
                context.load_verify_locations(self.client_ca)
                context.verify_mode = ssl.CERT_OPTIONAL
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self._release.clear()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"panda-test-server-{self.port}", daemon=True)
        self._thread.start()
        logger.info("PanDA test server on %s", self.url)
        return self

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
        """Inject a fault (``hpcpilot.panda.faults``) for the next ``count`` requests (all if None) of
        ``method`` (a legacy method name; all if None), before or after the call is committed; None clears."""
        self.faults.set(None if kind is None else Fault(kind, count, float(delay), method, after_commit))

    def set_command(self, panda_id: int, command: str) -> None:
        """Queue a backchannel command (tobekilled, softkill, debug, debugoff) for a job."""
        with self._lock:
            self._db.execute("UPDATE jobs SET command=? WHERE panda_id=?", (command, panda_id))

    # ------------------------------------------------------------------------------ loading

    def load_jobs(self, jobs: Iterable[Mapping[str, Any]] | Mapping[str, Any], ranges_per_job: int = 0,
                  events_per_range: int = 1) -> list[int]:
        """Add job definitions (getJob dicts; a Harvester ``{PandaID: job}`` map or a list).  Event-service
        jobs (eventService=True) get ``ranges_per_job`` ranges.  Known PandaIDs are left as they are."""
        if isinstance(jobs, Mapping):
            jobs = list(jobs.values()) if "PandaID" not in jobs else [jobs]
        added = []
        with self._lock:
            for job in jobs:
                panda_id = _int(job.get("PandaID"))
                if panda_id is None:
                    raise ValueError(f"job definition without PandaID: {wire.snippet(json.dumps(job))}")
                if self._db.execute("SELECT 1 FROM jobs WHERE panda_id=?", (panda_id,)).fetchone():
                    continue
                self._db.execute("INSERT INTO jobs (panda_id, definition, status, attempt_nr) "
                                 "VALUES (?, ?, ?, ?)", (panda_id, json.dumps(dict(job)), "activated",
                                                         _int(job.get("attemptNr"), 0)))
                if ranges_per_job and str(job.get("eventService", "")).lower() == "true":
                    self._add_ranges(job, panda_id, ranges_per_job, max(1, events_per_range))
                if _clone_jobset(job) is not None:
                    self._add_clone_range(job, panda_id)
                added.append(panda_id)
        return added

    def load_ranges(self, panda_id: int, ranges: Iterable[Mapping[str, Any]]) -> None:
        """Add explicit event ranges (getEventRanges dicts) for a job."""
        with self._lock:
            start = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
            for i, item in enumerate(ranges):
                self._db.execute("INSERT OR IGNORE INTO events (event_range_id, panda_id, body, status, ord) "
                                 "VALUES (?, ?, ?, 'ready', ?)",
                                 (str(item["eventRangeID"]), panda_id, json.dumps(dict(item)), start + i))

    def _add_ranges(self, job: Mapping[str, Any], panda_id: int, n: int, per_range: int) -> None:
        task = _int(job.get("taskID"), _int(job.get("jediTaskID"), 0))
        lfns = [x for x in str(job.get("inFiles") or "").split(",") if not wire.is_null(x)]
        guids = [x for x in str(job.get("GUID") or "").split(",") if not wire.is_null(x)]
        lfn = lfns[0] if lfns else f"EVNT.{panda_id}._000001.pool.root.1"
        guid = guids[0] if guids else str(uuid.uuid5(uuid.NAMESPACE_URL, lfn)).upper()
        scope = str(job.get("scopeIn") or "") if not wire.is_null(job.get("scopeIn")) else "hpcpilot"
        attempt = (_int(job.get("attemptNr"), 0) or 0) + 1
        ranges = [{"eventRangeID": f"{task}-{panda_id}-1-{i + 1}-{attempt}", "startEvent": i * per_range,
                   "lastEvent": i * per_range + per_range - 1, "LFN": lfn, "GUID": guid, "scope": scope}
                  for i in range(n)]
        self.load_ranges(panda_id, ranges)

    # ------------------------------------------------------------------------------- views

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return _dump(self._db)

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        """Every request received (optionally only one legacy method name), oldest first."""
        query = "SELECT seq, time, api, method, fields, http_status, auth FROM requests"
        params: tuple[Any, ...] = ()
        if method:
            query += " WHERE method=?"
            params = (method,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", params).fetchall()
        return [{"seq": s, "time": t, "api": a, "method": m, "fields": json.loads(f), "http_status": h,
                 "auth": au} for s, t, a, m, f, h, au in rows]

    # ------------------------------------------------------------------------- the methods

    def call(self, method: str, fields: dict[str, Any]) -> _Reply:
        handler = {wire.GET_JOB: self._get_job, wire.UPDATE_JOB: self._update_job,
                   wire.GET_EVENT_RANGES: self._get_event_ranges,
                   wire.UPDATE_EVENT_RANGES: self._update_event_ranges,
                   wire.GET_JOB_STATUS: self._get_status, wire.GET_EVENTS_STATUS: self._get_events_status}[method]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                reply = handler(fields)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return reply

    def _get_job(self, fields: Mapping[str, Any]) -> _Reply:
        n_jobs = _int(fields.get("nJobs"))
        rows = self._db.execute("SELECT panda_id, definition FROM jobs WHERE status='activated' "
                                "ORDER BY panda_id LIMIT ?", (max(1, n_jobs or 1),)).fetchall()
        if not rows:
            return _Reply({"StatusCode": wire.STATUS_NO_JOBS, "errorDialog": "no jobs in PanDA"})
        jobs = []
        for panda_id, definition in rows:
            self._db.execute("UPDATE jobs SET status='sent', updated=? WHERE panda_id=?",
                             (time.time(), panda_id))
            jobs.append({"StatusCode": 0, **json.loads(definition)})
        if n_jobs is None:
            return _Reply(jobs[0])
        return _Reply({"StatusCode": 0, "jobs": jobs})

    def _update_job(self, fields: Mapping[str, Any]) -> _Reply:
        panda_id = _int(fields.get("jobId"))
        state = str(fields.get("state", ""))
        row = self._db.execute("SELECT status, attempt_nr, command, states FROM jobs WHERE panda_id=?",
                               (panda_id,)).fetchone()
        attempt = _int(fields.get("attemptNr"))
        if row is None or row[0] not in ACTIVE_JOB_STATES or (attempt is not None and attempt != row[1]):
            return _Reply({"StatusCode": 0, "command": "tobekilled"})  # A.6.1
        _status, _attempt, command, states = row
        if state not in VALID_JOB_STATES:
            return _Reply({"StatusCode": 0, "command": "NULL"})  # A.6.2: silently ignored
        history = [*json.loads(states), state]
        final = json.dumps(dict(fields)) if state in ("finished", "failed", "holding") else None
        self._db.execute("UPDATE jobs SET status=?, states=?, final=COALESCE(?, final), updated=?, command=? "
                         "WHERE panda_id=?", (state, json.dumps(history), final, time.time(),
                                              "" if command in ONE_SHOT_COMMANDS else command, panda_id))
        return _Reply({"StatusCode": 0, "command": command or "NULL"})

    def _get_event_ranges(self, fields: Mapping[str, Any]) -> _Reply:
        panda_id = _int(fields.get("pandaID"))
        n_ranges = _int(fields.get("nRanges"), 10) or 10
        row = self._db.execute("SELECT status, command FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
        if row is None or row[0] not in ("sent", "starting", "running") or row[1] == "tobekilled":
            return _Reply({"StatusCode": 0, "eventRanges": []})  # A.6.3
        jobset = self._clone_jobset_of(panda_id)
        if jobset is not None:
            return _Reply({"StatusCode": 0, "eventRanges": self._take_clone_range(panda_id, jobset)})
        rows = self._db.execute("SELECT event_range_id, body FROM events WHERE panda_id=? AND status='ready' "
                                "ORDER BY ord LIMIT ?", (panda_id, n_ranges)).fetchall()
        self._db.executemany("UPDATE events SET status='sent' WHERE event_range_id=?",
                             [(r[0],) for r in rows])
        return _Reply({"StatusCode": 0, "eventRanges": [json.loads(body) for _id, body in rows]})

    # -- clone jobs (cloneJob = runonce | storeonce, panda-wire C.5) --------------------------
    # The clones of a jobset share one event range; the first clone that asks gets it (renamed to
    # carry its PandaID, as the real event table records who took it) and the others get none.

    def _add_clone_range(self, job: Mapping[str, Any], panda_id: int) -> None:
        """One range for the whole jobset, made when its first clone is loaded."""
        jobset = _clone_jobset(job)
        if self._clone_rows(jobset, "ready", "sent", "finished", "failed", "fatal"):
            return
        self._add_ranges({**job, "eventService": "True"}, panda_id, 1, 1)

    def _clone_jobset_of(self, panda_id: int | None) -> str | None:
        row = self._db.execute("SELECT definition FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
        return _clone_jobset(json.loads(row[0])) if row else None

    def _clone_rows(self, jobset: str | None, *states: str) -> list[tuple[str, str, int]]:
        """The jobset's clone ranges in ``states`` (a definition SQLite cannot read as JSON -- NaN -- is no clone)."""
        marks = ",".join("?" * len(states))
        field = "CASE WHEN json_valid(j.definition) THEN json_extract(j.definition, '$.{}') END"
        return self._db.execute(
            "SELECT e.event_range_id, e.body, e.ord FROM events e JOIN jobs j ON e.panda_id = j.panda_id "
            f"WHERE e.status IN ({marks}) AND CAST({field.format('jobsetID')} AS TEXT) = ? "
            f"AND {field.format('cloneJob')} IN ('runonce', 'storeonce') ORDER BY e.ord",
            (*states, jobset)).fetchall()

    def _take_clone_range(self, panda_id: int, jobset: str) -> list[dict[str, Any]]:
        ready = self._clone_rows(jobset, "ready")
        if not ready:
            return []
        old_id, body, order = ready[0]
        parts = old_id.split("-")
        new_id = "-".join([parts[0], str(panda_id), *parts[2:]]) if len(parts) == 5 else old_id
        item = {**json.loads(body), "eventRangeID": new_id}
        self._db.execute("DELETE FROM events WHERE event_range_id=?", (old_id,))
        self._db.execute("INSERT INTO events (event_range_id, panda_id, body, status, ord) VALUES (?, ?, ?, 'sent', ?)",
                         (new_id, panda_id, json.dumps(item), order))
        return [item]

    def _update_event_ranges(self, fields: Mapping[str, Any]) -> _Reply:
        try:
            items = json.loads(str(fields.get("eventRanges", "")))
            if not isinstance(items, list):
                raise ValueError("not a list")
        except ValueError:
            # A.6.4: the server indexes characters of an error string: garbage with status 0.
            return _Reply({"StatusCode": 0, "Returns": '"', "Command": "E"},
                          raw=b"StatusCode=0&Returns=%22&Command=E")
        version = _int(fields.get("version"), 0) or 0
        flat: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for item in items:
            if version >= 1 and isinstance(item, Mapping) and "eventRanges" in item:
                zip_info = item.get("zipFile") or item.get("esOutput")
                flat.extend((dict(e), zip_info) for e in item["eventRanges"])
            else:
                flat.append((dict(item) if isinstance(item, Mapping) else {}, None))
        returns: list[bool | None] = []
        commands: dict[str, str | None] = {}
        for event, zip_info in flat:
            ok, panda_id = self._update_one_event(event, zip_info)
            returns.append(ok)
            if panda_id is not None:
                row = self._db.execute("SELECT command FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
                command = row[0] if row and row[0] in ("tobekilled", "softkill") else None
                commands[str(panda_id)] = command if row else "tobekilled"
        if self.trailing_false and any(r is True and e.get("eventStatus") == "finished"
                                       for r, (e, _z) in zip(returns, flat, strict=True)):
            returns.append(False)  # A.6.5: nEvents update fails on PostgreSQL after the events were stored
        return _Reply({"StatusCode": 0, "Returns": json.dumps(returns), "Command": json.dumps(commands)})

    def upsert_worker_node(self, fields: Mapping[str, Any]) -> str:
        """Keep one row per host, as the server's worker-node map does; the server's message."""
        with self._lock:
            known = self._db.execute("SELECT 1 FROM worker_nodes WHERE host_name=?", (fields["host_name"],)).fetchone()
            self._db.execute("INSERT INTO worker_nodes (host_name, fields, updates) VALUES (?, ?, 1) ON CONFLICT"
                             "(host_name) DO UPDATE SET fields=excluded.fields, updates=updates+1",
                             (str(fields["host_name"]), json.dumps(dict(fields))))
        return "Updated worker node." if known else "Inserted new worker node."

    def job_states(self, panda_ids: Iterable[Any]) -> list[tuple[Any, str, int]]:
        """(PandaID, state, attemptNr) as the real server tells them: 'not found' for an unknown job,
        'holding' for a job the pilot reported finished or failed (the Adder has not run, A.3)."""
        out = []
        for panda_id in panda_ids:
            row = self._db.execute("SELECT status, attempt_nr FROM jobs WHERE panda_id=?",
                                   (_int(panda_id),)).fetchone()
            if row is None:
                out.append((panda_id, "not found", 0))
            else:
                out.append((panda_id, "holding" if row[0] in ("finished", "failed") else row[0], row[1]))
        return out

    def range_states(self, job_task_ids: Any) -> dict[str, dict[str, Any]]:
        """{panda_id: {eventRangeID: {status, error, dialog}}} for [{task_id, panda_id}, ...], as the
        server's ``get_events_status`` reads them (A.5): a job with no ranges of that task maps to {}.
        Raises (ValueError, KeyError, TypeError, AttributeError) where the server's code fails: not JSON,
        or an item without ``panda_id`` or ``task_id`` -- the docstring's ``job_id`` is not read."""
        pairs = json.loads(job_task_ids) if isinstance(job_task_ids, str) else job_task_ids
        out: dict[str, dict[str, Any]] = {}
        for pair in pairs:
            task_id, panda_id = pair["task_id"], pair["panda_id"]
            rows = self._db.execute("SELECT event_range_id, status, error_code, error_diag FROM events "
                                    "WHERE panda_id=? ORDER BY ord", (_int(panda_id),)).fetchall()
            out[str(panda_id)] = {rid: {"status": status, "error": code, "dialog": diag}
                                  for rid, status, code, diag in rows if _task_of_range(rid) == _int(task_id)}
        return out

    def _get_status(self, fields: Mapping[str, Any]) -> _Reply:
        """Legacy getStatus: ``status=a+b&attemptNr=1+2`` aligned with ``ids``, which the server splits on
        whitespace ('notfound' if unknown; a comma-joined '7,9' is one unknown id, A.5)."""
        ids = str(fields.get("ids", "")).split()
        states = self.job_states(ids)
        legacy = {"StatusCode": 0, "status": "+".join(s.replace("not found", "notfound") for _i, s, _a in states),
                  "attemptNr": "+".join(str(a) for _i, _s, a in states)}
        return _Reply(legacy, v1=[{"job_id": _int(i, i), "status": s, "attempt_number": a} for i, s, a in states])

    def _get_events_status(self, fields: Mapping[str, Any]) -> _Reply:
        """get_events_status: legacy answers the bare JSON dict (no StatusCode) and ``null`` where the
        server's code fails; v1 answers ``success: false``, "database error in the PanDA server"."""
        try:
            data = self.range_states(fields.get("ids", "[]"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return _Reply(None, raw=b"null", v1_error=LOOKUP_DB_ERROR)
        return _Reply(data, raw=json.dumps(data).encode(), v1=data)

    def _update_one_event(self, event: Mapping[str, Any], zip_info: Any) -> tuple[bool | None, int | None]:
        range_id = str(event.get("eventRangeID", ""))
        parts = range_id.split("-")
        if len(parts) != 5 or not all(p.isdigit() for p in parts):
            return False, None
        panda_id = int(parts[1])
        status = str(event.get("eventStatus", ""))
        if status in SKIPPED_EVENT_STATES:
            return None, panda_id
        if status not in FINAL_EVENT_STATES:
            return False, panda_id
        job = self._db.execute("SELECT status FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
        row = self._db.execute("SELECT status FROM events WHERE event_range_id=?", (range_id,)).fetchone()
        if job is None or job[0] not in ("sent", "starting", "running", "transferring") or row is None:
            return False, panda_id
        self._db.execute("UPDATE events SET status=?, error_code=?, error_diag=?, zip=?, updates=updates+1 "
                         "WHERE event_range_id=?",
                         (status, _int(event.get("errorCode")), event.get("errorDiag"),
                          json.dumps(zip_info) if zip_info else None, range_id))
        return True, panda_id

    # ---------------------------------------------------------------------------- plumbing

    def record(self, api: str, method: str, fields: Mapping[str, Any], http_status: int, auth: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO requests (time, api, method, fields, http_status, auth) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (time.time(), api, method, json.dumps(fields, default=str), http_status, auth))

    def wait_released(self, delay: float) -> None:
        self._release.wait(delay)


class RequestConcurrency:
    """Calls being served right now and the most at once, per method: lets a test prove that a client
    had several requests in flight together by counting at the server, not by timing (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()

    @contextlib.contextmanager
    def serving(self, method: str) -> Iterator[None]:
        with self._lock:
            self._now[method] += 1
            self._peak[method] = max(self._peak[method], self._now[method])
        try:
            yield
        finally:
            with self._lock:
                self._now[method] -= 1

    def peak(self, method: str) -> int:
        """The most calls of ``method`` served at the same time since the server was made (or reset)."""
        with self._lock:
            return self._peak[method]

    def reset(self) -> None:
        with self._lock:
            self._peak = Counter(self._now)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that can cut its open keep-alive connections (a real outage drops them)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.live_lock:
            self.live.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.live_lock:
                self.live.discard(request)

    def cut_connections(self) -> None:
        with self.live_lock:
            live = list(self.live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _clone_jobset(job: Mapping[str, Any]) -> str | None:
    """The jobsetID (as text) of a clone job, None for any other job."""
    if str(job.get("cloneJob") or "").strip() not in ("runonce", "storeonce"):
        return None
    return str(job.get("jobsetID"))


def _dump(db: sqlite3.Connection) -> dict[str, Any]:
    jobs = []
    for panda_id, definition, status, attempt, command, states, final in db.execute(
            "SELECT panda_id, definition, status, attempt_nr, command, states, final FROM jobs "
            "ORDER BY panda_id"):
        fields = json.loads(final)
        job = json.loads(definition)
        entry = {"PandaID": panda_id, "status": status, "attemptNr": attempt, "command": command or None,
                 "states": json.loads(states)}
        for key in ("pilotErrorCode", "transExitCode", "exeErrorCode", "nEvents"):
            if key in fields:
                entry[key] = _int(fields[key], fields[key])
        for key in ("pilotErrorDiag", "exeErrorDiag", "startTime", "endTime", "pilotTiming", "jobMetrics",
                    "metaData", "cpuConsumptionTime", "maxRSS"):
            if key in fields:
                entry[key] = fields[key]
        if "xml" in fields:
            report = json.loads(fields["xml"]) if isinstance(fields["xml"], str) else fields["xml"]
            entry["output_report"] = report
            expected = {x for x in str(job.get("outFiles") or "").split(",") if not wire.is_null(x)}
            entry["adder"] = "ok" if set(report) == expected else "pilot produced inconsistently with jobdef"
        jobs.append(entry)
    ranges = [{"eventRangeID": rid, "PandaID": pid, "status": status, "errorCode": code, "errorDiag": diag,
               "zipFile": json.loads(zip_info) if zip_info else None, "updates": updates}
              for rid, pid, status, code, diag, zip_info, updates in db.execute(
                  "SELECT event_range_id, panda_id, status, error_code, error_diag, zip, updates FROM events "
                  "ORDER BY ord")]
    n_requests = db.execute("SELECT count(*) FROM requests").fetchone()[0]
    nodes = [{**json.loads(fields), "updates": updates}
             for fields, updates in db.execute("SELECT fields, updates FROM worker_nodes ORDER BY host_name")]
    return {"jobs": jobs, "event_ranges": ranges, "requests": n_requests, "worker_nodes": nodes}


def _task_of_range(range_id: str) -> int | None:
    """The jediTaskID in a server-made eventRangeID ``<task>-<PandaID>-<file>-<processID>-<attempt>``."""
    return _int(range_id.split("-", 1)[0])


def _v1_event_update_bug_body(version: Any) -> bytes:
    """What v1 update_event_ranges answers (HTTP 500, after committing) on 0.8.1 and 1.0.4 alike (A.5, A.7)."""
    if (_int(version, 0) or 0) >= 1:
        return b"unhashable type: 'list'"
    return b"Type not serializable for {'Returns', 'Commands'} (<class 'set'>)"


def token_fingerprint(token: str) -> str:
    """How the request log names a token (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def dump_state(path: Path) -> dict[str, Any]:
    """The final state of every job and range in a server state file (``hpcpilot serve --dump``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no server state file {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _dump(db)
    finally:
        db.close()


# -------------------------------------------------------------------------------- HTTP layer

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out apart: without it each reply waits ~40 ms
    server_version = "hpcpilot-panda-test/0.1"

    @property
    def app(self) -> PandaTestServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def _auth(self) -> str:
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header[len("Bearer "):].strip()
            origin = self.headers.get("Origin", "")
            return f"bearer:{token_fingerprint(token)} origin:{origin}"
        getpeercert = getattr(self.connection, "getpeercert", None)
        cert = getpeercert() if getpeercert else None
        if cert:
            subject = dict(x[0] for x in cert.get("subject", ()))
            return "x509:" + str(subject.get("commonName", "?"))
        return "none"

    def _token_ok(self) -> bool:
        tokens = self.app.tokens
        if tokens is None:
            return True
        header = self.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[len("Bearer "):].strip() in tokens

    def _dispatch(self) -> None:
        if self.app._httpd is not self.server:  # this listener was stopped: behave like a dead server
            self._hang_up()
            return
        path = urlsplit(self.path).path
        body = self._read_body()
        if path.startswith("/admin/"):
            self._admin(path[len("/admin/"):], body)
            return
        try:
            if path.startswith(wire.LEGACY_PREFIX):
                self._legacy(path[len(wire.LEGACY_PREFIX):], body)
            elif path == wire.UPDATE_WORKER_NODE_PATH and "v1" in self.app.apis:
                self._worker_node(body)
            elif path in wire.V1_METHOD_BY_PATH and "v1" in self.app.apis:
                self._v1(wire.V1_METHOD_BY_PATH[path], body)
            else:
                self._send(404, b"Not Found")
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (it timed out): nobody to answer
            self.close_connection = True
        except Exception as exc:  # A.6.6: an exception inside a method is HTTP 500 with its text
            logger.exception("test server: error in %s", path)
            with contextlib.suppress(OSError):
                self._send(500, f"{type(exc).__name__}: {exc}".encode())

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _legacy_fields(self, body: bytes) -> dict[str, Any]:
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        if "application/json" in self.headers.get("Content-Type", ""):
            data = json.loads(gzip.decompress(body)) if body else {}  # legacy always gunzips JSON bodies
            return {**query, **{k: (str(v) if isinstance(v, bool) else v) for k, v in data.items()}}
        return {**query, **dict(parse_qsl(body.decode(), keep_blank_values=True))}

    def _legacy(self, method: str, body: bytes) -> None:
        if method not in wire.METHODS + wire.LOOKUPS or "legacy" not in self.app.apis:  # 1.0: every method
            self.app.record("legacy", method, {}, 403, self._auth())
            self._send(403, f"ERROR : method {method} is forbidden".encode())
            return
        fields = self._legacy_fields(body)
        if not self._token_ok():
            self.app.record("legacy", method, fields, 401, self._auth())
            self._send(401, b"invalid token")
            return
        self._serve("legacy", method, fields, fields)

    def _v1(self, method: str, body: bytes) -> None:
        if method in wire.LOOKUPS:
            self._v1_lookup(method)
            return
        if "application/json" not in self.headers.get("Content-Type", ""):
            fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
            self.app.record("v1", method, fields, 200, self._auth())
            name = next(iter(fields), "job_id")
            self._v1_reply({"success": False, "data": None,
                            "message": f"Type error: '{name}' must be of type int, got str."})
            return
        try:
            fields = json.loads(body) if body else {}
        except ValueError as exc:  # 1.0.4's words (0.8.1 answers the bare exception text)
            self.app.record("v1", method, {}, 500, self._auth())
            self._send(500, f"ERROR : received invalid JSON : {exc}".encode())
            return
        if not self._token_ok():
            self.app.record("v1", method, fields, 401, self._auth())
            self._send(401, b"invalid token")
            return
        bad = [k for k in ("job_id", "n_jobs", "n_ranges") if k in fields and not isinstance(fields[k], int)]
        if bad:
            self.app.record("v1", method, fields, 200, self._auth())
            self._v1_reply({"success": False, "data": None,
                            "message": f"Type error: '{bad[0]}' must be of type int, got "
                                       f"{type(fields[bad[0]]).__name__}."})
            return
        self._serve("v1", method, fields, wire.from_v1(method, fields))

    def _worker_node(self, body: bytes) -> None:
        """v1 update_worker_node: inserts or refreshes a node of the worker-node map; unknown fields are refused
        as v1 refuses them, the three required ones must be there (0.8.1 and 1.0.4 take the same fields)."""
        fields = json.loads(body) if body else {}
        unknown = sorted(set(fields) - wire.WORKER_NODE_FIELDS)
        missing = [k for k in ("site", "host_name", "cpu_model") if k not in fields]
        self.app.record("v1", wire.UPDATE_WORKER_NODE, fields, 200, self._auth())
        if unknown or missing:
            why = f"got an unexpected keyword argument '{unknown[0]}'" if unknown else \
                f"missing a required argument: '{missing[0]}'"
            self._v1_reply({"success": False, "data": None, "message": f"Argument error: {why}"})
            return
        self._v1_reply({"success": True, "data": None, "message": self.app.upsert_worker_node(fields)})

    def _v1_lookup(self, method: str) -> None:
        """The v1 look-ups, GET only, with their arguments cast as the server casts them (A.5)."""
        pairs = parse_qsl(urlsplit(self.path).query, keep_blank_values=True)
        if self.command != "GET":
            self.app.record("v1", method, dict(pairs), 200, self._auth())
            self._v1_reply({"success": False, "data": None, "message": f"expecting GET, received {self.command}"})
            return
        if method == wire.GET_EVENTS_STATUS:
            fields: dict[str, Any] = dict(pairs)
            self._serve("v1", method, fields, {"ids": fields.get("job_task_ids", "")})
            return
        values = [v for k, v in pairs if k == "job_ids"]
        if not values or any(_int(v) is None for v in values):  # List[int] is cast from repeated parameters
            self.app.record("v1", method, {"job_ids": values}, 200, self._auth())
            self._v1_reply({"success": False, "data": None, "message": f"Type error: 'job_ids' with value "
                                                                      f"'{values}' could not be casted to type "
                                                                      "List from list."})
            return
        self._serve("v1", method, {"job_ids": [_int(v) for v in values]}, {"ids": " ".join(values)})

    def _serve(self, api: str, method: str, fields: Mapping[str, Any], legacy_fields: dict[str, Any]) -> None:
        """Run one call, counted in ``app.concurrency`` while it is served (including a slow fault's wait)."""
        with self.app.concurrency.serving(method):
            self._serve_call(api, method, fields, legacy_fields)

    def _serve_call(self, api: str, method: str, fields: Mapping[str, Any], legacy_fields: dict[str, Any]) -> None:
        """Run one call (with the fault set for it, before or after committing) and answer it."""
        fault = self.app.faults.take(method)
        if fault is not None and not fault.after_commit:
            if fault.kind == "slow":
                self.app.wait_released(fault.delay)
            else:
                self._send_fault(api, method, fields, fault, None)
                return
        status, body, content_type = self._encode(api, method, fields, self.app.call(method, legacy_fields))
        if fault is not None and fault.after_commit:
            if fault.kind == "slow":
                self.app.wait_released(fault.delay)
            else:
                self._send_fault(api, method, fields, fault, body)
                return
        self.app.record(api, method, fields, status, self._auth())
        self._send(status, body, content_type)

    def _send_fault(self, api: str, method: str, fields: Mapping[str, Any], fault: Fault,
                    real_body: bytes | None) -> None:
        answer = fault_answer(fault, api == "v1", real_body)
        self.app.record(api, method, fields, answer[0] if answer else 0, self._auth())
        if answer is None:
            self._hang_up()
        else:
            self._send(*answer)

    def _encode(self, api: str, method: str, fields: Mapping[str, Any], reply: _Reply) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type) of a method's reply in the request's dialect."""
        if api == "v1":
            return self._v1_encode(method, fields, reply)
        if "application/json" in self.headers.get("Accept", ""):
            return reply.http_status, json.dumps(reply.data).encode(), "application/json"
        if reply.raw is not None:
            return reply.http_status, reply.raw, "text/plain"
        flat = {k: (v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict) else str(v))
                for k, v in reply.data.items()}
        return reply.http_status, urlencode(flat).encode(), "text/plain"

    def _v1_encode(self, method: str, fields: Mapping[str, Any], reply: _Reply) -> tuple[int, bytes, str]:
        data = reply.data
        if method == wire.UPDATE_EVENT_RANGES and self.app.v1_event_update_bug:
            return 500, _v1_event_update_bug_body(fields.get("version")), "text/plain"  # A.5: committed, then 500
        if method == wire.GET_JOB:
            if data.get("StatusCode") == wire.STATUS_NO_JOBS:
                out: dict[str, Any] = {"success": False, "message": "No jobs in PanDA", "data": None}
            else:
                out = {"success": True, "message": "", "data": {"StatusCode": 0, "jobs": data.get("jobs") or [data]}}
        elif method == wire.GET_EVENT_RANGES:
            out = {"success": True, "message": "", "data": data.get("eventRanges", [])}
        elif method == wire.UPDATE_EVENT_RANGES:
            out = {"success": True, "message": "",
                   "data": {"StatusCode": 0, "Returns": replies.nested_json(data["Returns"], "Returns"),
                            "Commands": replies.nested_json(data["Command"], "Command")}}
        elif reply.v1_error is not None:
            out = {"success": False, "message": reply.v1_error, "data": None}
        elif reply.v1 is not None:
            out = {"success": True, "message": "", "data": reply.v1}
        else:
            out = {"success": True, "message": "", "data": data}
        return 200, json.dumps(out).encode(), "application/json"

    def _v1_reply(self, out: Mapping[str, Any]) -> None:
        self._send(200, json.dumps(out).encode(), "application/json")

    def _admin(self, name: str, body: bytes) -> None:
        data = json.loads(body) if body else {}
        if name == "fault":
            self.app.set_fault(data.get("kind"), data.get("count"), float(data.get("delay", 0.0)),
                               method=data.get("method"), after_commit=bool(data.get("after_commit")))
            out: Any = {"ok": True}
        elif name == "command":
            self.app.set_command(int(data["PandaID"]), str(data["command"]))
            out = {"ok": True}
        elif name == "dump":
            out = self.app.dump()
        elif name == "requests":
            out = self.app.requests(data.get("method"))
        else:
            self._send(404, b"Not Found")
            return
        self._send(200, json.dumps(out).encode(), "application/json")
