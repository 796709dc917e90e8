"""What a rank knows about its node: cores, memory, CPU model, free disk at the workdir."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any


def _cpu_model_and_mhz(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, float]:
    model, mhz = "", 0.0
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "cpu MHz" and not mhz:
                    mhz = float(value.strip() or 0)
                if model and mhz:
                    break
    except (OSError, ValueError):
        pass
    return model, mhz


def _memory_mb(meminfo: str = "/proc/meminfo") -> int:
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def node_info(workdir: Path) -> dict[str, Any]:
    """Node facts as PanDA's getJob wants them (mem and disk in MB, cpu in MHz)."""
    model, mhz = _cpu_model_and_mhz()
    # A worker asks before its jobs directory exists (on node-local scratch it never does until the first job):
    # the free space is that of the file system it will be made on, its nearest existing ancestor.
    existing = next((p for p in (workdir, *workdir.parents) if p.exists()), workdir)
    try:
        disk_mb = shutil.disk_usage(existing).free // (1024 * 1024)
    except OSError:
        disk_mb = 0
    return {
        "node": os.environ.get("PANDA_HOSTNAME") or socket.gethostname(),
        "cores": os.cpu_count() or 1,
        "mem": _memory_mb(),
        "cpu": round(mhz),
        "cpu_model": model,
        "disk": disk_mb,
    }
