"""The test server's state in SQLite: jobs, event ranges, every request received, the worker-node map.

In a file, not in memory, so the server can be stopped and started again on the same port ("down")
without losing anything, and so a test (or ``hpcpilot serve --dump``) reads the final state of every
job and range once the server process is gone.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcpilot.panda import wire

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS worker_node_gpus (
    site TEXT NOT NULL, host_name TEXT NOT NULL, vendor TEXT NOT NULL, model TEXT NOT NULL, fields TEXT NOT NULL,
    updates INTEGER NOT NULL, PRIMARY KEY (site, host_name, vendor, model));
"""

_FINAL_NUMBERS = ("pilotErrorCode", "transExitCode", "exeErrorCode", "nEvents")
_FINAL_TEXTS = ("pilotErrorDiag", "exeErrorDiag", "startTime", "endTime", "pilotTiming", "jobMetrics",
                "metaData", "cpuConsumptionTime", "maxRSS")


def as_int(value: Any, default: int | None = None) -> int | None:
    """A request field as the server casts it to an integer: ``default`` for null, booleans and non-numbers."""
    if wire.is_null(value) or isinstance(value, bool):
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def open_state(path: Path) -> sqlite3.Connection:
    """The state file, made if new (autocommit: the server opens its own transaction per call)."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def record_request(db: sqlite3.Connection, api: str, method: str, fields: Mapping[str, Any], http_status: int,
                   auth: str) -> None:
    """Log one request as it was received (tests assert on what the pilot sent and how it was answered)."""
    db.execute("INSERT INTO requests (time, api, method, fields, http_status, auth) VALUES (?, ?, ?, ?, ?, ?)",
               (time.time(), api, method, json.dumps(fields, default=str), http_status, auth))


def read_requests(db: sqlite3.Connection, method: str | None = None) -> list[dict[str, Any]]:
    """Every request received (optionally only one legacy method name), oldest first."""
    query = "SELECT seq, time, api, method, fields, http_status, auth FROM requests"
    params: tuple[Any, ...] = ()
    if method:
        query += " WHERE method=?"
        params = (method,)
    rows = db.execute(query + " ORDER BY seq", params).fetchall()
    return [{"seq": s, "time": t, "api": a, "method": m, "fields": json.loads(f), "http_status": h,
             "auth": au} for s, t, a, m, f, h, au in rows]


def _dumped_job(row: tuple[Any, ...]) -> dict[str, Any]:
    """One job's final state: its status history and what its final update said, as the Adder would see it."""
    panda_id, definition, status, attempt, command, states, final = row
    fields = json.loads(final)
    job = json.loads(definition)
    entry = {"PandaID": panda_id, "status": status, "attemptNr": attempt, "command": command or None,
             "states": json.loads(states)}
    for key in _FINAL_NUMBERS:
        if key in fields:
            entry[key] = as_int(fields[key], fields[key])
    for key in _FINAL_TEXTS:
        if key in fields:
            entry[key] = fields[key]
    if "xml" in fields:
        report = json.loads(fields["xml"]) if isinstance(fields["xml"], str) else fields["xml"]
        entry["output_report"] = report
        expected = {x for x in str(job.get("outFiles") or "").split(",") if not wire.is_null(x)}
        entry["adder"] = "ok" if set(report) == expected else "pilot produced inconsistently with jobdef"
    return entry


def dump(db: sqlite3.Connection) -> dict[str, Any]:
    """Every job, range and worker node, and how many requests came (``/admin/dump``, ``--dump``)."""
    jobs = [_dumped_job(row) for row in db.execute(
        "SELECT panda_id, definition, status, attempt_nr, command, states, final FROM jobs ORDER BY panda_id")]
    ranges = [{"eventRangeID": rid, "PandaID": pid, "status": status, "errorCode": code, "errorDiag": diag,
               "zipFile": json.loads(zip_info) if zip_info else None, "updates": updates}
              for rid, pid, status, code, diag, zip_info, updates in db.execute(
                  "SELECT event_range_id, panda_id, status, error_code, error_diag, zip, updates FROM events "
                  "ORDER BY ord")]
    n_requests = db.execute("SELECT count(*) FROM requests").fetchone()[0]
    nodes = [{**json.loads(fields), "updates": updates}
             for fields, updates in db.execute("SELECT fields, updates FROM worker_nodes ORDER BY host_name")]
    gpus = [{**json.loads(fields), "updates": updates} for fields, updates in db.execute(
        "SELECT fields, updates FROM worker_node_gpus ORDER BY site, host_name, vendor, model")]
    return {"jobs": jobs, "event_ranges": ranges, "requests": n_requests, "worker_nodes": nodes,
            "worker_node_gpus": gpus}


def dump_state(path: Path) -> dict[str, Any]:
    """The final state of every job and range in a server state file (``hpcpilot serve --dump``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no server state file {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dump(db)
    finally:
        db.close()
