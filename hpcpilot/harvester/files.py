"""How the pilot writes and takes files in a Harvester access point.

Harvester and the pilot share the access point without locks, so every hand-over is one atomic
rename:

* The pilot writes every file through a temporary name and ``os.replace``: Harvester never
  reads half a file.
* A feed Harvester wrote (``JobsEventRanges.json``) is taken by renaming it aside before it is
  read (``take_aside``): the name is then free for the next feed, which can never be confused
  with, or overwrite, one the pilot has not read.
* ``event_status.dump.json`` is consumed by Harvester, which renames it to ``.read``.  The pilot
  claims a file still waiting there by renaming it to a private name, adds its new entries and
  renames the result back (``EventStatusFile``).  Whichever rename comes first wins, so an entry
  is either in what Harvester took or in what the pilot writes next -- never in both, and never
  lost.  The file holds only what Harvester has not taken, and the new entries are written in
  place over its end: an add costs what it adds, not what waits (a million entries may wait
  while Harvester keeps an earlier ``.read``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcpilot.errors import ConfigError
from hpcpilot.harvester.jsonstream import NotAnObject, salvage

log = logging.getLogger(__name__)

Entries = Mapping[str, Sequence[Mapping[str, Any]]]
"""``{PandaID: [entry, ...]}``, the shape of event_status.dump.json."""


def write_json_atomically(path: Path, data: Any, compact: bool = False) -> None:
    """Write ``data`` as JSON under ``path`` so that a reader sees the old file or the whole new one."""
    write_text_atomically(path, json.dumps(data, indent=None if compact else 1, default=str))


def write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; every way that fails is one ConfigError line naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise unreadable(path, what, exc) from None
    if not isinstance(data, dict):
        raise unreadable(path, what, NotAnObject(type(data).__name__))
    return data


def unreadable(path: Path, what: str, exc: Exception) -> ConfigError:
    """The one line for a Harvester file that cannot be used, read whole or streamed (the same words)."""
    if isinstance(exc, FileNotFoundError):
        return ConfigError(f"{path}: no {what} in the access point")
    if isinstance(exc, OSError):
        return ConfigError(f"{path}: cannot read {what} ({exc.strerror})")
    if isinstance(exc, NotAnObject):
        return ConfigError(f"{path}: {what} must be a JSON object {{PandaID: ...}}, got {exc}")
    return ConfigError(f"{path}: {what} is not valid JSON ({str(exc).splitlines()[0]})")


def take_aside(path: Path) -> Path | None:
    """Rename a feed out of Harvester's way before reading it; None when there is none.

    The new name keeps the original as a prefix (for whoever reads the access point later) and
    is unique, so a pilot restarted on the same access point never overwrites an earlier one.
    """
    aside = path.with_name(f"{path.name}.taken.{time.time_ns()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return aside


class EventStatusFile:
    """One ``event_status.dump.json``: entries the pilot added that Harvester has not taken yet.

    An ``add`` costs what it adds, not what waits: the pilot knows the file it last wrote (its
    keys, the last of them, its size), so new entries are written over its closing ``]}`` in
    place, in the claimed file, and renamed back.  Only a file the pilot does not know (left by
    an earlier pilot, or by an add cut short) is read and rewritten whole, once.  ``queue`` and
    ``flush`` let the source gather a few seconds of reports into one add.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claim = path.with_name(f".{path.name}.merging")
        self.shape: _Shape | None = None  # what the file holds, as the pilot wrote it (None: not known)
        self.pending: dict[str, list[Any]] = {}

    def queue(self, entries: Entries) -> None:
        """Keep entries for the next ``flush`` (in memory only: a killed pilot loses them)."""
        for panda_id, items in entries.items():
            if items:
                self.pending.setdefault(str(panda_id), []).extend(items)

    def flush(self) -> int:
        """``add`` what was queued; the number of entries written.  On an error they stay queued."""
        pending, self.pending = self.pending, {}
        try:
            self.add(pending)
        except BaseException:
            for panda_id, items in pending.items():
                self.pending.setdefault(panda_id, [])[:0] = items
            raise
        return sum(len(items) for items in pending.values())

    def add(self, entries: Entries) -> None:
        """Offer new entries to Harvester, after those still waiting in the file.

        Only the pilot creates ``path`` and only from ``claim``, so at any moment at most one of
        the two exists; a pilot killed in between leaves the claim, which the next ``add`` (also
        by a restarted pilot) merges: every entry it holds whole is kept.
        """
        batch = {str(k): list(v) for k, v in entries.items() if v}
        if not batch:
            return
        if self.claim.exists():
            self.shape = None  # an add was cut short: what the claim holds is read back
        else:
            try:
                os.rename(self.path, self.claim)
            except FileNotFoundError:  # Harvester renamed it first: it took those (or there was none)
                self.shape = _Shape()
        patch = self.shape.patch(batch) if self.shape is not None else None
        if patch is None:
            self._rewrite(batch)
        else:
            _write_at(self.claim, patch, self.shape.size - len(_CLOSING))  # type: ignore[union-attr]
            self.shape.grown(batch, len(patch))  # type: ignore[union-attr]
        os.replace(self.claim, self.path)

    def _rewrite(self, batch: dict[str, list[Any]]) -> None:
        """The claim written whole: what it holds (if the pilot does not know it) and ``batch`` after it."""
        waiting = self._waiting() if self.shape is None or self.shape.keys else {}
        for panda_id, items in batch.items():
            waiting.setdefault(panda_id, []).extend(items)
        waiting = {k: v for k, v in waiting.items() if v}  # an empty last list would break the next patch
        data = json.dumps(waiting, default=str).encode()
        _write_at(self.claim, data, None)
        self.shape = _Shape(set(waiting), next(reversed(waiting)), len(data))

    def _waiting(self) -> dict[str, list[Any]]:
        """What the claimed file holds ({} when there is none); what cannot be read is kept aside, not lost."""
        try:
            with self.claim.open("rb") as handle:
                waiting, problem = salvage(handle)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            waiting, problem = {}, exc.strerror or str(exc)
        if problem:
            kept = self.claim.with_name(f"{self.claim.name}.unreadable.{time.time_ns()}")
            os.replace(self.claim, kept)
            log.error("%s could not be read back whole (%s): the %d entries before that are kept, the file as %s",
                      self.claim, problem, sum(len(v) for v in waiting.values()), kept)
        return waiting


