"""Filling the test server: job definitions, the event ranges made for event-service jobs, explicit ranges."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from hpcpilot.panda import wire
from hpcpilot_serve.clones import clone_jobset, clone_rows
from hpcpilot_serve.state import as_int


def load_jobs(db: sqlite3.Connection, jobs: Iterable[Mapping[str, Any]] | Mapping[str, Any], ranges_per_job: int = 0,
              events_per_range: int = 1) -> list[int]:
    """Add job definitions (getJob dicts; a Harvester ``{PandaID: job}`` map or a list).  Event-service
    jobs (eventService=True) get ``ranges_per_job`` ranges.  Known PandaIDs are left as they are."""
    if isinstance(jobs, Mapping):
        jobs = list(jobs.values()) if "PandaID" not in jobs else [jobs]
    added = []
    for job in jobs:
        panda_id = as_int(job.get("PandaID"))
        if panda_id is None:
            raise ValueError(f"job definition without PandaID: {wire.snippet(json.dumps(job))}")
        if db.execute("SELECT 1 FROM jobs WHERE panda_id=?", (panda_id,)).fetchone():
            continue
        db.execute("INSERT INTO jobs (panda_id, definition, status, attempt_nr) VALUES (?, ?, ?, ?)",
                   (panda_id, json.dumps(dict(job)), "activated", as_int(job.get("attemptNr"), 0)))
        if ranges_per_job and str(job.get("eventService", "")).lower() == "true":
            add_ranges(db, job, panda_id, ranges_per_job, max(1, events_per_range))
        if clone_jobset(job) is not None:
            add_clone_range(db, job, panda_id)
        added.append(panda_id)
    return added


def load_ranges(db: sqlite3.Connection, panda_id: int, ranges: Iterable[Mapping[str, Any]]) -> None:
    """Add explicit event ranges (getEventRanges dicts) for a job."""
    start = db.execute("SELECT count(*) FROM events").fetchone()[0]
    for i, item in enumerate(ranges):
        db.execute("INSERT OR IGNORE INTO events (event_range_id, panda_id, body, status, ord) "
                   "VALUES (?, ?, ?, 'ready', ?)", (str(item["eventRangeID"]), panda_id, json.dumps(dict(item)),
                                                    start + i))


def add_ranges(db: sqlite3.Connection, job: Mapping[str, Any], panda_id: int, n: int, per_range: int) -> None:
    """``n`` ranges of ``per_range`` events over the job's first input, named as the server names them:
    ``<task>-<PandaID>-1-<i>-<attempt>``."""
    task = as_int(job.get("taskID"), as_int(job.get("jediTaskID"), 0))
    lfns = [x for x in str(job.get("inFiles") or "").split(",") if not wire.is_null(x)]
    guids = [x for x in str(job.get("GUID") or "").split(",") if not wire.is_null(x)]
    lfn = lfns[0] if lfns else f"EVNT.{panda_id}._000001.pool.root.1"
    guid = guids[0] if guids else str(uuid.uuid5(uuid.NAMESPACE_URL, lfn)).upper()
    scope = str(job.get("scopeIn") or "") if not wire.is_null(job.get("scopeIn")) else "hpcpilot"
    attempt = (as_int(job.get("attemptNr"), 0) or 0) + 1
    ranges = [{"eventRangeID": f"{task}-{panda_id}-1-{i + 1}-{attempt}", "startEvent": i * per_range,
               "lastEvent": i * per_range + per_range - 1, "LFN": lfn, "GUID": guid, "scope": scope}
              for i in range(n)]
    load_ranges(db, panda_id, ranges)


def add_clone_range(db: sqlite3.Connection, job: Mapping[str, Any], panda_id: int) -> None:
    """One range for the whole jobset of a clone job, made when its first clone is loaded."""
    jobset = clone_jobset(job)
    if clone_rows(db, jobset, "ready", "sent", "finished", "failed", "fatal"):
        return
    add_ranges(db, {**job, "eventService": "True"}, panda_id, 1, 1)
