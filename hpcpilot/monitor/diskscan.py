"""Disk figures of a job workdir: free space, size, and the newest payload activity.

pilot3 runs ``find <workdir> -mmin -N`` every looping check, which lists every recent file
of a possibly huge tree and then filters the list in Python.  ``newest_activity`` prints
only modification times, prunes the pilot's own files inside ``find`` and stops at the first
entry newer than what it already knows: on an active payload that is usually after a handful
of entries.  Only a silent payload costs a full walk, once per looping interval, at about the
cost of ``find`` itself (``findscan``); ``scan_newest`` is the same walk in Python.

Sizes are apparent sizes (``st_size``), i.e. what the payload wrote; symlinks are never
followed (stage-in links point at shared storage that is not the job's); unreadable
entries are skipped, because a file deleted during the walk is normal for a running job.
MB here means MiB, as in pilot3's limits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from hpcpilot.monitor.findscan import NameExclude, scan_with_find

_MIB = 1024.0 * 1024.0

# Files the pilot itself writes into a job workdir: touching them is not payload activity.
PILOT_FILE_NAMES = frozenset({
    "memory_monitor_output.txt",
    "memory_monitor_summary.json",
    "memory_monitor_summary.json_snapshot",
    "pandaJob.json",
    "job_setup.sh",
    "pilot.log",
    "pilotlog.txt",
    "hpcpilot.log",
    "PoolFileCatalog.xml",
    "__pycache__",
})
PILOT_FILE_PATTERNS = ("*.py", "*.pyc", "pilotlog*", "hpcpilot*.log", "*.lib.tgz", "*prmon*")
PAYLOAD_STREAMS = frozenset({"payload.stdout", "payload.stderr"})


def free_space_mb(path: str | os.PathLike[str]) -> float:
    """Space available to an unprivileged writer on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / _MIB


def _walk(top: str) -> Iterator[tuple[os.DirEntry[str], bool]]:
    """(entry, is_dir) for everything under ``top``, no symlink following, errors skipped."""
    stack = [top]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    yield entry, is_dir
                    if is_dir:
                        stack.append(entry.path)
        except OSError:
            continue


def dir_size_mb(path: str | os.PathLike[str]) -> float:
    """Total apparent size of the regular files under ``path``."""
    total = 0
    for entry, is_dir in _walk(os.fspath(path)):
        if is_dir:
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total / _MIB


def newest_activity(
    workdir: str | os.PathLike[str],
    since: float,
    exclude: Callable[[str], bool],
    floor: float | None = None,
) -> float | None:
    """The mtime of the first entry newer than ``since``, else the newest mtime seen, else None.

    ``exclude`` gets each entry's path relative to ``workdir`` ('/'-separated); an excluded
    directory is skipped together with everything below it.  The workdir itself is never
    looked at: the pilot creates files in it, which changes its mtime.  With a ``NameExclude``
    (the looping check's) GNU ``find`` walks, at about half the cost of the Python walk
    (``findscan``); any other predicate, or a ``find`` that cannot answer, gets ``scan_newest``.
    ``floor`` (the previous answer, if any) only makes ``find`` print less: see ``scan_with_find``.
    """
    if isinstance(exclude, NameExclude):
        decided, answer = scan_with_find(os.fspath(workdir), since, exclude, floor)
        if decided:
            return answer
    return scan_newest(workdir, since, exclude)


def scan_newest(workdir: str | os.PathLike[str], since: float, exclude: Callable[[str], bool]) -> float | None:
    """``newest_activity`` by an ``os.scandir`` walk (one ``lstat`` per entry), for any ``exclude``."""
    top = os.fspath(workdir)
    newest: float | None = None
    stack = [""]
    while stack:
        relative_dir = stack.pop()
        try:
            with os.scandir(os.path.join(top, relative_dir) if relative_dir else top) as entries:
                for entry in entries:
                    relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
                    if exclude(relative):
                        continue
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(relative)
                    except OSError:
                        continue
                    if mtime > since:
                        return mtime
                    if newest is None or mtime > newest:
                        newest = mtime
        except OSError:
            continue
    return newest


def default_looping_exclude(stdout_is_activity: bool) -> NameExclude:
    """The predicate that hides the pilot's own files from the looping check.

    The payload's stdout/stderr count as activity only when the site says so: a payload
    stuck in a loop that prints a line per iteration would otherwise never be caught.
    """
    ignored = PILOT_FILE_NAMES if stdout_is_activity else PILOT_FILE_NAMES | PAYLOAD_STREAMS
    return NameExclude(ignored, PILOT_FILE_PATTERNS)
