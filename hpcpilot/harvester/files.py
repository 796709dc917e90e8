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
  lost.  The file holds only what Harvester has not taken: writing it costs what is waiting,
  not everything ever reported.
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
    except FileNotFoundError:
        raise ConfigError(f"{path}: no {what} in the access point") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {what} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object {{PandaID: ...}}, got {type(data).__name__}")
    return data


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
    """One ``event_status.dump.json``: entries the pilot added that Harvester has not taken yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claim = path.with_name(f".{path.name}.merging")

    def add(self, entries: Entries) -> None:
        """Offer new entries to Harvester, merged with those still waiting in the file.

        Only the pilot creates ``path`` and only from ``claim``, so at any moment at most one of
        the two exists; a pilot killed in between leaves the claim, which the next ``add`` (also
        by a restarted pilot) merges.
        """
        if not any(entries.values()):
            return
        if not self.claim.exists():
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path, self.claim)  # fails when Harvester renamed it first: it took those
        waiting = self._waiting()
        for panda_id, items in entries.items():
            if items:
                waiting.setdefault(str(panda_id), []).extend(items)
        write_json_atomically(self.claim, waiting, compact=True)
        os.replace(self.claim, self.path)

    def _waiting(self) -> dict[str, list[Any]]:
        """What the claimed file holds ({} when there is none); an unreadable one is kept aside, not lost."""
        try:
            data = json.loads(self.claim.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            kept = self.claim.with_name(f"{self.claim.name}.unreadable.{time.time_ns()}")
            os.replace(self.claim, kept)
            log.error("%s could not be read back (%s); kept as %s", self.claim, exc, kept)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): list(v) for k, v in data.items() if isinstance(v, list)}


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
