"""Total parsers of single wire values: what a job definition's or an event range's field may hold.

Every function here takes anything the network (or the journal) can produce and returns a checked Python
value or raises ``JobDefinitionError`` with a PanDA code and a one-line diagnostic, never another exception;
``show_value`` quotes a bad value in that line, bounded and ASCII.  JobSpec and EventRange are built from
these, so one field is checked the same way wherever it appears.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hpcpilot.errors import ErrorCode, JobDefinitionError

NULL_VALUES = frozenset({"NULL", "None", "null", ""})
MAX_BIGINT = 2**63 - 1  # PanDA's ids and counters are 64-bit database columns
SHOW_CHARS = 60  # how much of a bad value a diagnostic quotes
# field -> (lowest, highest) accepted value; anything outside fails the job with CONVERSIONFAILURE.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "PandaID": (1, MAX_BIGINT),
    "attemptNr": (0, 2**31 - 1),
    "coreCount": (0, 1 << 20),
    "minRamCount": (0, 1 << 40),  # MB
    "maxWalltime": (0, 10**9),  # s: about 30 years, so deadlines stay finite floats
    "taskID": (0, MAX_BIGINT),
    "jobsetID": (0, MAX_BIGINT),
    "fsize": (0, MAX_BIGINT),
    "startEvent": (0, MAX_BIGINT),
    "lastEvent": (0, MAX_BIGINT),
}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_DECIMAL = re.compile(r"\s*([+-]?)0*([0-9]{1,20})\s*", re.ASCII)  # bounded: int() of 5000 digits raises


def is_null(value: Any) -> bool:
    """True for the server's spellings of 'no value'."""
    return value is None or (isinstance(value, str) and value.strip() in NULL_VALUES)


def show_value(value: Any, limit: int = SHOW_CHARS) -> str:
    """Any wire value for a one-line diagnostic: ASCII, bounded, and never an exception.

    (``repr`` of a nested object can recurse without end and ``str`` of a huge int raises.)
    """
    if isinstance(value, str):
        text = ascii(value[:limit])  # escapes may make it longer than ``limit``: cut again
        return text if len(text) <= limit and len(value) <= limit else text[: limit - 3] + "..."
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, Mapping | list | tuple):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def parse_int(value: Any, what: str, bounds: tuple[int, int] = (-MAX_BIGINT, MAX_BIGINT)) -> int:
    """An integer from the wire (an int or ASCII decimal digits) within ``bounds``.

    Floats are refused, even integral ones: PanDA's integer columns never send them, and the server
    would not read ``1.0`` back as the attemptNr it handed out.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _DECIMAL.fullmatch(value)):
        number = int(match.group(1) + match.group(2))
    if number is None:
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"{what} is not a number: {show_value(value)}")
    low, high = bounds
    if not low <= number <= high:
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                 f"{what} is out of range [{low}, {high}]: {show_value(number)}")
    return number


def _optional_int(value: Any, key: str) -> int | None:
    """A number field of the wire, or None for a null or unreadable one (never raises)."""
    if is_null(value):
        return None
    try:
        return parse_int(value, key, INT_BOUNDS[key])
    except JobDefinitionError:
        return None


def panda_id_of(wire: Any) -> int:
    """The PandaID of a job definition that may not parse (0 when it has none), for reporting it."""
    return (_optional_int(wire.get("PandaID"), "PandaID") or 0) if isinstance(wire, Mapping) else 0


def attempt_nr_of(wire: Any) -> int | None:
    """The attemptNr of a job definition that may not parse, or None: an update must then leave
    attemptNr out (the server kills a job whose update carries a wrong one)."""
    return _optional_int(wire.get("attemptNr"), "attemptNr") if isinstance(wire, Mapping) else None


def range_id_of(wire: Any) -> str:
    """The eventRangeID of an event range that may not parse ("" when it has no usable one)."""
    value = wire.get("eventRangeID") if isinstance(wire, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_BIGINT:
        return str(value)
    return value if isinstance(value, str) and not is_null(value) else ""


def checked_text(text: str, what: str, code: ErrorCode = ErrorCode.CONVERSIONFAILURE) -> str:
    """``text`` if it can reach argv, the environment or a path: no NUL byte, encodable as UTF-8."""
    if "\0" in text:
        raise JobDefinitionError(code, f"{what} holds a NUL byte: {show_value(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JobDefinitionError(code, f"{what} is not valid Unicode text: {show_value(text)}") from None
    return text


def text_value(value: Any, what: str, code: ErrorCode = ErrorCode.CONVERSIONFAILURE) -> str:
    """A text value ("" for null); an int is taken as its digits (URL-encoded mode sends numbers as text)."""
    if is_null(value):
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_BIGINT:
        return str(value)
    if not isinstance(value, str):
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"{what} is not text: {show_value(value)}")
    return checked_text(value, what, code)


def text_field(wire: Mapping[str, Any], key: str, code: ErrorCode = ErrorCode.CONVERSIONFAILURE) -> str:
    """Field ``key`` of a definition as text (``text_value``), its diagnostic naming the field."""
    return text_value(wire.get(key), f"field {key}", code)


def int_field(wire: Mapping[str, Any], key: str, default: int | None) -> int | None:
    """Field ``key`` as a number within its ``INT_BOUNDS``, or ``default`` when the server left it null."""
    value = wire.get(key)
    return default if is_null(value) else parse_int(value, f"field {key}", INT_BOUNDS[key])


def flag_field(wire: Mapping[str, Any], key: str, default: bool) -> bool:
    """Field ``key`` as a flag: a bool, 0/1 or a true/false spelling (both wire forms send them), else refused."""
    value = wire.get(key)
    if is_null(value):
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"field {key} is not true or false: {show_value(value)}")


def split_field(wire: Mapping[str, Any], key: str, code: ErrorCode = ErrorCode.CONVERSIONFAILURE) -> list[str]:
    """A comma-separated per-file field as its items ([] when null): the getJob form of a list."""
    text = text_field(wire, key, code)
    return [item.strip() for item in text.split(",")] if text else []


_ALWAYS_JSON = frozenset({str, float, bool, type(None)})
"""Types ``json.dumps`` never refuses (NaN and lone surrogates included), so they need no trial encoding:
a range is checked on every lease, and the trial was a third of rank 0's cost per range.  Not int: one of
more than 4,300 digits is refused (Python's integer-string limit); see ``_plain_int``."""
_PLAIN_INT_BITS = 10_000  # about 3,000 decimal digits: far below the limit


def _plain_int(value: Any) -> bool:
    return type(value) is int and value.bit_length() < _PLAIN_INT_BITS


def check_encodable(wire: Mapping[Any, Any], what: str) -> None:
    """Every key is text and every value JSON: definitions and ranges are journaled, sent and written as JSON."""
    for key, value in wire.items():
        if not isinstance(key, str):
            raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"{what} has a non-text key: {show_value(key)}")
        if type(value) in _ALWAYS_JSON or _plain_int(value):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                     f"{what}: field {show_value(key)} cannot be encoded as JSON: "
                                     f"{show_value(value)}") from None