_CLOSING = b"]}"
"""How every file the pilot writes ends: the last key's list, then the object (no list is empty)."""


class _Shape:
    """What an event_status file the pilot wrote holds: its keys, the last one, its size in bytes."""

    def __init__(self, keys: set[str] | None = None, last: str = "", size: int = 0) -> None:
        self.keys, self.last, self.size = keys or set(), last, size

    def patch(self, batch: Mapping[str, Sequence[Any]]) -> bytes | None:
        """The bytes that replace the closing ``]}`` to add ``batch``; None when only a rewrite can
        (no file yet, or a key that is in the file but not last: JSON keeps one value per key)."""
        if not self.keys:
            return None
        last, parts = self.last, []
        for key, items in batch.items():
            body = ",".join(json.dumps(item, default=str) for item in items)
            if key == last:
                parts.append(f",{body}")
            elif key in self.keys:
                return None
            else:
                parts.append(f"],{json.dumps(key)}:[{body}")
                last = key
        return ("".join(parts)).encode() + _CLOSING

    def grown(self, batch: Mapping[str, Any], patch_size: int) -> None:
        self.keys.update(batch)
        self.last = next(reversed(batch))
        self.size += patch_size - len(_CLOSING)


def _write_at(path: Path, data: bytes, offset: int | None) -> None:
    """``data`` over ``path`` from ``offset`` (in place), or as the whole new file (None: via a temporary).

    Every byte the pilot writes to an event_status file goes through here (tests count them).
    """
    if offset is None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


class Request:
    """A request file of the pilot's (jobs or event ranges); Harvester deletes it once it has fed.

    The deletion is what tells the pilot a feed is complete: Harvester writes the feed's files
    first and removes the request last, so nothing is read while Harvester may still write it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def open(self, body: Mapping[str, Any], now: float) -> None:
        write_json_atomically(self.path, body)
        self.opened_at = now

    def answered(self) -> bool:
        """Harvester has fed (or dropped) this request: the file is gone."""
        return self.is_open and not self.path.exists()

    def close(self) -> None:
        self.opened_at = None

    def withdraw(self) -> None:
        """The pilot no longer wants it: remove the file so Harvester does not feed a worker that is done."""
        if self.is_open:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.close()
