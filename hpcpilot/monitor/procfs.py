"""Read a payload process tree's memory, CPU, thread and I/O figures straight from /proc.

This module only does I/O; the arithmetic on samples lives in ``metrics``.  It exists
because the psutil way (``memory_full_info`` + ``cpu_times`` + ``num_threads`` per process,
plus a tree search) opens several files per process and walks every page table for Pss on
every call; a monitor that samples every few seconds can do much less.  Per process it
reads three small files:

* ``stat``: parent pid, state, utime/stime/cutime/cstime, thread count, virtual size and
  resident size.  ``comm`` (field 2) may hold spaces and parentheses, so fields are taken
  after the last ``)``.  Thread count and vsize come from here rather than from ``status``
  (the kernel prints the same counters in both), which saves a file per process.
* ``smaps_rollup``: Pss, Rss, Swap.  When it cannot be read (kernels before 4.14,
  another user's process) ``status`` VmRSS/VmSwap are used and Pss is taken as Rss,
  an upper bound, so a memory limit is never checked against too small a number.
* ``io``: rchar, wchar, read_bytes, write_bytes (0 when unreadable).

``smaps_rollup`` is the expensive one: the kernel walks every page table of the process to
share out Pss, which costs 0.1-1 ms for a process with tens of MB resident (psutil's
``memory_full_info`` reads the same file, so reading it every sample cannot be much cheaper
than psutil).  A ``TreeReader`` therefore re-reads it only when it is older than
``pss_max_age`` seconds or the resident size in ``stat`` (a cheap counter) moved by more than
a tenth; in between Pss is estimated from the last reading and the change in Rss, erring
high (growth counted as private, shrinkage capped by Rss).  Pss that grows with Rss flat
(copy-on-write pages of forked workers being unshared) shows at the next reading, at most
``pss_max_age`` later.  ``pss_max_age=0`` reads it every time.

The files read every sample (stat, io, the children list) stay open and are re-read with
``pread`` at offset 0, which saves the open, the path walk and the close.  Such a descriptor
belongs to the process it was opened for: after that process is reaped, reads fail with
ESRCH, so a re-used pid is never taken for the old process.

CPU of the tree is the sum over live members of utime+stime+cutime+cstime: a child that
has been reaped by a member is in that member's cutime/cstime exactly once, a live child
is counted by itself, so nothing is counted twice.  Descendants that were orphaned and
re-parented outside the tree are lost, as in every ppid-based monitor.

Descendants are found through ``/proc/<pid>/task/<tid>/children`` when the kernel has
them (``CONFIG_PROC_CHILDREN``), else by scanning ``/proc/*/stat`` parent pids.  The scan
remembers processes already known to be outside the tree, keyed by pid and the inode of
their ``/proc/<pid>`` entry (a re-used pid gets a new inode), so a steady node costs one
directory listing plus the tree's own files, not a read of every process on the node.
A process that vanishes while being read is skipped, never raised.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import NamedTuple

from hpcpilot.monitor.samples import TreeSample

CLK_TCK: int = os.sysconf("SC_CLK_TCK")
_CHUNK = 65536
_GONE = (FileNotFoundError, ProcessLookupError)
_ROLLUP_KEYS = frozenset({b"Pss", b"Rss", b"Swap"})
_STATUS_KEYS = frozenset({b"VmRSS", b"VmSwap"})
_IO_KEYS = frozenset({b"rchar", b"wchar", b"read_bytes", b"write_bytes"})
_MAX_READERS = 8
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
DEFAULT_PSS_MAX_AGE = 30.0
_RSS_DRIFT = 0.1


class _Stat(NamedTuple):
    """The fields of /proc/<pid>/stat this module uses."""

    ppid: int
    state: bytes
    uticks: int
    sticks: int
    threads: int
    vmem_kb: int
    rss_kb: int
    start_ticks: int


class _Rollup(NamedTuple):
    """The last smaps_rollup reading of one process, to estimate Pss between readings."""

    start_ticks: int
    at: float
    stat_rss_kb: int
    pss: int
    swap: int


class _Proc(NamedTuple):
    """One process's contribution to a tree sample."""

    pss: int
    rss: int
    swap: int
    vmem: int
    uticks: int
    sticks: int
    threads: int
    rchar: int
    wchar: int
    read_bytes: int
    write_bytes: int


