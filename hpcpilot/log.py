"""Per-rank logging, to stderr or one file per rank: ``[rank r/N host]`` text lines or one JSON object per line.

Times are ISO 8601 UTC with a ``Z`` (``2026-12-01T10:31:05.123Z``), the zone summary.json and the batch
system use, so lines from ranks on different nodes and the run's files line up without guessing a zone.
A line about one job carries its PandaID: given as ``extra={"PandaID": id}``, or taken from the job's thread
(worker.py names it ``job-<PandaID>``), so a JSON log can be filtered per job.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
from pathlib import Path

LOG_FORMAT = "%(asctime)s [rank {rank}/{size} {host}] %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
_JOB_THREAD = re.compile(r"job-(\d+)$")


def utc_time(epoch: float) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for an epoch."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def panda_id_of_record(record: logging.LogRecord) -> int | None:
    """The PandaID a log line is about: ``extra={"PandaID": ...}``, else the job thread it was logged from."""
    given = getattr(record, "PandaID", None)
    if given is not None:
        return int(given)
    match = _JOB_THREAD.match(record.threadName or "")
    return int(match.group(1)) if match else None


def current_panda_id() -> int | None:
    """The PandaID of the job whose thread is running (None outside a job thread)."""
    match = _JOB_THREAD.match(threading.current_thread().name)
    return int(match.group(1)) if match else None


class UtcFormatter(logging.Formatter):
    """The text format with ISO 8601 UTC times."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_time(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, rank, size, host, logger, message, PandaID when known."""

    def __init__(self, rank: int, size: int, host: str) -> None:
        super().__init__()
        self.rank, self.size, self.host = rank, size, host

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"time": utc_time(record.created), "level": record.levelname, "rank": self.rank,
                                    "size": self.size, "host": self.host, "logger": record.name,
                                    "message": record.getMessage()}
        panda_id = panda_id_of_record(record)
        if panda_id is not None:
            entry["PandaID"] = panda_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(rank: int, size: int, level: str = "INFO", log_dir: Path | None = None,
                  log_format: str = "text") -> None:
    """Configure the root logger once for this rank; a log file per rank when ``log_dir`` is given."""
    host = socket.gethostname().split(".")[0]
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(rank, size, host)
    else:
        formatter = UtcFormatter(LOG_FORMAT.format(rank=rank, size=size, host=host))
    handler: logging.Handler
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_dir / f"pilot.rank{rank}.log")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
