"""A JSON object of lists, ``{key: [value, ...], ...}``, read from a file one value at a time.

Harvester's files have that shape and can be large: a range feed of a million ranges parsed whole
cost about 930 B of rank-0 memory per range.  ``Cursor`` reads a UTF-8 file in chunks and decodes
one value at a time with ``json.JSONDecoder.raw_decode``, so it holds one chunk and one value, and
it can start at a byte offset found earlier (a job's list in a feed).  The text must be what
``json.loads`` accepts, and an error says what ``json.loads`` would have said, at the same line,
column and character, so a malformed file gets the same one-line message as when it was read whole.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

CHUNK = 1 << 16
"""Bytes read at a time: a few hundred ranges, so a fetch costs what it takes, not the file."""
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JsonError(ValueError):
    """The text stops being the JSON wanted here; ``str()`` is what ``json.loads`` says of it."""


class NotAnObject(ValueError):
    """The file is one valid JSON value, but not an object; ``str()`` is its Python type name."""


class Cursor:
    """A position in a UTF-8 JSON file, with the text around it read in chunks."""

    def __init__(self, handle: BinaryIO, offset: int = 0, chunk: int = CHUNK) -> None:
        handle.seek(offset)
        self.handle, self.chunk = handle, chunk
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self.base_byte = offset  # the file offset of buf[0]
        self.base_char = 0  # characters (from ``offset``) before buf[0], newlines among them, the last one
        self.base_lines, self.last_newline = 0, -1

    def _fill(self) -> bool:
        """Read on (dropping what was consumed); False at the end of the file."""
        if self.eof:
            return False
        self._drop_consumed()
        data = self.handle.read(max(self.chunk, len(self.buf)))  # a value larger than a chunk: double
        self.buf += self.decoder.decode(data, final=not data)
        self.eof = not data
        return True

    def _drop_consumed(self) -> None:
        done = self.buf[:self.pos]
        self.base_byte += len(done.encode())
        newline = done.rfind("\n")
        if newline >= 0:
            self.last_newline = self.base_char + newline
            self.base_lines += done.count("\n")
        self.base_char += self.pos
        self.buf, self.pos = self.buf[self.pos:], 0

    def offset(self) -> int:
        """The file offset of the current position, to come back to it with a new Cursor."""
        return self.base_byte + len(self.buf[:self.pos].encode())

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end of the file), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def take(self) -> None:
        """Consume the character ``peek`` returned."""
        self.pos += 1

    def value(self) -> Any:
        """Decode the next value; a number or literal cut by the chunk's end is read on, not cut."""
        if self.pos >= len(self.buf) or self.buf[self.pos] in " \t\n\r":  # compact text needs no skipping
            self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._fill():
                    continue
                raise self.error(exc.msg, exc.pos) from None
            if end >= len(self.buf) and self._fill():
                continue
            self.pos = end
            return obj

    def end(self) -> None:
        """Nothing but whitespace may follow the top-level value."""
        if self.peek():
            raise self.error("Extra data", self.pos)

    def error(self, msg: str, pos: int | None = None) -> JsonError:
        """``msg`` at ``pos`` of the buffer, placed in the file as ``json.loads`` places it."""
        pos = self.pos if pos is None else pos
        newline = self.buf.rfind("\n", 0, pos)
        last = self.base_char + newline if newline >= 0 else self.last_newline
        line = self.base_lines + self.buf.count("\n", 0, pos) + 1
        char = self.base_char + pos
        return JsonError(f"{msg}: line {line} column {char - last} (char {char})")


class Member(NamedTuple):
    """One key of the object: a list's values as an iterator read as it is consumed, or another value."""

    key: str
    offset: int
    """File offset just inside the list's ``[`` (-1 when the value is not a list)."""
    items: Iterator[Any]
    value: Any = None


def list_items(cursor: Cursor, first: bool = True) -> Iterator[Any]:
    """The values of a list whose ``[`` was consumed (``first``) or that goes on after a value."""
    c = cursor.peek()
    while True:
        if c == "]":
            cursor.take()
            return
        if not first:
            if c != ",":
                raise cursor.error("Expecting ',' delimiter")
            cursor.take()
        first = False
        yield cursor.value()
        buf, pos = cursor.buf, cursor.pos  # compact text: the delimiter is right there
        c = buf[pos] if pos < len(buf) and buf[pos] in ",]" else cursor.peek()


def members(cursor: Cursor) -> Iterator[Member]:
    """Every member of the top-level object, then the check that nothing follows it.

    A list's items left unread when the next member is asked for are read (and dropped) then.
    """
    if cursor.peek() != "{":
        value = cursor.value()
        cursor.end()
        raise NotAnObject(type(value).__name__)
    cursor.take()
    c = cursor.peek()
    while c != "}":
        if c != '"':
            raise cursor.error("Expecting property name enclosed in double quotes")
        key = cursor.value()
        if cursor.peek() != ":":
            raise cursor.error("Expecting ':' delimiter")
        cursor.take()
        if cursor.peek() == "[":
            cursor.take()
            items = list_items(cursor)
            yield Member(key, cursor.offset(), items)
            for _ in items:  # what the reader did not want
                pass
        else:
            yield Member(key, -1, iter(()), cursor.value())
        c = cursor.peek()
        if c == ",":
            cursor.take()
            c = cursor.peek()
            if c == "}":
                raise cursor.error("Expecting property name enclosed in double quotes")
        elif c != "}":
            raise cursor.error("Expecting ',' delimiter")
    cursor.take()
    cursor.end()


class Section(NamedTuple):
    """A key of the object and where its list is: offset inside ``[`` (-1: not a list), its length."""

    key: str
    offset: int
    count: int


def scan(handle: BinaryIO) -> list[Section]:
    """Check the whole file (one value in memory at a time) and say where each key's list is."""
    return [Section(m.key, m.offset, sum(1 for _ in m.items)) for m in members(Cursor(handle))]


def salvage(handle: BinaryIO) -> tuple[dict[str, list[Any]], str]:
    """Every list value that can be read, up to where the file stops being valid, and why it stopped ('')."""
    found: dict[str, list[Any]] = {}
    try:
        for member in members(Cursor(handle)):
            if member.offset >= 0:
                items = found.setdefault(member.key, [])
                for item in member.items:
                    items.append(item)
    except (JsonError, UnicodeDecodeError) as exc:
        return found, str(exc).splitlines()[0]
    except NotAnObject as exc:
        return found, f"not a JSON object but {exc}"
    return found, ""
