"""Start, watch, account and kill one payload process tree.

The payload runs in its own session (so its process group is its pid) with stdout and
stderr in files.  Killing "the payload" means killing everything it started, including
children that ignore SIGTERM, left the process group (``setsid``) or were orphaned by a
double fork.  Four ways of finding them are combined, since none is complete on its own:

* the process group and session of the payload (while its pid is still held);
* the parent links in ``/proc``, from every process already known to belong to the payload;
* a random token in the environment (``HPCPILOT_PAYLOAD_ID``), which children inherit even
  after ``setsid`` and re-parenting to init (unless they scrub their environment);
* the payload cgroup, when there is one (complete and atomic on v2 with ``cgroup.kill``).

Processes are remembered with their start time and signalled through a pidfd after the
start time is checked, so a recycled pid is never killed by mistake.

Joining the cgroup is race-free without Python code in the child: the payload is started
through ``/bin/sh`` which writes its own pid to ``cgroup.procs`` and then ``exec``s the command,
so the command and all its children start inside the cgroup; the parent also adds the pid after
start (idempotent), in case the shell could not write.

No payload outlives its rank.  Three layers, since none covers every way a rank ends:

* ``PR_SET_PDEATHSIG``: the kernel SIGKILLs the payload's first process when the thread that
  started it dies.  That thread is the job's own thread in the worker (``hpcpilot.worker``),
  which always stops and reaps its payload before it ends, so the signal fires only when the
  whole rank dies (SIGKILL, a crash).  It is set by ``preexec_fn`` between fork and exec; that
  hook is unsafe in a threaded program when it needs a lock another thread held at the fork
  (imports, logging, I/O), and this one only calls a ``prctl`` looked up before the fork,
  ``getppid`` and, if the parent is already gone, ``kill``.  It survives ``exec`` but not
  ``fork``, nor a set-uid program: the payload's children need the next layers.
* A rank's guard process (``hpcpilot.rankguard``) kills, when its rank dies, every process that
  carries the rank's identity (``HPCPILOT_RANK``, below) in its environment, and the rank's cgroups.
* Payload cgroups are named after the pilot workdir and the rank that made them
  (``payload_cgroup_name``): a pilot started on the same workdir kills and removes what a dead
  rank left (``reap_stale_cgroups``), if even the guard was killed.

CPU time is the rusage that ``wait4`` returns for the payload: its own user+system time
plus that of the descendants it reaped itself.  Orphans that init reaps are not included.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hpcpilot.cgroups import CgroupLocation, PayloadCgroup, detect
from hpcpilot.errors import ErrorCode, PilotError

log = logging.getLogger(__name__)

TOKEN_VAR = "HPCPILOT_PAYLOAD_ID"
RANK_VAR = "HPCPILOT_RANK"
"""Environment variable naming the rank (``owner_id()``) that started a payload; its children inherit it."""
PR_SET_PDEATHSIG = 1
CGROUP_PREFIX = "hpcpilot"
_CGROUP_NAME = re.compile(rf"{CGROUP_PREFIX}_(?P<key>[0-9a-f]{{12}})_(?P<owner>\d+-\d+)_(?P<panda_id>\d+)")
KILL_DEADLINE = 5.0  # after SIGKILL, how long to keep re-killing and reaping before giving up
_JOIN_CGROUP = '{ echo $$ > "$1"; } 2>/dev/null; shift; exec "$@"'
_MAX_SLEEP = 0.1


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """The /proc/<pid>/stat fields the kill logic needs."""

    pid: int
    ppid: int
    pgrp: int
    sid: int
    state: str
    start: int  # clock ticks after boot; with pid, identifies a process across pid reuse


def read_stat(pid: int) -> ProcInfo | None:
    """Parse /proc/<pid>/stat (split after the last ')' since comm may hold spaces); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    try:
        return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], int(fields[19]))
    except (IndexError, ValueError):
        return None


