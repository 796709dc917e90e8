"""Payload cgroups: a memory limit, exact memory accounting and a complete kill, where the node allows.

Three cases must work: cgroup v1 with a memory controller (this project's hybrid machines),
cgroup v2 with ``memory`` in ``cgroup.controllers`` (pure-v2 HPC and CI nodes), and no usable
cgroup at all (not root, read-only mounts, v2 without memory).  ``PayloadCgroup.create``
returns None in the last case and the pilot falls back to process-tree tracking; it never
raises, because a missing cgroup must not fail a job.

The current process's cgroup is found from ``/proc/self/cgroup`` and mapped to a directory
with ``/proc/self/mountinfo`` (the mount's root is stripped, so cgroup namespaces and
bind-mounted sub-trees resolve correctly).  Both files are parameters so tests can describe
fake trees under ``tmp_path``.

On v2 the payload cgroup is a child of the pilot's own cgroup, which needs ``+memory`` in the
parent's ``cgroup.subtree_control``; the kernel refuses that while the parent itself holds
processes (the "no internal processes" rule), and then no cgroup is used rather than moving
the pilot's own processes around.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

PROC_CGROUP = Path("/proc/self/cgroup")
MOUNTINFO = Path("/proc/self/mountinfo")
KILL_DEADLINE = 2.0
_POLL = 0.05
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")


class CgroupMemory(NamedTuple):
    """Memory of a payload cgroup in kB; version 1 or 2."""

    version: int
    current_kb: int
    peak_kb: int
    swap_kb: int


def oom_diag(memory: CgroupMemory | None, limit_kb: int | None) -> str:
    """The diagnostic of a payload the kernel killed at its cgroup's memory limit: its peak and the limit."""
    used = f"peak {memory.peak_kb / 1024:.0f} MB" if memory is not None else "peak unknown"
    limit = f"limit {limit_kb / 1024:.0f} MB" if limit_kb else "limit unknown"
    return f"payload killed by its cgroup memory limit ({used}, {limit})"


