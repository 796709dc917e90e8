"""Per-rank logging with a ``[rank r/N host]`` prefix, to stderr or one file per rank."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s [rank {rank}/{size} {host}] %(levelname)s %(name)s: %(message)s"


def setup_logging(rank: int, size: int, level: str = "INFO", log_dir: Path | None = None) -> None:
    """Configure the root logger once for this rank; a log file per rank when ``log_dir`` is given."""
    host = socket.gethostname().split(".")[0]
    formatter = logging.Formatter(LOG_FORMAT.format(rank=rank, size=size, host=host),
                                  datefmt="%Y-%m-%d %H:%M:%S")
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