def _read_file(path: str) -> bytes:
    """Read a small file with raw syscalls: cheaper than open() and a buffered reader."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return data
        chunks = [data]
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parse_stat(data: bytes) -> _Stat:
    """Parse /proc/<pid>/stat; fields counted after the last ')' so any comm is safe."""
    rest = data[data.rindex(b")") + 2:].split()
    # rest[0] is field 3 (state): field n is rest[n - 3].
    return _Stat(
        ppid=int(rest[1]),
        state=rest[0],
        uticks=int(rest[11]) + int(rest[13]),
        sticks=int(rest[12]) + int(rest[14]),
        threads=int(rest[17]),
        vmem_kb=int(rest[20]) // 1024,
        rss_kb=int(rest[21]) * _PAGE_KB,
        start_ticks=int(rest[19]),
    )


def _key_values(data: bytes, wanted: frozenset[bytes]) -> dict[bytes, int]:
    """The integer after 'Key:' for each wanted key of a 'Key: value [kB]' file."""
    out: dict[bytes, int] = {}
    for line in data.split(b"\n"):
        key, sep, rest = line.partition(b":")
        if sep and key in wanted:
            out[key] = int(rest.split()[0])
    return out


def _parse_io(data: bytes) -> tuple[int, int, int, int]:
    """(rchar, wchar, read_bytes, write_bytes) of an io file; the kernel's fixed order first."""
    tokens = data.split()
    if len(tokens) >= 12 and tokens[0] == b"rchar:" and tokens[2] == b"wchar:" \
            and tokens[8] == b"read_bytes:" and tokens[10] == b"write_bytes:":
        return int(tokens[1]), int(tokens[3]), int(tokens[9]), int(tokens[11])
    values = _key_values(data, _IO_KEYS)
    return (values.get(b"rchar", 0), values.get(b"wchar", 0),
            values.get(b"read_bytes", 0), values.get(b"write_bytes", 0))