@dataclass(frozen=True)
class CgroupLocation:
    """The current process's cgroup directory in one hierarchy, and whether memory is accounted there."""

    version: int
    path: Path
    memory: bool


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(mountinfo_text: str) -> list[tuple[str, Path, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of each cgroup mount."""
    mounts = []
    for line in mountinfo_text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((_unescape(fields[3]), Path(_unescape(fields[4])), tail[0], set(tail[2].split(","))))
    return mounts


def _memberships(proc_cgroup_text: str) -> tuple[str | None, str | None]:
    """(v1 memory path, v2 unified path) from /proc/<pid>/cgroup lines ``id:controllers:path``."""
    v1 = v2 = None
    for line in proc_cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def _locate(cgroup_path: str, root: str, mount_point: Path) -> Path | None:
    """The directory of ``cgroup_path`` under a mount whose root is ``root``, or None if not visible."""
    root = root.rstrip("/")
    if cgroup_path != root and not cgroup_path.startswith(root + "/"):
        return None
    rel = cgroup_path[len(root):].lstrip("/")
    return mount_point / rel if rel else mount_point


def _v2_has_memory(path: Path) -> bool:
    try:
        return "memory" in (path / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def detect(proc_cgroup: Path = PROC_CGROUP, mountinfo: Path = MOUNTINFO) -> CgroupLocation | None:
    """Where the current process's memory cgroup is: v2 with memory, else v1 memory, else v2 without.

    Returns None when there is no cgroup mount at all or the files cannot be read.
    """
    try:
        v1_path, v2_path = _memberships(proc_cgroup.read_text())
        mounts = _mounts(mountinfo.read_text())
    except OSError as exc:
        log.debug("cgroup detection: %s", exc)
        return None
    v1 = v2 = None
    for root, point, fstype, options in mounts:
        if fstype == "cgroup2" and v2_path is not None and v2 is None:
            v2 = _locate(v2_path, root, point)
        elif fstype == "cgroup" and "memory" in options and v1_path is not None and v1 is None:
            v1 = _locate(v1_path, root, point)
    if v2 is not None and _v2_has_memory(v2):
        return CgroupLocation(2, v2, True)
    if v1 is not None and v1.is_dir():
        return CgroupLocation(1, v1, True)
    if v2 is not None and v2.is_dir():
        return CgroupLocation(2, v2, False)
    return None


def cpu_usage_seconds(pid: int, proc: Path = Path("/proc"), mountinfo: Path = MOUNTINFO) -> float | None:
    """CPU seconds charged to the cgroup process ``pid`` is in (v1 ``cpuacct.usage``, v2 ``cpu.stat``), or None.

    For a payload that is not the pilot's descendant (a podman container is conmon's child): its cgroup holds
    the CPU of every process that ran in it, also of those nobody the pilot knows reaped.
    """
    try:
        memberships = (proc / str(pid) / "cgroup").read_text().splitlines()
        mounts = _mounts(mountinfo.read_text())
    except OSError:
        return None
    for line in memberships:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        v2 = hier == "0" and controllers == ""
        if not v2 and "cpuacct" not in controllers.split(","):
            continue
        for root, point, fstype, options in mounts:
            if (fstype == "cgroup2") != v2 or (not v2 and "cpuacct" not in options):
                continue
            where = _locate(path, root, point)
            if where is None:
                continue
            if v2:
                usec = _read_keyed(where / "cpu.stat").get("usage_usec")
                return None if usec is None else usec / 1e6
            nsec = _read_int(where / "cpuacct.usage")
            return None if nsec is None else nsec / 1e9
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_keyed(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (memory.stat, memory.events, memory.oom_control)."""
    out = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class PayloadCgroup:
    """A cgroup made for one payload: limit, accounting, kill, removal."""

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.path = path

    def __repr__(self) -> str:
        return f"PayloadCgroup(v{self.version}, {self.path})"

    @classmethod
    def create(cls, name: str, memory_limit_bytes: int | None,
               location: CgroupLocation | None = None) -> PayloadCgroup | None:
        """A child cgroup ``name`` of the pilot's memory cgroup, or None (logged at debug) if not possible.

        ``location`` defaults to ``detect()``.  The limit also caps swap (v1 memsw = limit,
        v2 swap.max = 0) so that a payload over its limit is OOM-killed instead of swapping.
        """
        loc = location if location is not None else detect()
        if loc is None or not loc.memory:
            log.debug("no payload cgroup %s: no cgroup with a memory controller", name)
            return None
        if not _NAME.fullmatch(name):
            log.debug("no payload cgroup: bad name %r", name[:80])
            return None
        path = loc.path / name
        try:
            if loc.version == 2:
                _enable_v2_memory(loc.path)
            path.mkdir(exist_ok=True)
        except OSError as exc:
            log.debug("no payload cgroup %s: %s", path, exc.strerror or exc)
            return None
        group = cls(loc.version, path)
        try:
            group._configure(memory_limit_bytes)
        except OSError as exc:
            log.debug("no payload cgroup %s: %s", path, exc.strerror or exc)
            group.remove()
            return None
        return group

    def _configure(self, limit: int | None) -> None:
        if self.version == 2 and not _v2_has_memory(self.path):
            raise OSError(f"memory controller not enabled in {self.path}")
        if limit is None:
            return
        if self.version == 1:
            _write(self.path / "memory.limit_in_bytes", str(int(limit)))
            if (self.path / "memory.memsw.limit_in_bytes").exists():
                _write(self.path / "memory.memsw.limit_in_bytes", str(int(limit)))
        else:
            _write(self.path / "memory.max", str(int(limit)))
            if (self.path / "memory.swap.max").exists():
                _write(self.path / "memory.swap.max", "0")

    def add(self, pid: int) -> bool:
        """Move process ``pid`` into the cgroup; False (logged) if it is gone or not allowed."""
        try:
            _write(self.path / "cgroup.procs", str(int(pid)))
        except OSError as exc:
            log.debug("cannot add pid %d to %s: %s", pid, self.path, exc.strerror or exc)
            return False
        return True

    @property
    def procs_file(self) -> Path:
        """The file a process writes its own pid to in order to join (used by the payload launcher)."""
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        """The processes now in the cgroup (empty once it is gone)."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split() if p.isdigit()]

    def memory(self) -> CgroupMemory | None:
        """Current, peak and swap memory in kB; None when the cgroup or its memory files are gone.

        v1 uses memory.stat total_rss/total_swap (usage_in_bytes would include page cache) and
        memory.max_usage_in_bytes for the peak; v2 uses memory.current, memory.peak (kernel >= 5.19,
        else current) and memory.swap.current.
        """
        if self.version == 1:
            stat = _read_keyed(self.path / "memory.stat")
            peak = _read_int(self.path / "memory.max_usage_in_bytes")
            if not stat or peak is None:
                return None
            rss = stat.get("total_rss", stat.get("rss", 0))
            swap = stat.get("total_swap", stat.get("swap", 0))
            return CgroupMemory(1, rss // 1024, peak // 1024, swap // 1024)
        current = _read_int(self.path / "memory.current")
        if current is None:
            return None
        peak = _read_int(self.path / "memory.peak")
        swap = _read_int(self.path / "memory.swap.current") or 0
        return CgroupMemory(2, current // 1024, (peak if peak is not None else current) // 1024, swap // 1024)

    def oom_killed(self) -> bool:
        """Did the kernel OOM-kill a process of this cgroup (v1 memory.oom_control, v2 memory.events)?"""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return _read_keyed(self.path / name).get("oom_kill", 0) > 0

    def kill_all(self, deadline: float = KILL_DEADLINE) -> bool:
        """SIGKILL everything in the cgroup, repeatedly (forks race with us) until empty or ``deadline`` s.

        v2's cgroup.kill is atomic against forks; v1 needs the loop.  Returns True when empty.
        """
        end = time.monotonic() + deadline
        kill_file = self.path / "cgroup.kill"
        me = os.getpid()
        while True:
            pids = [p for p in self.pids() if p != me]
            if not pids:
                return True
            if self.version == 2 and kill_file.exists():
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
            else:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= end:
                return not [p for p in self.pids() if p != me]
            time.sleep(_POLL)

    def remove(self, deadline: float = KILL_DEADLINE) -> bool:
        """Kill what is left, then rmdir the cgroup; False (logged at debug) if it stays."""
        self.kill_all(deadline)
        end = time.monotonic() + deadline
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if time.monotonic() >= end:
                    log.debug("cannot remove %s: %s", self.path, exc.strerror or exc)
                    return False
            time.sleep(_POLL)


def _enable_v2_memory(parent: Path) -> None:
    """Make sure children of ``parent`` get the memory controller (``+memory`` in subtree_control)."""
    control = parent / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        _write(control, "+memory")