def process_table() -> dict[int, ProcInfo]:
    """All processes visible in /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = read_stat(int(entry.name))
            if info is not None:
                table[info.pid] = info
    return table


def _has_token(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return marker in handle.read()
    except OSError:
        return False


def signal_exact(pid: int, start: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``start``.

    The pidfd pins the process before its start time is checked, so there is no window in
    which a recycled pid could be hit.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:
        fd = None
    try:
        info = read_stat(pid)
        if info is None or info.start != start:
            return
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        if fd is not None:
            os.close(fd)


# ---- the rank's identity, and what a dead rank left -------------------------------------------


@functools.lru_cache(maxsize=4)
def _owner_of(pid: int) -> str:
    info = read_stat(pid)
    return f"{pid}-{info.start if info is not None else 0}"


def owner_id() -> str:
    """This process as ``<pid>-<start ticks>``: unique on the node until reboot, even when pids are reused."""
    return _owner_of(os.getpid())


def owner_alive(owner: str) -> bool:
    """Is the process named by ``owner_id()``-style ``owner`` still running (not a zombie)?"""
    pid, _, start = owner.partition("-")
    info = read_stat(int(pid)) if pid.isdigit() else None
    return info is not None and str(info.start) == start and info.state not in "ZX"


def _env_has(pid: int, entry: bytes) -> bool:
    """Does process ``pid``'s initial environment hold exactly the entry ``NAME=value``?"""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data.startswith(entry + b"\0") or b"\0" + entry + b"\0" in data


def kill_marked(owner: str, deadline: float = KILL_DEADLINE) -> int:
    """SIGKILL every process whose environment names rank ``owner`` (its payloads and their children),
    scanning again while forks race with us, for at most ``deadline`` s; returns how many were hit."""
    entry, me = f"{RANK_VAR}={owner}".encode(), os.getpid()
    hit: set[int] = set()
    end = time.monotonic() + deadline
    while True:
        found = [info for info in process_table().values()
                 if info.pid != me and info.state not in "ZX" and _env_has(info.pid, entry)]
        for info in found:
            signal_exact(info.pid, info.start, signal.SIGKILL)
            hit.add(info.pid)
        if not found or time.monotonic() >= end:
            return len(hit)
        time.sleep(_MAX_SLEEP / 2)


def workdir_key(pilot_dir: Path) -> str:
    """A short fixed-length name for a pilot workdir (cgroup names must stay short and safe)."""
    return hashlib.sha256(os.fsencode(Path(pilot_dir).resolve())).hexdigest()[:12]


def payload_cgroup_name(pilot_dir: Path, panda_id: int) -> str:
    """``hpcpilot_<workdir key>_<owner>_<PandaID>``: which pilot workdir and which rank made the cgroup,
    so that whoever comes after a dead rank can tell its leftovers from a live rank's payloads."""
    return f"{CGROUP_PREFIX}_{workdir_key(pilot_dir)}_{owner_id()}_{int(panda_id)}"


def reap_stale_cgroups(pilot_dir: Path, location: CgroupLocation | None = None,
                       dead_owner: str | None = None) -> int:
    """Kill and remove the payload cgroups that dead ranks of pilots on ``pilot_dir`` left behind.

    Only this workdir's cgroups under the calling process's own cgroup are looked at (a predecessor
    in another batch step had its step's cgroup, which the batch system cleans).  ``dead_owner`` is
    a rank known to be dead even if its process is not gone yet (the guard of a rank that is exiting).
    Returns how many cgroups were reaped; never raises.
    """
    loc = location if location is not None else detect()
    if loc is None or not loc.memory:
        return 0
    key, reaped = workdir_key(pilot_dir), 0
    try:
        entries = sorted(loc.path.iterdir())
    except OSError as exc:
        log.debug("cannot list %s: %s", loc.path, exc.strerror or exc)
        return 0
    for entry in entries:
        match = _CGROUP_NAME.fullmatch(entry.name)
        if match is None or match["key"] != key or not entry.is_dir():
            continue
        if match["owner"] != dead_owner and owner_alive(match["owner"]):
            continue
        group = PayloadCgroup(loc.version, entry)
        left = group.pids()
        if group.remove():
            reaped += 1
        log.warning("payload cgroup %s of dead rank %s (job %s) removed; %d process(es) killed", entry,
                    match["owner"], match["panda_id"], len(left))
    return reaped


