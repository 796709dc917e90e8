"""The AthenaMP event-range protocol, over a local Unix socket.

A long-running payload connects to the socket named by ``PILOT_EVENTRANGECHANNEL`` and
exchanges one message per line (UTF-8, newline-terminated; no message of the protocol
contains a newline):

* payload -> pilot ``Ready for events``: it wants one range;
* pilot -> payload a JSON array holding one getEventRanges dict, or ``No more events``;
* payload -> pilot on success ``<output path>,ID:<eventRangeID>,CPU:<s>,WALL:<s>``;
* payload -> pilot on failure ``ERR_<CODE> <eventRangeID>: <diagnostics>``.

pilot3 carries the same messages over yampl; hpcpilot uses a plain socket so a payload in
any language can speak it with its standard library (see examples/es_payload.py).  Error
codes: ``ERR_<number>`` gives that PanDA code; a code containing ``FATAL`` makes the range
fatal (ESFATAL 1228, never retried); any other is failed with UNKNOWNPAYLOADFAILURE (1220).
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpilot.errors import ErrorCode
from hpcpilot.states import EventRangeStatus

READY = "Ready for events"
NO_MORE = "No more events"
CHANNEL_ENV = "PILOT_EVENTRANGECHANNEL"
MAX_LINE = 64 * 1024
_ERROR = re.compile(r"^ERR_([A-Za-z0-9_]+)\s+(\S+?)\s*:\s*(.*)$", re.DOTALL)
_EMBEDDED_ID = re.compile(r'"eventRangeID"\s*:\s*"([^"]+)"')
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux


class ChannelError(Exception):
    """A message the protocol does not allow; the text says what was wrong."""


@dataclass(frozen=True)
class PayloadReady:
    """The payload asks for one range."""


@dataclass(frozen=True)
class PayloadOutput:
    path: str
    range_id: str
    cpu: float
    wall: float


@dataclass(frozen=True)
class PayloadFailure:
    range_id: str
    status: EventRangeStatus
    code: int
    diag: str


PayloadMessage = PayloadReady | PayloadOutput | PayloadFailure


def parse_message(text: str) -> PayloadMessage:
    """One payload message; ChannelError names what is wrong with a bad one."""
    text = text.strip()
    if text == READY:
        return PayloadReady()
    if text.startswith("ERR_"):
        return _parse_failure(text)
    return _parse_output(text)


def _parse_failure(text: str) -> PayloadFailure:
    match = _ERROR.match(text)
    name = match.group(1) if match else (text[4:].split(None, 1) or [""])[0]
    embedded = _EMBEDDED_ID.search(text)
    if embedded is not None and (match is None or "PARSE" in name.upper()):
        range_id = embedded.group(1)  # ERR_ATHENAMP_PARSE carries the range's JSON
    elif match is not None:
        range_id = match.group(2)
    else:
        raise ChannelError(f"error message without an event range ID: {text[:120]!r}")
    diag = match.group(3).strip() if match else text
    if name.isdigit():
        return PayloadFailure(range_id, EventRangeStatus.FAILED, int(name), diag or f"ERR_{name}")
    if "FATAL" in name.upper():
        return PayloadFailure(range_id, EventRangeStatus.FATAL, int(ErrorCode.ESFATAL), f"ERR_{name}: {diag}")
    return PayloadFailure(range_id, EventRangeStatus.FAILED, int(ErrorCode.UNKNOWNPAYLOADFAILURE),
                          f"ERR_{name}: {diag}")


def _parse_output(text: str) -> PayloadOutput:
    path, *pairs = [part.strip() for part in text.split(",")]
    fields: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep:
            raise ChannelError(f"output message field without a value: {pair[:60]!r}")
        fields[name.strip().lower()] = value.strip()
    if not path or "id" not in fields:
        raise ChannelError(f"output message needs '<path>,ID:<eventRangeID>,...': {text[:120]!r}")
    try:
        return PayloadOutput(path, fields["id"], float(fields.get("cpu", 0)), float(fields.get("wall", 0)))
    except ValueError:
        raise ChannelError(f"CPU or WALL is not a number: {text[:120]!r}") from None


def range_message(event_range: Mapping[str, Any]) -> str:
    """What the pilot sends for one range: a JSON array holding its getEventRanges dict."""
    return json.dumps([dict(event_range)])


class Channel:
    """The pilot's end: a listening Unix socket, one payload connection at a time."""

    def __init__(self, directory: Path) -> None:
        path = directory / "eventranges.sock"
        if len(os.fsencode(path)) > _SOCKET_PATH_MAX:  # a deep workdir: fall back to a short private dir
            path = Path(tempfile.mkdtemp(prefix="hpcpilot-")) / "er.sock"
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(os.fspath(path))
        self._server.listen(1)
        self._conn: socket.socket | None = None
        self._pending = b""

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def accept(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the payload to connect (a new one replaces an old one)."""
        ready, _, _ = select.select([self._server], [], [], timeout)
        if not ready:
            return False
        self.drop()
        self._conn, _ = self._server.accept()
        return True

    def receive(self, timeout: float) -> list[str] | None:
        """Complete lines received within ``timeout`` s; None when the payload closed its end."""
        if self._conn is None:
            return []
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return []
        try:
            chunk = self._conn.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.drop()
            return None
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > MAX_LINE:
            raise ChannelError(f"payload message longer than {MAX_LINE} bytes without a newline")
        return [line.decode("utf-8", "replace") for line in lines if line.strip()]

    def send(self, text: str) -> bool:
        """Send one message; False if the payload is gone."""
        if self._conn is None:
            return False
        try:
            self._conn.sendall(text.encode() + b"\n")
        except OSError:
            self.drop()
            return False
        return True

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn, self._pending = None, b""

    def close(self) -> None:
        self.drop()
        self._server.close()
        try:
            self.path.unlink()
            if self.path.parent.name.startswith("hpcpilot-"):
                self.path.parent.rmdir()
        except OSError:
            pass
