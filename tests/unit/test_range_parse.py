"""``EventRange.from_wire``'s short path (issue 26) gives what the general path gives, for any input."""

from __future__ import annotations

import random
from typing import Any

from hpcpilot.errors import JobDefinitionError
from hpcpilot.records import EventRange
from hpcpilot.records.fields import MAX_BIGINT

TEXTS = ["EVNT.pool.root.1", "", " ", "NULL", " null ", "None", "G-1", "caf\u00e9", "a\0b", "\ud800", "x" * 300]
NUMBERS: list[Any] = [0, 1, 9, 10, -1, MAX_BIGINT, MAX_BIGINT + 1, True, False, 1.0, "5", "0x5", None, 2**70]
KEYS = ["eventRangeID", "startEvent", "lastEvent", "LFN", "GUID", "scope"]


def _random_wire(rng: random.Random) -> Any:
    wire: dict[Any, Any] = {"eventRangeID": f"7-50-1-{rng.randrange(100)}-1", "startEvent": rng.randrange(5),
                            "lastEvent": rng.randrange(3, 12), "LFN": "EVNT.pool.root.1", "GUID": "G-1",
                            "scope": "mc23"}
    for _ in range(rng.randrange(3)):
        key = rng.choice(KEYS)
        wire[key] = rng.choice(NUMBERS if key in ("startEvent", "lastEvent") or rng.random() < 0.2 else TEXTS)
    if rng.random() < 0.1:
        del wire[rng.choice(KEYS)]
    if rng.random() < 0.1:
        wire[rng.choice(["extra", 5, "LFN2"])] = rng.choice([1, "x", [1, 2], {"a": 1}])
    if rng.random() < 0.03:
        return rng.choice([None, [], "range", 7])
    return wire


def _outcome(parse: Any, wire: Any) -> Any:
    try:
        found = parse(wire)
    except JobDefinitionError as exc:
        return ("error", exc.code, exc.diag)
    return ("range", found, dict(found.extra))


def test_the_short_path_answers_as_the_general_path_on_random_ranges():
    rng = random.Random(26)
    short = 0
    for _ in range(20_000):
        wire = _random_wire(rng)
        assert _outcome(EventRange.from_wire, wire) == _outcome(EventRange._from_checked_wire, wire), wire
        short += type(wire) is dict and len(wire) == 6 and all(type(wire.get(k)) is str for k in KEYS[3:])
    assert short > 5_000  # the short path was taken often, not only the general one
