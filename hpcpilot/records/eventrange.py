"""Event ranges: ``EventRange`` as getEventRanges hands one out, ``EventRangeUpdate`` as updateEventRanges
carries its outcome back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hpcpilot.errors import ErrorCode, JobDefinitionError
from hpcpilot.records.fields import (
    INT_BOUNDS,
    NULL_VALUES,
    check_encodable,
    checked_text,
    parse_int,
    range_id_of,
    show_value,
    text_value,
)
from hpcpilot.states import EventRangeStatus


@dataclass(frozen=True, slots=True)
class EventRange:
    """One event range as getEventRanges hands it out (startEvent and lastEvent inclusive)."""

    event_range_id: str
    start_event: int
    last_event: int
    lfn: str
    guid: str
    scope: str
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    _WIRE = {"eventRangeID": "event_range_id", "startEvent": "start_event", "lastEvent": "last_event",
             "LFN": "lfn", "GUID": "guid", "scope": "scope"}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> EventRange:
        """Parse one range; raise JobDefinitionError (and nothing else, for any input) if it is unusable.

        Its ID, file and scope are substituted into range commands and its extra keys sent to the
        payload as JSON, so they get the same checks as a job definition's fields.  A range as servers
        send it (the six keys, ASCII text, numbers as ints) takes a short path with the same outcome
        (issue 26: 1.5 us against 5.4 here; tests/unit/test_range_parse.py compares the two).
        """
        plain = _plain_range(wire)
        return cls._from_checked_wire(wire) if plain is None else cls(*plain, _NO_EXTRA)

    @classmethod
    def _from_checked_wire(cls, wire: Mapping[str, Any]) -> EventRange:
        """The general path of ``from_wire``: every field checked as a job definition's are."""
        if not isinstance(wire, Mapping):
            raise JobDefinitionError(ErrorCode.NOTDEFINED, f"event range is not an object: {show_value(wire)}")
        range_id = range_id_of(wire)
        if not range_id:
            raise JobDefinitionError(ErrorCode.NOTDEFINED,
                                     f"event range without eventRangeID: {show_value(wire.get('eventRangeID'))}")
        what = f"event range {show_value(range_id)}"
        checked_text(range_id, what)
        check_encodable(wire, what)
        start = parse_int(wire.get("startEvent"), f"startEvent of {what}", INT_BOUNDS["startEvent"])
        last = parse_int(wire.get("lastEvent"), f"lastEvent of {what}", INT_BOUNDS["lastEvent"])
        if last < start:
            raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"{what} ends ({last}) before it starts ({start})")
        texts = [text_value(wire.get(key), f"{key} of {what}") for key in ("LFN", "GUID", "scope")]
        extra = {k: v for k, v in wire.items() if k not in cls._WIRE}
        return cls(range_id, start, last, *texts, MappingProxyType(extra))

    def to_wire(self) -> dict[str, Any]:
        out = {wire: getattr(self, attr) for wire, attr in self._WIRE.items()}
        out.update(self.extra)
        return out

    @property
    def n_events(self) -> int:
        return self.last_event - self.start_event + 1


_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_BOUNDS = INT_BOUNDS["startEvent"], INT_BOUNDS["lastEvent"]


def _plain_range(wire: Any) -> tuple[str, int, int, str, str, str] | None:
    """The fields of a range with exactly the six keys, ASCII text without NUL, a non-null ID and
    int events in bounds, start <= last: what the general path would return for it; None for any
    other input (the general path decides)."""
    if type(wire) is not dict or len(wire) != 6:
        return None
    try:
        fields = (wire["eventRangeID"], wire["startEvent"], wire["lastEvent"], wire["LFN"], wire["GUID"],
                  wire["scope"])
    except KeyError:
        return None
    range_id, start, last, lfn, guid, scope = fields
    if not (type(range_id) is str and type(lfn) is str and type(guid) is str and type(scope) is str
            and type(start) is int and type(last) is int):
        return None
    text = range_id + lfn + guid + scope
    (low_start, high_start), (low_last, high_last) = _BOUNDS
    if (not text.isascii() or "\0" in text or range_id.strip() in NULL_VALUES or start > last
            or not low_start <= start <= high_start or not low_last <= last <= high_last):
        return None
    return (range_id, start, last, "" if lfn.strip() in NULL_VALUES else lfn,
            "" if guid.strip() in NULL_VALUES else guid, "" if scope.strip() in NULL_VALUES else scope)


@dataclass(frozen=True, slots=True)
class EventRangeUpdate:
    """The outcome of one event range, as updateEventRanges carries it."""

    event_range_id: str
    status: EventRangeStatus
    error_code: int = 0
    error_diag: str = ""
    cpu_time: float = 0.0
    wall_time: float = 0.0
    output: str = ""
    fsize: int = 0
    adler32: str = ""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eventRangeID": self.event_range_id, "eventStatus": str(self.status)}
        if self.status in (EventRangeStatus.FAILED, EventRangeStatus.FATAL):
            out["errorCode"] = self.error_code or int(ErrorCode.UNKNOWNPAYLOADFAILURE)
            if self.error_diag:
                out["errorDiag"] = self.error_diag[:500]
        if self.cpu_time:
            out["cpuConsumptionTime"] = round(self.cpu_time, 3)
        return out
