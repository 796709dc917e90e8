"""The test server's job methods (getJob, updateJob, getStatus, the worker-node map) on its SQLite state.

Each answers as the real panda-server does (panda-wire A.6): ``tobekilled`` for an unknown or archived
job or a wrong attemptNr, status 0 and no change for an invalid state, and a job the pilot reported
finished or failed reads ``holding`` in a status look-up, as on the real server before its Adder.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

from hpcpilot.panda import wire
from hpcpilot_serve.hardware import TASK_ARCHITECTURE_KEY, job_fits
from hpcpilot_serve.reply import Reply
from hpcpilot_serve.state import as_int

VALID_JOB_STATES = frozenset({"running", "failed", "finished", "holding", "starting", "transferring"})
ACTIVE_JOB_STATES = frozenset({"sent", "starting", "running", "transferring", "holding"})
ONE_SHOT_COMMANDS = frozenset({"debug", "debugoff"})


def get_job(db: sqlite3.Connection, fields: Mapping[str, Any]) -> Reply:
    """Hand out the next activated jobs: one bare job dict, or a ``jobs`` list when ``nJobs`` was asked; with a
    ``target_architecture`` (1.0) only jobs whose task's GPU spec the target's GPUs meet (``hardware``)."""
    n_jobs = as_int(fields.get("nJobs"))
    target = fields.get(wire.TARGET_ARCHITECTURE)
    rows = []
    for panda_id, definition in db.execute("SELECT panda_id, definition FROM jobs WHERE status='activated' "
                                           "ORDER BY panda_id"):
        job = json.loads(definition)
        if job_fits(job, target):
            job.pop(TASK_ARCHITECTURE_KEY, None)  # the task's, not the job's: the pilot never sees it
            rows.append((panda_id, job))
            if len(rows) >= max(1, n_jobs or 1):
                break
    if not rows:
        return Reply({"StatusCode": wire.STATUS_NO_JOBS, "errorDialog": "no jobs in PanDA"})
    jobs = []
    for panda_id, job in rows:
        db.execute("UPDATE jobs SET status='sent', updated=? WHERE panda_id=?", (time.time(), panda_id))
        jobs.append({"StatusCode": 0, **job})
    if n_jobs is None:
        return Reply(jobs[0])
    return Reply({"StatusCode": 0, "jobs": jobs})


def update_job(db: sqlite3.Connection, fields: Mapping[str, Any]) -> Reply:
    """Record a job's new state and answer its queued command (a one-shot command is then cleared)."""
    panda_id = as_int(fields.get("jobId"))
    state = str(fields.get("state", ""))
    row = db.execute("SELECT status, attempt_nr, command, states FROM jobs WHERE panda_id=?",
                     (panda_id,)).fetchone()
    attempt = as_int(fields.get("attemptNr"))
    if row is None or row[0] not in ACTIVE_JOB_STATES or (attempt is not None and attempt != row[1]):
        return Reply({"StatusCode": 0, "command": "tobekilled"})  # A.6.1
    _status, _attempt, command, states = row
    if state not in VALID_JOB_STATES:
        return Reply({"StatusCode": 0, "command": "NULL"})  # A.6.2: silently ignored
    history = [*json.loads(states), state]
    final = json.dumps(dict(fields)) if state in ("finished", "failed", "holding") else None
    db.execute("UPDATE jobs SET status=?, states=?, final=COALESCE(?, final), updated=?, command=? "
               "WHERE panda_id=?", (state, json.dumps(history), final, time.time(),
                                    "" if command in ONE_SHOT_COMMANDS else command, panda_id))
    return Reply({"StatusCode": 0, "command": command or "NULL"})


def job_states(db: sqlite3.Connection, panda_ids: Iterable[Any]) -> list[tuple[Any, str, int]]:
    """(PandaID, state, attemptNr) as the real server tells them: 'not found' for an unknown job,
    'holding' for a job the pilot reported finished or failed (the Adder has not run, A.3)."""
    out = []
    for panda_id in panda_ids:
        row = db.execute("SELECT status, attempt_nr FROM jobs WHERE panda_id=?", (as_int(panda_id),)).fetchone()
        if row is None:
            out.append((panda_id, "not found", 0))
        else:
            out.append((panda_id, "holding" if row[0] in ("finished", "failed") else row[0], row[1]))
    return out


def get_status(db: sqlite3.Connection, fields: Mapping[str, Any]) -> Reply:
    """Legacy getStatus: ``status=a+b&attemptNr=1+2`` aligned with ``ids``, which the server splits on
    whitespace ('notfound' if unknown; a comma-joined '7,9' is one unknown id, A.5)."""
    ids = str(fields.get("ids", "")).split()
    states = job_states(db, ids)
    legacy = {"StatusCode": 0, "status": "+".join(s.replace("not found", "notfound") for _i, s, _a in states),
              "attemptNr": "+".join(str(a) for _i, _s, a in states)}
    return Reply(legacy, v1=[{"job_id": as_int(i, i), "status": s, "attempt_number": a} for i, s, a in states])


def upsert_worker_node(db: sqlite3.Connection, fields: Mapping[str, Any]) -> str:
    """Keep one row per host, as the server's worker-node map does; the server's message."""
    known = db.execute("SELECT 1 FROM worker_nodes WHERE host_name=?", (fields["host_name"],)).fetchone()
    db.execute("INSERT INTO worker_nodes (host_name, fields, updates) VALUES (?, ?, 1) ON CONFLICT"
               "(host_name) DO UPDATE SET fields=excluded.fields, updates=updates+1",
               (str(fields["host_name"]), json.dumps(dict(fields))))
    return "Updated worker node." if known else "Inserted new worker node."


def upsert_worker_node_gpu(db: sqlite3.Connection, fields: Mapping[str, Any]) -> str:
    """One row per (site, host, vendor, model), as 1.0.4's worker_node_gpus; the server's message."""
    key = tuple(str(fields[k]) for k in ("site", "host_name", "vendor", "model"))
    known = db.execute("SELECT 1 FROM worker_node_gpus WHERE site=? AND host_name=? AND vendor=? AND model=?",
                       key).fetchone()
    db.execute("INSERT INTO worker_node_gpus (site, host_name, vendor, model, fields, updates) VALUES "
               "(?, ?, ?, ?, ?, 1) ON CONFLICT (site, host_name, vendor, model) DO UPDATE SET "
               "fields=excluded.fields, updates=updates+1", (*key, json.dumps(dict(fields))))
    return "Updated existing worker node GPU." if known else "Inserted new worker node GPU."
