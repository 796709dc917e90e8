"""The test server's event-range methods (getEventRanges, updateEventRanges, get_events_status).

As the real panda-server answers them (panda-wire A.5, A.6): empty ranges for unknown or killed jobs,
``StatusCode=0&Returns=%22&Command=E`` for non-JSON event input, the extra trailing ``false`` when
events finish, and ``get_events_status`` failing (legacy ``null``, v1 a database error) where the
server's code fails on an item.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from hpcpilot_serve.clones import clone_jobset_of, take_clone_range
from hpcpilot_serve.reply import Reply
from hpcpilot_serve.state import as_int

FINAL_EVENT_STATES = frozenset({"finished", "failed", "fatal"})
SKIPPED_EVENT_STATES = frozenset({"running", "transferring"})
LOOKUP_DB_ERROR = "database error in the PanDA server"
"""What v1 get_event_range_statuses answers when the server's code fails on an item (no ``panda_id``)."""


def get_event_ranges(db: sqlite3.Connection, fields: Mapping[str, Any]) -> Reply:
    """Up to ``nRanges`` ready ranges of a running job (a clone gets its jobset's one range, first come)."""
    panda_id = as_int(fields.get("pandaID"))
    n_ranges = as_int(fields.get("nRanges"), 10) or 10
    row = db.execute("SELECT status, command FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
    if row is None or row[0] not in ("sent", "starting", "running") or row[1] == "tobekilled":
        return Reply({"StatusCode": 0, "eventRanges": []})  # A.6.3
    jobset = clone_jobset_of(db, panda_id)
    if jobset is not None:
        return Reply({"StatusCode": 0, "eventRanges": take_clone_range(db, panda_id, jobset)})
    rows = db.execute("SELECT event_range_id, body FROM events WHERE panda_id=? AND status='ready' "
                      "ORDER BY ord LIMIT ?", (panda_id, n_ranges)).fetchall()
    db.executemany("UPDATE events SET status='sent' WHERE event_range_id=?", [(r[0],) for r in rows])
    return Reply({"StatusCode": 0, "eventRanges": [json.loads(body) for _id, body in rows]})


def _flat_events(items: list[Any], version: int) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(event, zip info) per event: version 1 groups events under their zip file, version 0 lists them."""
    flat: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for item in items:
        if version >= 1 and isinstance(item, Mapping) and "eventRanges" in item:
            zip_info = item.get("zipFile") or item.get("esOutput")
            flat.extend((dict(e), zip_info) for e in item["eventRanges"])
        else:
            flat.append((dict(item) if isinstance(item, Mapping) else {}, None))
    return flat


def update_event_ranges(db: sqlite3.Connection, fields: Mapping[str, Any], trailing_false: bool = True) -> Reply:
    """Store each event's final state; ``Returns`` per event and ``Command`` per job, as the server answers."""
    try:
        items = json.loads(str(fields.get("eventRanges", "")))
        if not isinstance(items, list):
            raise ValueError("not a list")
    except ValueError:
        # A.6.4: the server indexes characters of an error string: garbage with status 0.
        return Reply({"StatusCode": 0, "Returns": '"', "Command": "E"}, raw=b"StatusCode=0&Returns=%22&Command=E")
    flat = _flat_events(items, as_int(fields.get("version"), 0) or 0)
    returns: list[bool | None] = []
    commands: dict[str, str | None] = {}
    for event, zip_info in flat:
        ok, panda_id = _update_one_event(db, event, zip_info)
        returns.append(ok)
        if panda_id is not None:
            row = db.execute("SELECT command FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
            command = row[0] if row and row[0] in ("tobekilled", "softkill") else None
            commands[str(panda_id)] = command if row else "tobekilled"
    if trailing_false and any(r is True and e.get("eventStatus") == "finished"
                              for r, (e, _z) in zip(returns, flat, strict=True)):
        returns.append(False)  # A.6.5: nEvents update fails on PostgreSQL after the events were stored
    return Reply({"StatusCode": 0, "Returns": json.dumps(returns), "Command": json.dumps(commands)})


def _update_one_event(db: sqlite3.Connection, event: Mapping[str, Any],
                      zip_info: Any) -> tuple[bool | None, int | None]:
    """(the server's return for the event, its PandaID if the range id names one)."""
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
    job = db.execute("SELECT status FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
    row = db.execute("SELECT status FROM events WHERE event_range_id=?", (range_id,)).fetchone()
    if job is None or job[0] not in ("sent", "starting", "running", "transferring") or row is None:
        return False, panda_id
    db.execute("UPDATE events SET status=?, error_code=?, error_diag=?, zip=?, updates=updates+1 "
               "WHERE event_range_id=?", (status, as_int(event.get("errorCode")), event.get("errorDiag"),
                                          json.dumps(zip_info) if zip_info else None, range_id))
    return True, panda_id


def task_of_range(range_id: str) -> int | None:
    """The jediTaskID in a server-made eventRangeID ``<task>-<PandaID>-<file>-<processID>-<attempt>``."""
    return as_int(range_id.split("-", 1)[0])


def range_states(db: sqlite3.Connection, job_task_ids: Any) -> dict[str, dict[str, Any]]:
    """{panda_id: {eventRangeID: {status, error, dialog}}} for [{task_id, panda_id}, ...], as the
    server's ``get_events_status`` reads them (A.5): a job with no ranges of that task maps to {}.
    Raises (ValueError, KeyError, TypeError, AttributeError) where the server's code fails: not JSON,
    or an item without ``panda_id`` or ``task_id`` -- the docstring's ``job_id`` is not read."""
    pairs = json.loads(job_task_ids) if isinstance(job_task_ids, str) else job_task_ids
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        task_id, panda_id = pair["task_id"], pair["panda_id"]
        rows = db.execute("SELECT event_range_id, status, error_code, error_diag FROM events "
                          "WHERE panda_id=? ORDER BY ord", (as_int(panda_id),)).fetchall()
        out[str(panda_id)] = {rid: {"status": status, "error": code, "dialog": diag}
                              for rid, status, code, diag in rows if task_of_range(rid) == as_int(task_id)}
    return out


def get_events_status(db: sqlite3.Connection, fields: Mapping[str, Any]) -> Reply:
    """get_events_status: legacy answers the bare JSON dict (no StatusCode) and ``null`` where the
    server's code fails; v1 answers ``success: false``, "database error in the PanDA server"."""
    try:
        data = range_states(db, fields.get("ids", "[]"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Reply(None, raw=b"null", v1_error=LOOKUP_DB_ERROR)
    return Reply(data, raw=json.dumps(data).encode(), v1=data)
