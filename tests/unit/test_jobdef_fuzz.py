"""Property-based fuzzing of the job-definition and event-range parsers (issue 12, behaviour 2).

Any value in any field of a real getJob dict (or of a real event range) gives a record or a
``JobDefinitionError`` with a four-digit PanDA code and a one-line diagnostic: never another exception.
What parses is safe to hand on: its text reaches argv, the environment and paths without NUL bytes or
lone surrogates, its file names are plain names, its numbers are bounded, and it survives the trips it
takes (JSON to the journal and ``pandaJob.json``, ``to_wire`` to the other ranks) unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcpilot.errors import ErrorCode, JobDefinitionError, PilotError
from hpcpilot.records import (
    INT_BOUNDS,
    EventRange,
    JobSpec,
    attempt_nr_of,
    panda_id_of,
    range_id_of,
    show_value,
)
from hpcpilot.stageio.files import check_lfn
from tests.jobfuzz import (
    ABSURD_NUMBERS,
    FLAG_FIELDS,
    HOSTILE_NAMES,
    INT_FIELDS,
    NAME_FIELDS,
    PER_INPUT,
    TEXT_FIELDS,
    WRONG_TYPES,
    base_job,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "panda"
JOB_FIXTURES = [json.loads((FIXTURES / name).read_text()) for name in ("getJob-4.json", "getJob-es.json")]
RANGE_FIXTURE = json.loads((FIXTURES / "getEventRanges.json").read_text())["eventRanges"][0]
FIELDS = sorted({*JOB_FIXTURES[0], *INT_FIELDS, *TEXT_FIELDS, *NAME_FIELDS, *FLAG_FIELDS, *PER_INPUT})
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODES = {int(code) for code in ErrorCode}


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


hostile_text = st.text(st.sampled_from("ab,./\\-\0\n\r\x7f\x1b \u00e9\u2028\ud800\udc80\udfff\U0001f4a5"), max_size=30)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
# Values whose repr fails (a 5000-digit int, 5000 nested lists) are made after drawing: hypothesis prints
# the strategies it is given.
MONSTERS = {"huge int": lambda: 10**5000, "huge negative int": lambda: -(10**4400), "deep list": lambda: _deep(5000),
            "long text": lambda: "x" * 100_000}
constants = (st.sampled_from([*WRONG_TYPES, *ABSURD_NUMBERS, *HOSTILE_NAMES, 1e-300, 2**64])
             | st.sampled_from(sorted(MONSTERS)).map(lambda name: MONSTERS[name]()))
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | any_text | hostile_text | constants)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
keys = st.sampled_from(FIELDS) | st.sampled_from(["PandaID"]) | any_text


def _ids(cases: list[tuple[Any, ...]]) -> list[str]:
    """Test ids that pytest can print (it cannot print a 5000-digit int)."""
    return [f"case{i}-{show_value(case[0], 20)}" for i, case in enumerate(cases)]


def _one_line(text: str) -> bool:
    return isinstance(text, str) and len(text.splitlines()) == 1 and len(text) <= 600


def _assert_refusal(exc: PilotError) -> None:
    assert isinstance(exc, JobDefinitionError) or int(exc.code) in CODES
    assert 1000 <= int(exc.code) <= 9999 and int(exc.code) in CODES
    assert _one_line(exc.diag), exc.diag
    exc.diag.encode("utf-8")  # it goes to a log file and to the server


def _assert_safe_text(text: str) -> None:
    assert "\0" not in text
    text.encode("utf-8")


def _assert_usable(spec: JobSpec, wire: dict[str, Any]) -> None:
    """A parsed job is safe to run and hand on, and every reader of it agrees."""
    for text in (spec.transformation, spec.job_pars):
        _assert_safe_text(text)
    for fspec in (*spec.inputs, *spec.outputs, *filter(None, [spec.log_file])):
        check_lfn(fspec.lfn)
        assert fspec.lfn.isprintable()  # quoted raw in diagnostics: one line
        for text in (fspec.lfn, fspec.scope, fspec.guid, fspec.checksum, fspec.dataset, fspec.ddm_endpoint):
            _assert_safe_text(text)
        assert fspec.fsize is None or 0 <= fspec.fsize <= INT_BOUNDS["fsize"][1]
    assert INT_BOUNDS["PandaID"][0] <= spec.panda_id <= INT_BOUNDS["PandaID"][1]
    assert 1 <= spec.core_count <= INT_BOUNDS["coreCount"][1]
    assert spec.max_walltime is None or 0 <= spec.max_walltime <= INT_BOUNDS["maxWalltime"][1]
    assert json.loads(json.dumps(spec.to_wire())) is not None  # journal, pandaJob.json
    assert JobSpec.from_wire(spec.to_wire()) == spec  # the worker parses what rank 0 sends
    assert panda_id_of(wire) == spec.panda_id
    assert attempt_nr_of(wire) in (None, spec.attempt_nr)


def _parse_job(wire: Any) -> None:
    try:
        spec = JobSpec.from_wire(wire)
    except PilotError as exc:
        _assert_refusal(exc)
    else:
        _assert_usable(spec, wire)
    assert isinstance(panda_id_of(wire), int)
    assert attempt_nr_of(wire) is None or isinstance(attempt_nr_of(wire), int)


@pytest.mark.parametrize("fixture", JOB_FIXTURES, ids=["getJob-4", "getJob-es"])
@FUZZ
@given(changes=st.dictionaries(keys, json_values, min_size=1, max_size=4),
       dropped=st.lists(st.sampled_from([*FIELDS, "PandaID"]), max_size=3))
def test_any_field_value_gives_a_job_or_a_coded_refusal(fixture: dict[str, Any], changes: dict[str, Any],
                                                         dropped: list[str]) -> None:
    wire = {**fixture, **changes}
    for key in dropped:
        wire.pop(key, None)
    _parse_job(wire)


@FUZZ
@given(key=st.sampled_from(FIELDS), text=hostile_text | any_text)
def test_text_spliced_into_a_field(key: str, text: str) -> None:
    wire = base_job(42)
    old = wire.get(key)
    wire[key] = f"{old}{text}" if isinstance(old, str) else text
    _parse_job(wire)


@FUZZ
@given(value=json_values | st.dictionaries(keys, json_values, max_size=3))
def test_anything_at_all_as_a_definition(value: Any) -> None:
    _parse_job(value)


BAD_FIELDS = [
    ("attemptNr", {"nested": 0}, ErrorCode.CONVERSIONFAILURE),
    ("attemptNr", [], ErrorCode.CONVERSIONFAILURE),
    ("attemptNr", "\u0661\u0662", ErrorCode.CONVERSIONFAILURE),
    ("attemptNr", "1_000", ErrorCode.CONVERSIONFAILURE),
    ("coreCount", "NaN", ErrorCode.CONVERSIONFAILURE),
    ("coreCount", float("nan"), ErrorCode.CONVERSIONFAILURE),
    ("minRamCount", 1.5, ErrorCode.CONVERSIONFAILURE),
    ("maxWalltime", 10**30, ErrorCode.CONVERSIONFAILURE),
    ("maxWalltime", -1, ErrorCode.CONVERSIONFAILURE),
    ("attemptNr", True, ErrorCode.CONVERSIONFAILURE),
    ("jobPars", "-c 'true'\0", ErrorCode.CONVERSIONFAILURE),
    ("transformation", "/bin/\udc80sh", ErrorCode.CONVERSIONFAILURE),
    ("transformation", ["/bin/sh"], ErrorCode.CONVERSIONFAILURE),
    ("transformation", "NULL", ErrorCode.TRANSFORMNOTFOUND),
    ("outFiles", "../../etc/passwd", ErrorCode.BADOUTPUTFILENAME),
    ("logFile", "a\0b", ErrorCode.BADOUTPUTFILENAME),
    ("inFiles", "x" * 300, ErrorCode.LFNTOOLONG),
    ("outFiles", "out\u2028.root,log.tgz", ErrorCode.BADOUTPUTFILENAME),
    ("logFile", "log.tgz\x85", ErrorCode.BADOUTPUTFILENAME),
    ("realDatasets", "just-one", ErrorCode.NOTSAMELENGTH),
    ("loopingCheck", "maybe", ErrorCode.CONVERSIONFAILURE),
    ("cloud", 10**5000, ErrorCode.CONVERSIONFAILURE),
    ("cloud", _deep(5000), ErrorCode.CONVERSIONFAILURE),
    ("PandaID", "abc", ErrorCode.CONVERSIONFAILURE),
    ("PandaID", None, ErrorCode.NOTDEFINED),
]


@pytest.mark.parametrize(("field", "value", "code"), BAD_FIELDS, ids=_ids(BAD_FIELDS))
def test_known_bad_fields_fail_with_their_code(field: str, value: Any, code: ErrorCode) -> None:
    wire = {**base_job(42), field: value}
    with pytest.raises(JobDefinitionError) as caught:
        JobSpec.from_wire(wire)
    assert caught.value.code == code, caught.value.diag
    _assert_refusal(caught.value)


ATTEMPTS = [
    (7, 7), ("7", 7), (" 7 ", 7), ("+7", 7), ("0" * 40 + "7", 7), ("NULL", None), (None, None),
    ({"nested": 0}, None), ([], None),
    ("\u0661", None), ("1_0", None), (True, None), (1.0, None), (-1, None), (2**31, None), (10**5000, None),
]


@pytest.mark.parametrize(("value", "expected"), ATTEMPTS, ids=_ids(ATTEMPTS))
def test_attempt_nr_of_never_raises(value: Any, expected: int | None) -> None:
    assert attempt_nr_of({"attemptNr": value}) == expected
    assert attempt_nr_of(value) is None  # not a definition at all


def test_valid_forms_still_parse() -> None:
    """What the real server sends, in JSON and URL-encoded spellings, is accepted as before."""
    wire = {**base_job(42), "attemptNr": "3", "coreCount": "8", "maxWalltime": "NULL", "taskID": 41000001,
            "loopingCheck": False, "debug": "True", "eventService": "False", "allowNoOutput": "false"}
    spec = JobSpec.from_wire(wire)
    assert (spec.attempt_nr, spec.core_count, spec.max_walltime, spec.task_id) == (3, 8, None, 41000001)
    assert (spec.looping_check, spec.debug, spec.event_service, spec.allow_no_output) == (False, True, False, False)
    assert spec.log_file is not None and spec.log_file.guid == wire["logGUID"]
    for fixture in JOB_FIXTURES:
        assert JobSpec.from_wire(fixture).panda_id == fixture["PandaID"]


def test_show_value_is_one_bounded_ascii_line() -> None:
    for value in (10**5000, _deep(5000), "a\nb\udc80" * 100, {"k": 1}, float("nan"), object()):
        text = show_value(value)
        assert text.isascii() and _one_line(text) and len(text) <= 80


# ---- event ranges -------------------------------------------------------------------------------

RANGE_KEYS = st.sampled_from(["eventRangeID", "startEvent", "lastEvent", "LFN", "GUID", "scope", "PFN"]) | any_text


@FUZZ
@given(changes=st.dictionaries(RANGE_KEYS, json_values, min_size=1, max_size=4),
       dropped=st.lists(st.sampled_from(list(RANGE_FIXTURE)), max_size=2))
def test_any_event_range_gives_a_range_or_a_coded_refusal(changes: dict[str, Any], dropped: list[str]) -> None:
    wire = {**RANGE_FIXTURE, **changes}
    for key in dropped:
        wire.pop(key, None)
    try:
        item = EventRange.from_wire(wire)
    except PilotError as exc:
        _assert_refusal(exc)
    else:
        for text in (item.event_range_id, item.lfn, item.guid, item.scope):
            _assert_safe_text(text)
        assert 0 <= item.start_event <= item.last_event and item.n_events >= 1
        assert EventRange.from_wire(item.to_wire()) == item  # rank 0 deals what it parsed; the rank parses again
        json.dumps(item.to_wire())  # the protocol payload gets it as JSON
    assert isinstance(range_id_of(wire), str)


@FUZZ
@given(value=json_values)
def test_anything_at_all_as_an_event_range(value: Any) -> None:
    try:
        EventRange.from_wire(value)
    except PilotError as exc:
        _assert_refusal(exc)
    assert isinstance(range_id_of(value), str)


BAD_RANGES = [
    ({"eventRangeID": None}, ErrorCode.NOTDEFINED),
    ({"eventRangeID": {"a": 1}}, ErrorCode.NOTDEFINED),
    ({"eventRangeID": "1-2-3\0"}, ErrorCode.CONVERSIONFAILURE),
    ({"startEvent": "one"}, ErrorCode.CONVERSIONFAILURE),
    ({"startEvent": 10, "lastEvent": 9}, ErrorCode.CONVERSIONFAILURE),
    ({"LFN": "EVNT\0.root"}, ErrorCode.CONVERSIONFAILURE),
    ({"GUID": ["x"]}, ErrorCode.CONVERSIONFAILURE),
    ({"PFN": 10**5000}, ErrorCode.CONVERSIONFAILURE),
]


@pytest.mark.parametrize(("changes", "code"), BAD_RANGES, ids=_ids(BAD_RANGES))
def test_known_bad_ranges_fail_with_their_code(changes: dict[str, Any], code: ErrorCode) -> None:
    with pytest.raises(JobDefinitionError) as caught:
        EventRange.from_wire({**RANGE_FIXTURE, **changes})
    assert caught.value.code == code, caught.value.diag
    _assert_refusal(caught.value)


# ---- the last line of defence: what still reaches Popen --------------------------------------------

@pytest.mark.parametrize("where", ["command", "env", "cwd"])
def test_a_nul_byte_at_popen_fails_the_job_with_a_code(tmp_path: Path, where: str) -> None:
    """Job fields are checked at parse time; anything else that puts a NUL into argv, env or cwd still
    fails the job with SETUPFAILURE instead of raising ValueError out of Popen."""
    from hpcpilot.payload import start_payload

    command, env, cwd = "true", {"PATH": "/usr/bin:/bin"}, tmp_path
    if where == "command":
        command = "echo a\0b"
    elif where == "env":
        env["BAD"] = "a\0b"
    else:
        cwd = Path(f"{tmp_path}\0x")
    with pytest.raises(PilotError) as caught:
        start_payload(command, cwd, env, tmp_path / "out", tmp_path / "err", None)
    assert caught.value.code == ErrorCode.SETUPFAILURE
    _assert_refusal(caught.value)