# ---- parent-death signal -----------------------------------------------------------------------


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once here: the forked child must not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """The ``preexec_fn`` that makes the kernel SIGKILL the child when its parent thread dies.

    If the parent died between fork and prctl (the child is already re-parented), the child kills
    itself: it must not run without a rank.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    sigkill = int(signal.SIGKILL)

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sigkill)

    return arm


class ContainerHandle(Protocol):
    """The container of a payload whose processes are not the payload's descendants (podman: conmon's children),
    so monitoring starts at its root, CPU comes from its cgroup, and it is stopped and removed through its runtime
    (``hpcpilot.container.podman``)."""

    def root_pid(self, alive: Callable[[], bool]) -> int | None: ...
    def track(self) -> None: ...
    def cpu_seconds(self) -> float: ...
    def stop(self, grace: float) -> None: ...
    def remove(self) -> None: ...


class Payload:
    """A running (or finished) payload; see ``start_payload``."""

    def __init__(self, popen: subprocess.Popen[bytes], token: str, cgroup: PayloadCgroup | None) -> None:
        self.pid = popen.pid
        self.cgroup = cgroup
        self.exit_code: int | None = None
        self.cpu_seconds: float | None = None
        self.container: ContainerHandle | None = None  # set by hpcpilot.container for a podman payload
        self._popen = popen
        self._marker = f"{TOKEN_VAR}={token}".encode()
        self._lock = threading.Lock()
        self._term_lock = threading.Lock()
        self._seen: dict[int, int] = {}
        info = read_stat(self.pid)
        if info is not None:
            self._seen[self.pid] = info.start

    def __repr__(self) -> str:
        return f"Payload(pid={self.pid}, exit_code={self.exit_code})"

    # -- exit and accounting --------------------------------------------------------------

    def poll(self) -> int | None:
        """The exit code once the payload has exited (reaping it), else None; never blocks."""
        with self._lock:
            if self.exit_code is not None:
                return self.exit_code
            try:
                exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                log.warning("payload %d was reaped by someone else; exit code and CPU time unknown", self.pid)
                self._set_exit(-1, 0.0)
                return self.exit_code
            if exited is None:
                if self.container is not None:
                    self.container.track()
                return None
            # The zombie still holds the pid, so its group and session are still unambiguous:
            # remember their members before the pid is released.
            self._related(process_table())
            _, status, usage = os.wait4(self.pid, 0)
            self._set_exit(os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime)
            return self.exit_code

    def _set_exit(self, code: int, cpu: float) -> None:
        self.exit_code = code
        self.cpu_seconds = cpu + (self.container.cpu_seconds() if self.container is not None else 0.0)
        self._popen.returncode = code  # so Popen never tries to reap it again

    def monitor_pid(self, stop: Callable[[], bool] = lambda: False) -> int:
        """The root of the process tree to monitor: the payload, or its container's first process (waited for
        while the payload runs and ``stop``, a kill request say, is not true)."""
        if self.container is None:
            return self.pid
        return self.container.root_pid(lambda: self.poll() is None and not stop()) or self.pid

    @property
    def reaped(self) -> bool:
        return self.exit_code is not None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` s (None: for ever) for the exit; the exit code or None on timeout.

        Polls with a sleep growing from 5 ms to 100 ms: fast for short payloads, idle for long ones.
        """
        end = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while (code := self.poll()) is None:
            left = _MAX_SLEEP if end is None else end - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_SLEEP)
        return code

    # -- process tracking -----------------------------------------------------------------

    def _roots(self, table: dict[int, ProcInfo]) -> set[int]:
        cg_pids = set(self.cgroup.pids()) if self.cgroup is not None else set()
        roots = set()
        for info in table.values():
            if ((not self.reaped and self.pid in (info.pgrp, info.sid))
                    or self._seen.get(info.pid) == info.start
                    or info.pid in cg_pids
                    or _has_token(info.pid, self._marker)):
                roots.add(info.pid)
        return roots

    def _related(self, table: dict[int, ProcInfo]) -> dict[int, ProcInfo]:
        """Every process of the payload in ``table``; also remembered for later scans."""
        children: dict[int, list[int]] = {}
        for info in table.values():
            children.setdefault(info.ppid, []).append(info.pid)
        found = self._roots(table)
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        found.discard(os.getpid())
        found.discard(1)
        related = {pid: table[pid] for pid in found}
        self._seen = {pid: info.start for pid, info in related.items()}
        return related

    def processes(self) -> list[int]:
        """Live (non-zombie) processes of the payload now, e.g. for CPU and memory sums."""
        return sorted(pid for pid, info in self._related(process_table()).items() if info.state not in "ZX")

    def survivors(self) -> list[int]:
        """Processes of the payload still alive (zombies excluded); empty after a successful terminate."""
        return self.processes()

    # -- killing --------------------------------------------------------------------------

    def _signal_all(self, sig: int) -> None:
        """Signal the process group (while the payload's pid still names it) and every related process."""
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        for pid, info in self._related(process_table()).items():
            if info.state not in "ZX":
                signal_exact(pid, info.start, sig)

    def terminate(self, grace: float) -> None:
        """SIGTERM everything, wait up to ``grace`` s, SIGKILL what is left (also via the cgroup), reap.

        Safe to call again and after the payload exited (its orphans are still hunted).  Stopped
        processes get SIGCONT so that they can act on the SIGTERM.
        """
        with self._term_lock:
            if self.container is not None and not self.reaped:
                self.container.stop(grace)
            self._signal_all(signal.SIGTERM)
            self._signal_all(signal.SIGCONT)
            end = time.monotonic() + grace
            while time.monotonic() < end:
                self.poll()
                if not self.survivors():
                    break
                time.sleep(min(_MAX_SLEEP, max(0.0, end - time.monotonic())))
            self._kill_rest()
            if self.container is not None:
                self.container.remove()

    def _kill_rest(self) -> None:
        end = time.monotonic() + KILL_DEADLINE
        while True:
            self._signal_all(signal.SIGKILL)
            if self.cgroup is not None:
                self.cgroup.kill_all(deadline=0.5)
            self.wait(timeout=max(0.0, min(1.0, end - time.monotonic())))
            left = self.survivors()
            if not left and self.reaped:
                return
            if time.monotonic() >= end:
                log.warning("payload %d: processes %s survive SIGKILL (stuck in I/O?)", self.pid, left[:10])
                return
            time.sleep(_MAX_SLEEP / 2)


