"""The looping scan run by GNU ``find``: what a scandir walk gives, at about the cost of ``find`` itself.

A Python walk pays about 1 µs of interpreter per entry on top of the ``lstat`` that ``find``
also makes; on a 100,000-file workdir that is 1.7 to 2.2x ``find -newermt`` even with nothing
but ``scandir`` and ``stat`` in the loop (bench/bench_stage_scan.py).  So when the exclusions
are plain names and patterns of base names (``NameExclude``, the looping check's own), the
walk is handed to ``find``: it prunes them with one ``-regex`` (one ``-name`` per name cost
``find`` twice its own time), prints one modification time per entry in a fixed width and
stops at the first entry newer than the threshold; Python takes the largest line.

The answer is the one ``diskscan.scan_newest`` (the scandir walk) gives, to the bit:

* times are rebuilt from ``find``'s ``%T@`` (seconds, 10 digits of which 9 are nanoseconds)
  the way CPython builds ``st_mtime`` (``sec + nsec * 1e-9``); right-aligned in one width,
  the largest line is the newest time to the nanosecond;
* ``find -newermt`` compares nanoseconds while the walk compares those floats; since the float
  grows with the nanoseconds, the threshold handed to ``find`` is the largest nanosecond time
  whose float is not newer than ``since`` (found by bisection), so both draw the same line;
* ``-H`` follows a symlinked workdir as ``scandir`` does, nothing below it; unreadable
  directories and entries that vanish during the walk are skipped by both (``find`` then exits
  1 after printing the rest);
* ``LC_ALL=C`` makes ``find`` match bytes, as ``fnmatchcase`` matches the names' characters;
  a pattern with a bracket expression or an escape is left to ``-name`` (fnmatch) as it is.

Where the walk finds an entry newer than ``since``, both return the time of the first such
entry *in their own walk order*, which differ: any entry newer than ``since`` satisfies the
caller (``sampler._scan_activity``).  Where nothing is newer, both return the same newest time.
Where ``find`` cannot answer (not there, not GNU, a time before 1970, a ``since`` that is not
a finite time) the caller walks in Python.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import subprocess
from collections.abc import Iterable
from decimal import ROUND_FLOOR, Decimal

WINDOW_NS = 100_000  # a float's error in nanoseconds is far less up to the year 2500: bisect within it
_FNMATCH_SPECIAL = re.compile(r"([*?\[\\])")
_ERE_SPECIAL = re.compile(r"([.^$*+?()\[{|\\])")
WIDTH = 22  # %T@ is 21 characters from 2001 to 2286 (seconds, a dot, 10 digits)


class NameExclude:
    """Exclude an entry by its base name: one of ``names``, or matching one of the fnmatch ``patterns``.

    Callable with the '/'-separated path relative to the workdir, like any exclude predicate,
    and also readable as plain names and patterns, which is what lets ``find`` apply it.
    """

    def __init__(self, names: Iterable[str], patterns: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.patterns = tuple(patterns)
        joined = "|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in self.patterns)
        self._match = re.compile(joined).match if self.patterns else None

    def __call__(self, relative_path: str) -> bool:
        name = relative_path.rsplit("/", 1)[-1]
        return name in self.names or (self._match is not None and self._match(name) is not None)


def find_argv(top: str, since: float, exclude: NameExclude, floor: float | None = None) -> list[str]:
    """``find`` printing each kept entry's mtime (not older than ``floor``), quitting at the first one
    newer than ``since``.

    Times are printed right-aligned in a fixed width, so that the largest is the largest line.
    """
    prune = [*_prune_test(exclude), "-prune", "-o"] if exclude.names or exclude.patterns else []
    at_least = [] if floor is None or floor <= 0 else ["-newermt", f"@{_threshold(math.nextafter(floor, -math.inf))}"]
    return ["find", "-H", os.path.abspath(top), "-mindepth", "1", "-regextype", "posix-extended", *prune,
            "-newermt", f"@{_threshold(since)}", "-printf", f"N%{WIDTH}T@\\n", "-quit",
            "-o", *at_least, "-printf", f"%{WIDTH}T@\\n"]


def _prune_test(exclude: NameExclude) -> list[str]:
    """One ``-regex`` on the whole path for all names and patterns (a ``-name`` each costs ``find`` 2x)."""
    alternatives = [_ERE_SPECIAL.sub(r"\\\1", name) for name in sorted(exclude.names)]
    for pattern in exclude.patterns:
        translated = _glob_to_ere(pattern)
        if translated is None:
            return ["(", *_name_tests(exclude), ")"]
        alternatives.append(translated)
    return ["-regex", f".*/({'|'.join(alternatives)})"]


def _glob_to_ere(pattern: str) -> str | None:
    """An fnmatch pattern of a base name as an ERE; None for bracket expressions and escapes (left to -name)."""
    parts = []
    for char in pattern:
        if char in "[\\":
            return None
        parts.append("[^/]*" if char == "*" else "[^/]" if char == "?" else _ERE_SPECIAL.sub(r"\\\1", char))
    return "".join(parts)


def _name_tests(exclude: NameExclude) -> list[str]:
    tests = [item for name in sorted(exclude.names) for item in ("-o", "-name", _FNMATCH_SPECIAL.sub(r"\\\1", name))]
    tests += [item for pattern in exclude.patterns for item in ("-o", "-name", pattern)]
    return tests[1:]


def _as_float(nanoseconds: int) -> float:
    """The float CPython gives ``st_mtime`` for a time of ``nanoseconds`` since the epoch (not before it)."""
    seconds, fraction = divmod(nanoseconds, 10**9)
    return seconds + fraction * 1e-9


def _threshold(since: float) -> str:
    """The largest time in nanoseconds whose ``st_mtime`` float is not newer than ``since``, as find reads it.

    Raises ValueError where ``since`` is out of what this can bisect (before 1970, beyond year 2500).
    """
    guess = int((Decimal(since) * 10**9).to_integral_value(ROUND_FLOOR))
    low, high = max(guess - WINDOW_NS, 0), guess + WINDOW_NS
    if not _as_float(low) <= since < _as_float(high):
        raise ValueError(f"no threshold for {since!r}")
    while high - low > 1:  # invariant: float(low) <= since < float(high)
        middle = (low + high) // 2
        low, high = (middle, high) if _as_float(middle) <= since else (low, middle)
    seconds, fraction = divmod(low, 10**9)
    return f"{seconds}.{fraction:09d}"


def exact_time(field: bytes) -> float:
    """A ``%T@`` field as the float CPython would put in ``st_mtime`` for the same timestamp."""
    whole, _, fraction = field.strip().partition(b".")
    return int(whole) + int(fraction[:9].ljust(9, b"0")) * 1e-9


def newest_of(output: bytes, since: float) -> tuple[bool, float | None]:
    """(decided, answer) from find's output: the stopping entry's time, or the newest time printed.

    The lines have one width and right-aligned digits, so the largest line is the newest time,
    to the nanosecond.  A time before 1970 (a '-') breaks that order: not decided.
    """
    if b"-" in output:
        return False, None
    lines = output.splitlines()
    if not lines:
        return True, None
    if lines[-1].startswith(b"N"):
        found = exact_time(lines[-1][1:])
        return (True, found) if found > since else (False, None)
    return True, exact_time(max(lines))


def scan_with_find(top: str, since: float, exclude: NameExclude,
                   floor: float | None = None) -> tuple[bool, float | None]:
    """(decided, answer) of the looping scan by ``find``; not decided where ``find`` could not do it.

    ``floor``: a time that some entry had at the last scan (its answer).  While one such entry
    is there, no older one can be the newest, so ``find`` prints only those: a silent workdir's
    scan prints a few lines instead of one per entry.  Where none is printed (that entry went,
    or never was) the scan runs again without it, so the answer never depends on ``floor``.
    """
    decided, answer = _run_find(top, since, exclude, floor)
    if decided and answer is None and floor is not None:
        return _run_find(top, since, exclude, None)
    return decided, answer


def _run_find(top: str, since: float, exclude: NameExclude, floor: float | None) -> tuple[bool, float | None]:
    try:
        argv = find_argv(top, since, exclude, floor)
    except (ValueError, OverflowError, ArithmeticError):
        return False, None  # an infinite, NaN or far-off since or floor: the walk handles it
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              env={**os.environ, "LC_ALL": "C"}, check=False)
    except OSError:
        return False, None
    if proc.returncode != 0 and not proc.stdout:
        return False, None  # no find, not GNU find, or nothing readable: the walk tells which
    try:
        return newest_of(proc.stdout, since)
    except ValueError:
        return False, None
