"""Clone jobs (cloneJob = runonce | storeonce, panda-wire C.5): the clones of a jobset share one event range.

The first clone that asks gets it (renamed to carry its PandaID, as the real event table records who
took it) and the others get none.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

CLONE_KINDS = ("runonce", "storeonce")


def clone_jobset(job: Mapping[str, Any]) -> str | None:
    """The jobsetID (as text) of a clone job, None for any other job."""
    if str(job.get("cloneJob") or "").strip() not in CLONE_KINDS:
        return None
    return str(job.get("jobsetID"))


def clone_jobset_of(db: sqlite3.Connection, panda_id: int | None) -> str | None:
    """The jobset of a loaded job if it is a clone, else None."""
    row = db.execute("SELECT definition FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
    return clone_jobset(json.loads(row[0])) if row else None


def clone_rows(db: sqlite3.Connection, jobset: str | None, *states: str) -> list[tuple[str, str, int]]:
    """The jobset's clone ranges in ``states`` (a definition SQLite cannot read as JSON -- NaN -- is no clone)."""
    marks = ",".join("?" * len(states))
    field = "CASE WHEN json_valid(j.definition) THEN json_extract(j.definition, '$.{}') END"
    return db.execute(
        "SELECT e.event_range_id, e.body, e.ord FROM events e JOIN jobs j ON e.panda_id = j.panda_id "
        f"WHERE e.status IN ({marks}) AND CAST({field.format('jobsetID')} AS TEXT) = ? "
        f"AND {field.format('cloneJob')} IN ('runonce', 'storeonce') ORDER BY e.ord",
        (*states, jobset)).fetchall()


def take_clone_range(db: sqlite3.Connection, panda_id: int, jobset: str) -> list[dict[str, Any]]:
    """The jobset's range for the clone that asks first (renamed to carry its PandaID); [] once taken."""
    ready = clone_rows(db, jobset, "ready")
    if not ready:
        return []
    old_id, body, order = ready[0]
    parts = old_id.split("-")
    new_id = "-".join([parts[0], str(panda_id), *parts[2:]]) if len(parts) == 5 else old_id
    item = {**json.loads(body), "eventRangeID": new_id}
    db.execute("DELETE FROM events WHERE event_range_id=?", (old_id,))
    db.execute("INSERT INTO events (event_range_id, panda_id, body, status, ord) VALUES (?, ?, ?, 'sent', ?)",
               (new_id, panda_id, json.dumps(item), order))
    return [item]