def _argv(command: str | list[str]) -> list[str]:
    if isinstance(command, str):
        argv = ["/bin/sh", "-c", command] if command.strip() else []
    else:
        argv = [os.fspath(a) for a in command]
    if not argv or not argv[0]:
        raise PilotError(ErrorCode.TRANSFORMNOTFOUND, "empty payload command")
    return argv


def start_payload(command: str | list[str], cwd: Path, env: Mapping[str, str], stdout_path: Path,
                  stderr_path: Path, cgroup: PayloadCgroup | None, append: bool = False) -> Payload:
    """Start the payload in a new session, output to files, inside ``cgroup`` if given, armed to die
    with the calling thread (PR_SET_PDEATHSIG: call it from the thread that waits for the payload).

    A ``str`` runs through ``/bin/sh -c``.  ``env`` is the whole environment (plus the tracking
    token).  A list command that cannot be executed raises TRANSFORMNOTFOUND; inside a cgroup
    (started through the joining shell) it exits with 127 instead, like a shell command would.
    ``append`` adds to the output files (payloads run once per event range share them).
    """
    argv = _argv(command)
    token = uuid.uuid4().hex
    full_env = {**env, TOKEN_VAR: token, RANK_VAR: owner_id()}
    if cgroup is not None:
        argv = ["/bin/sh", "-c", _JOIN_CGROUP, "hpcpilot-join-cgroup", os.fspath(cgroup.procs_file), *argv]
    try:
        mode = "ab" if append else "wb"
        with open(stdout_path, mode) as out, open(stderr_path, mode) as err:
            popen = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=err, start_new_session=True, close_fds=True,
                                     preexec_fn=_die_with_parent(os.getpid()))
    except OSError as exc:
        code = ErrorCode.TRANSFORMNOTFOUND if isinstance(exc, FileNotFoundError) else ErrorCode.SETUPFAILURE
        what = exc.filename if exc.filename is not None else argv[0]
        raise PilotError(code, f"cannot start payload: {exc.strerror or exc}: {what!r}") from None
    except ValueError as exc:  # a NUL byte or a lone surrogate in argv, env or cwd (job fields are checked first)
        raise PilotError(ErrorCode.SETUPFAILURE,
                         f"cannot start payload: its command, environment or directory is not valid text "
                         f"({type(exc).__name__})") from None
    if cgroup is not None:
        cgroup.add(popen.pid)
    log.debug("payload %d started: %s", popen.pid, str(command)[:200])
    return Payload(popen, token, cgroup)
