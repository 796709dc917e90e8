"""Reading a run record (``run.h5``): the one place that knows its HDF5 layout.

``load_run`` turns the file into a ``RunData`` (file attributes, each rank's node, each job's samples and
event-range updates, the final job records), so the statistics and the plots never touch h5py.  ``to_epoch``
and ``field_number`` read one value of a job record or range update whatever type it was written with, and
never raise: a record is whatever the pilot managed to write before it ended.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# numpy, h5py and hpcpilot.runrecord are imported inside the functions that use them: see the start-up
# note in hpcpilot/report/__init__.py
if TYPE_CHECKING:
    import numpy as np


class RunFileError(Exception):
    """The run record cannot be read; the message is one line naming the file and the problem."""


@dataclass
class JobSeries:
    """The samples and event-range updates of one job on one rank."""

    rank: int
    panda_id: int
    samples: np.ndarray  # rows of runrecord.SAMPLE_DTYPE, in time order
    event_updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunData:
    """What one run record holds, read once; the statistics and the plots work from it."""

    path: Path
    attrs: dict[str, Any]
    nodes: dict[int, dict[str, Any]]
    series: dict[tuple[int, int], JobSeries]
    jobs: list[dict[str, Any]]


# -- loading ----------------------------------------------------------------------------


def _json_rows(dataset: Any) -> list[dict[str, Any]]:
    return [json.loads(text) for text in dataset.asstr()[:]]


def _attr_value(value: Any) -> Any:
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_rank(rank_group: Any, rank: int, run: RunData) -> None:
    import numpy as np

    from hpcpilot.runrecord import SAMPLE_DTYPE

    if "node" in rank_group:
        attrs = {key: _attr_value(v) for key, v in rank_group["node"].attrs.items()}
        run.nodes[rank] = json.loads(attrs["info"]) if "info" in attrs else attrs
    for name, job in rank_group.get("jobs", {}).items():
        samples = job["samples"][:] if "samples" in job else np.zeros(0, dtype=SAMPLE_DTYPE)
        samples = samples[np.argsort(samples["time"], kind="stable")]
        updates = _json_rows(job["event_ranges"]) if "event_ranges" in job else []
        run.series[(rank, int(name))] = JobSeries(rank, int(name), samples, updates)


def load_run(path: str | Path) -> RunData:
    """Read a run record; raises RunFileError with a one-line message when it cannot."""
    import h5py

    from hpcpilot.runrecord import FORMAT

    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: no such file")
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != FORMAT:
                raise RunFileError(f"{path}: not an hpcpilot run record (format attribute is "
                                   f"{_attr_value(f.attrs.get('format'))!r})")
            run = RunData(path, {k: _attr_value(v) for k, v in f.attrs.items()}, {}, {}, [])
            run.jobs = _json_rows(f["jobs"]) if "jobs" in f else []
            for name, rank_group in f.get("ranks", {}).items():
                _read_rank(rank_group, int(name), run)
    except RunFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise RunFileError(f"{path}: unreadable run record ({reason})") from None
    return run


# -- one value of a record ------------------------------------------------------------


def to_epoch(value: Any) -> float | None:
    """An epoch time from a number or a 'YYYY-MM-DD HH:MM:SS' (UTC) / ISO string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value > 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def field_number(record: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    try:
        value = float(record.get(key, default))
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default