def _read_memory(base: str) -> tuple[int, int, int] | None:
    """(pss, rss, swap) in kB, or None when the process vanished."""
    try:
        values = _key_values(_read_file(base + "smaps_rollup"), _ROLLUP_KEYS)
        return values.get(b"Pss", 0), values.get(b"Rss", 0), values.get(b"Swap", 0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        values = _key_values(_read_file(base + "status"), _STATUS_KEYS)
    except (OSError, ValueError, IndexError):
        return None
    rss = values.get(b"VmRSS", 0)
    return rss, rss, values.get(b"VmSwap", 0)


class _KeptFiles:
    """Open descriptors of files read every sample, re-read with pread at offset 0.

    Saves the open/close and the path walk of each read.  A descriptor stays bound to the
    process it was opened for: once that process is reaped, reads fail with ESRCH, so a
    re-used pid can never be mistaken for the old process.  At most ``limit`` processes
    keep descriptors (3 each), so a huge tree cannot exhaust the descriptor table; the
    rest are read with open/read/close.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._fds: dict[int, dict[str, int]] = {}

    def read(self, pid: int, path: str, name: str) -> bytes:
        """Contents of ``path`` (file ``name`` of process ``pid``); OSError when unreadable."""
        files = self._fds.get(pid)
        if files is None:
            if len(self._fds) >= self.limit:
                return _read_file(path)
            files = self._fds[pid] = {}
        fd = files.get(name)
        if fd is None:
            fd = files[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, _CHUNK, 0)
        except OSError:
            os.close(files.pop(name))
            raise
        return data if len(data) < _CHUNK else _read_file(path)

    def keep_only(self, pids: Iterable[int]) -> None:
        """Close the descriptors of processes that left the tree."""
        keep = set(pids)
        for pid in [pid for pid in self._fds if pid not in keep]:
            self._close_pid(pid)

    def close(self) -> None:
        """Close every descriptor."""
        for pid in list(self._fds):
            self._close_pid(pid)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _close_pid(self, pid: int) -> None:
        for fd in self._fds.pop(pid).values():
            os.close(fd)


class TreeReader:
    """Reads one payload tree repeatedly, keeping what makes the next read cheap.

    Keep one per payload (the sampler does) and ``close()`` it when the payload is done;
    ``read_tree`` keeps a few for callers that use the plain function.
    """

    def __init__(self, root_pid: int, procfs: str = "/proc",
                 pss_max_age: float = DEFAULT_PSS_MAX_AGE, keep_open: int = 64) -> None:
        if isinstance(root_pid, bool) or not isinstance(root_pid, int) or root_pid <= 0:
            raise ValueError(f"root pid must be a positive integer, got {root_pid!r}")
        self.root_pid = root_pid
        self.procfs = procfs.rstrip("/") or "/"
        self.pss_max_age = pss_max_age
        self._use_children: bool | None = None
        self._foreign: dict[int, int] = {}
        self._rollups: dict[int, _Rollup] = {}
        self._files = _KeptFiles(keep_open)
        self.last_pids: tuple[int, ...] = ()

    def close(self) -> None:
        """Release the kept descriptors (reading again later reopens them)."""
        self._files.close()

    def pids(self) -> list[int]:
        """Live pids of the tree, root first; zombies are left out (they cannot be killed)."""
        return [pid for pid, stat in self._members().items() if stat.state != b"Z"]

    def read(self, now: float | None = None) -> TreeSample:
        """One sample of the whole tree."""
        stamp = time.time() if now is None else now
        members = self._members()
        self.last_pids = tuple(members)  # the GPU monitor's tree, without a second walk
        procs = [proc for pid, stat in members.items()
                 if (proc := self._read_process(pid, stat)) is not None]
        if len(self._rollups) > len(members):
            self._rollups = {pid: r for pid, r in self._rollups.items() if pid in members}
        return _sum_tree(stamp, procs)

    def _base(self, pid: int) -> str:
        return f"{self.procfs}/{pid}/"

    def _stat(self, pid: int) -> _Stat | None:
        """The parsed stat of a process, or None when it is gone or the file is garbage."""
        try:
            return _parse_stat(self._files.read(pid, f"{self.procfs}/{pid}/stat", "stat"))
        except (OSError, ValueError, IndexError):
            return None

    def _members(self) -> dict[int, _Stat]:
        """Live tree pids in breadth-first order, with their stat."""
        if self._use_children is None:
            probe = f"{self._base(self.root_pid)}task/{self.root_pid}/children"
            if os.path.exists(probe):
                self._use_children = True
            elif os.path.isdir(self._base(self.root_pid)):
                self._use_children = False
        members = self._walk_children() if self._use_children else self._scan_parents()
        self._files.keep_only(members)
        return members

    def _children(self, pid: int, stat: _Stat) -> list[int]:
        """Children of one process: its main thread's list, or every thread's when it has several."""
        base = self._base(pid)
        try:
            if stat.threads <= 1 and stat.state != b"Z":
                data = self._files.read(pid, f"{base}task/{pid}/children", "children")
                return [int(tok) for tok in data.split()]
            tids = os.listdir(f"{base}task")
            return [int(tok) for tid in tids for tok in _read_file(f"{base}task/{tid}/children").split()]
        except (OSError, ValueError):
            return []

    def _walk_children(self) -> dict[int, _Stat]:
        """Breadth-first walk over the kernel's per-task children lists."""
        members: dict[int, _Stat] = {}
        queue = deque([self.root_pid])
        seen = {self.root_pid}
        while queue:
            pid = queue.popleft()
            stat = self._stat(pid)
            if stat is None:
                continue
            members[pid] = stat
            for child in self._children(pid, stat):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return members

    def _scan_parents(self) -> dict[int, _Stat]:
        """Find the tree by parent pids, reading stat only of processes not known foreign."""
        stats: dict[int, tuple[_Stat, int]] = {}
        foreign: dict[int, int] = {}
        try:
            entries = list(os.scandir(self.procfs))
        except OSError:
            return {}
        for entry in entries:
            if not entry.name.isdigit():
                continue
            pid, inode = int(entry.name), entry.inode()
            if pid != self.root_pid and self._foreign.get(pid) == inode:
                foreign[pid] = inode
                continue
            stat = self._stat(pid)
            if stat is not None:
                stats[pid] = (stat, inode)
        members = _descendants(self.root_pid, {pid: st.ppid for pid, (st, _) in stats.items()})
        for pid, (_, inode) in stats.items():
            if pid not in members:
                foreign[pid] = inode
        self._foreign = foreign
        return {pid: stats[pid][0] for pid in members}

    def _read_process(self, pid: int, stat: _Stat) -> _Proc | None:
        """All figures of one process, or None when it vanished part-way."""
        base = self._base(pid)
        if stat.state == b"Z":
            memory: tuple[int, int, int] | None = (0, 0, 0)
        else:
            memory = self._memory(pid, base, stat)
            if memory is None:
                return None
        pss, rss, swap = memory
        try:
            rchar, wchar, read_bytes, write_bytes = _parse_io(self._files.read(pid, base + "io", "io"))
        except (OSError, ValueError, IndexError):
            rchar = wchar = read_bytes = write_bytes = 0
        return _Proc(pss, rss, swap, stat.vmem_kb, stat.uticks, stat.sticks, stat.threads,
                     rchar, wchar, read_bytes, write_bytes)

    def _memory(self, pid: int, base: str, stat: _Stat) -> tuple[int, int, int] | None:
        """(pss, rss, swap): estimated from the last smaps_rollup while that is recent enough."""
        clock = time.monotonic()
        last = self._rollups.get(pid)
        if last is not None and last.start_ticks == stat.start_ticks and clock - last.at < self.pss_max_age:
            change = stat.rss_kb - last.stat_rss_kb
            if abs(change) <= last.stat_rss_kb * _RSS_DRIFT:
                pss = last.pss + change if change >= 0 else min(last.pss, stat.rss_kb)
                return pss, stat.rss_kb, last.swap
        memory = _read_memory(base)
        if memory is not None and self.pss_max_age > 0:
            self._rollups[pid] = _Rollup(stat.start_ticks, clock, stat.rss_kb, memory[0], memory[2])
        return memory


def _descendants(root: int, parent_of: dict[int, int]) -> list[int]:
    """Root and all its descendants in breadth-first order, from a pid -> ppid map."""
    if root not in parent_of:
        return []
    kids: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        kids.setdefault(ppid, []).append(pid)
    order = [root]
    seen = {root}
    index = 0
    while index < len(order):
        for child in kids.get(order[index], ()):
            if child not in seen:
                seen.add(child)
                order.append(child)
        index += 1
    return order


def _sum_tree(stamp: float, procs: list[_Proc]) -> TreeSample:
    """Add up the per-process figures into one sample."""
    if not procs:
        return TreeSample.empty(stamp)
    totals = [sum(column) for column in zip(*procs, strict=True)]
    pss, rss, swap, vmem, uticks, sticks, threads, rchar, wchar, read_bytes, write_bytes = totals
    return TreeSample(
        time=stamp, pss=pss, rss=rss, swap=swap, vmem=vmem,
        utime=uticks / CLK_TCK, stime=sticks / CLK_TCK,
        nprocs=len(procs), nthreads=threads,
        rchar=rchar, wchar=wchar, read_bytes=read_bytes, write_bytes=write_bytes,
    )


_READERS: OrderedDict[tuple[str, int], TreeReader] = OrderedDict()


def _reader(root_pid: int, procfs: str) -> TreeReader:
    """A kept reader per (procfs, root), so repeated plain calls stay cheap."""
    key = (procfs, root_pid)
    reader = _READERS.get(key)
    if reader is None:
        reader = TreeReader(root_pid, procfs)
        _READERS[key] = reader
        while len(_READERS) > _MAX_READERS:
            _READERS.popitem(last=False)[1].close()
    else:
        _READERS.move_to_end(key)
    return reader


def read_tree(root_pid: int, procfs: str = "/proc", now: float | None = None) -> TreeSample:
    """Memory, CPU, threads and I/O of ``root_pid`` and all its live descendants."""
    return _reader(root_pid, procfs).read(now)


def list_tree_pids(root_pid: int, procfs: str = "/proc") -> list[int]:
    """Live pids of ``root_pid``'s tree, root first; for killing and for checking nothing survived."""
    return _reader(root_pid, procfs).pids()
