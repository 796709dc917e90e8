"""Typed records for PanDA job definitions, event ranges and final job records.

A job definition arrives as the getJob dict the server sends: per-file fields are
comma-separated strings aligned by index, unset columns are the literal ``"NULL"``, and in
URL-encoded mode every number is a string.  It is parsed once, here, into a ``JobSpec``.
The original dict is kept whole (``wire``) so ``to_wire()`` gives back exactly what the
server sent, unknown keys included, with no re-encoding ambiguity between the JSON and the
URL-encoded forms.

Job definitions and event ranges are untrusted input (from the server, an access point, or
the journal on a restart), so their parsers are total: any mapping gives a record or a
``JobDefinitionError`` with a PanDA code and a one-line diagnostic, never another
exception.  What is refused here never reaches a payload's argv, environment or a path:

* numbers: an int or ASCII decimal digits, within the field's bounds (``INT_BOUNDS``), else
  CONVERSIONFAILURE (1302) -- floats, unicode digits, ``1_000``, ``NaN``, bools, lists and
  nested objects included;
* text the pilot uses: a string (or an int, as URL-encoded mode sends numbers as text) without
  NUL bytes and encodable as UTF-8 (no lone surrogates), else 1302;
* flags: a bool, 0/1 or a true/false spelling, else 1302; ``cloneJob``: empty, runonce or storeonce, else 1302;
* per-file lists of unequal length: NOTSAMELENGTH (1312); file names that are not plain names:
  BADOUTPUTFILENAME (1371) or LFNTOOLONG (1190), by ``stageio.files.check_lfn``, and printable;
* the whole definition must be encodable as JSON (it is journaled, sent to other ranks and
  written to ``pandaJob.json``): else 1302 naming the field.

``panda_id_of``, ``attempt_nr_of`` and ``range_id_of`` read one field of a definition that may
not parse, for reporting it; they never raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hpcpilot.errors import ErrorCode, JobDefinitionError, PilotError
from hpcpilot.states import EventRangeStatus, JobState

NULL_VALUES = frozenset({"NULL", "None", "null", ""})
MAX_LFN_LENGTH = 255
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
CLONE_RUNONCE, CLONE_STOREONCE = "runonce", "storeonce"
CLONE_MODES = (CLONE_RUNONCE, CLONE_STOREONCE)
"""cloneJob values (panda-wire C.5): the clone asks the server before its payload / its stage-out (hpcpilot.clones)."""
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


def _text(value: Any, what: str, code: ErrorCode = ErrorCode.CONVERSIONFAILURE) -> str:
    """A text value ("" for null); an int is taken as its digits (URL-encoded mode sends numbers as text)."""
    if is_null(value):
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_BIGINT:
        return str(value)
    if not isinstance(value, str):
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"{what} is not text: {show_value(value)}")
    return checked_text(value, what, code)


def _text_field(wire: Mapping[str, Any], key: str, code: ErrorCode = ErrorCode.CONVERSIONFAILURE) -> str:
    return _text(wire.get(key), f"field {key}", code)


def _int_field(wire: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = wire.get(key)
    return default if is_null(value) else parse_int(value, f"field {key}", INT_BOUNDS[key])


def _flag(wire: Mapping[str, Any], key: str, default: bool) -> bool:
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


def _clone_mode(wire: Mapping[str, Any]) -> str:
    """cloneJob: '' (not a clone) or one of CLONE_MODES; any other value would leave the clone's fate
    unknown (run twice, or never), so the job is refused."""
    mode = _text_field(wire, "cloneJob").strip()
    if mode and mode not in CLONE_MODES:
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                 f"field cloneJob is neither {' nor '.join(CLONE_MODES)}: {show_value(mode)}")
    return mode


def _split(wire: Mapping[str, Any], key: str, code: ErrorCode = ErrorCode.CONVERSIONFAILURE) -> list[str]:
    text = _text_field(wire, key, code)
    return [item.strip() for item in text.split(",")] if text else []


_ALWAYS_JSON = frozenset({str, float, bool, type(None)})
"""Types ``json.dumps`` never refuses (NaN and lone surrogates included), so they need no trial encoding:
a range is checked on every lease, and the trial was a third of rank 0's cost per range.  Not int: one of
more than 4,300 digits is refused (Python's integer-string limit); see ``_plain_int``."""
_PLAIN_INT_BITS = 10_000  # about 3,000 decimal digits: far below the limit


def _plain_int(value: Any) -> bool:
    return type(value) is int and value.bit_length() < _PLAIN_INT_BITS


def _check_encodable(wire: Mapping[Any, Any], what: str) -> None:
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


def _check_name(lfn: str) -> None:
    """A file name of the definition is a plain name of printable characters (``stageio.files.check_lfn``)."""
    # imported here: stageio.files imports this module (for MAX_LFN_LENGTH); the name rule lives there
    from hpcpilot.stageio.files import check_lfn

    try:
        check_lfn(lfn)
    except PilotError as exc:
        raise JobDefinitionError(exc.code, exc.diag) from None


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One input or output file of a job, as the per-file getJob fields describe it."""

    lfn: str
    scope: str = ""
    guid: str = ""
    fsize: int | None = None
    checksum: str = ""
    dataset: str = ""
    ddm_endpoint: str = ""
    destination: str = ""  # destinationDblock (outputs)
    token: str = ""  # destinationDBlockToken (outputs)


def _column(values: list[str], index: int) -> str:
    if index < len(values) and not is_null(values[index]):
        return values[index]
    return ""


def _aligned(wire: Mapping[str, Any], names_key: str, keys: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The file names of ``names_key`` (each a plain name) and each per-file list, checked to have the same length."""
    names = [n for n in _split(wire, names_key, ErrorCode.BADOUTPUTFILENAME) if n]
    for name in names:
        _check_name(name)
    columns = {}
    for key in keys:
        column = _split(wire, key)
        if names and column and not all(is_null(v) for v in column) and len(column) != len(names):
            raise JobDefinitionError(
                ErrorCode.NOTSAMELENGTH,
                f"{key} has {len(column)} entries but {names_key} has {len(names)}")
        columns[key] = column
    return names, columns


def _parse_inputs(wire: Mapping[str, Any]) -> tuple[FileSpec, ...]:
    names, cols = _aligned(wire, "inFiles", ["GUID", "fsize", "checksum", "scopeIn", "realDatasetsIn",
                                             "ddmEndPointIn"])
    files = []
    for i, lfn in enumerate(names):
        size_text = _column(cols["fsize"], i)
        fsize = parse_int(size_text, f"fsize of input {show_value(lfn)}", INT_BOUNDS["fsize"]) if size_text else None
        files.append(FileSpec(lfn=lfn, guid=_column(cols["GUID"], i), fsize=fsize,
                              checksum=_column(cols["checksum"], i), scope=_column(cols["scopeIn"], i),
                              dataset=_column(cols["realDatasetsIn"], i),
                              ddm_endpoint=_column(cols["ddmEndPointIn"], i)))
    return tuple(files)


def _parse_outputs(wire: Mapping[str, Any], log_lfn: str) -> tuple[FileSpec, ...]:
    names, cols = _aligned(wire, "outFiles", ["realDatasets", "ddmEndPointOut", "destinationDblock",
                                              "destinationDBlockToken"])
    scope_out = _text_field(wire, "scopeOut").split(",")[0]
    scope_log = _text_field(wire, "scopeLog")
    log_guid = _text_field(wire, "logGUID")
    files = []
    for i, lfn in enumerate(names):
        files.append(FileSpec(lfn=lfn, scope=scope_log if lfn == log_lfn else scope_out,
                              guid=log_guid if lfn == log_lfn else "",
                              dataset=_column(cols["realDatasets"], i),
                              ddm_endpoint=_column(cols["ddmEndPointOut"], i),
                              destination=_column(cols["destinationDblock"], i),
                              token=_column(cols["destinationDBlockToken"], i)))
    return tuple(files)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A PanDA job definition, parsed once at the boundary."""

    panda_id: int
    transformation: str
    job_pars: str
    core_count: int
    min_ram_count: int
    max_walltime: int | None
    attempt_nr: int
    task_id: int | None
    jobset_id: int | None
    looping_check: bool
    event_service: bool
    allow_no_output: bool
    debug: bool
    inputs: tuple[FileSpec, ...]
    outputs: tuple[FileSpec, ...]
    log_file: FileSpec | None
    clone_job: str  # '' or one of CLONE_MODES
    wire: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> JobSpec:
        """Parse a getJob dict; raise JobDefinitionError naming the bad field (and nothing else, for any input)."""
        if not isinstance(wire, Mapping):
            raise JobDefinitionError(ErrorCode.NOTDEFINED, f"job definition is not an object: {show_value(wire)}")
        panda_id = _int_field(wire, "PandaID", None)
        if panda_id is None:
            raise JobDefinitionError(ErrorCode.NOTDEFINED, "job definition has no PandaID")
        _check_encodable(wire, "job definition")
        transformation = _text_field(wire, "transformation")
        if not transformation.strip():
            raise JobDefinitionError(ErrorCode.TRANSFORMNOTFOUND, f"job {panda_id} has no transformation")
        log_lfn = _text_field(wire, "logFile", ErrorCode.BADOUTPUTFILENAME)
        if log_lfn:
            _check_name(log_lfn)
        outputs = _parse_outputs(wire, log_lfn)
        log = next((f for f in outputs if f.lfn == log_lfn), None)
        if log is None and log_lfn:
            log = FileSpec(lfn=log_lfn, scope=_text_field(wire, "scopeLog"), guid=_text_field(wire, "logGUID"))
        return cls(
            panda_id=panda_id,
            transformation=transformation,
            job_pars=_text_field(wire, "jobPars"),
            core_count=max(1, _int_field(wire, "coreCount", 1) or 1),
            min_ram_count=_int_field(wire, "minRamCount", 0) or 0,
            max_walltime=_int_field(wire, "maxWalltime", None),
            attempt_nr=_int_field(wire, "attemptNr", 0) or 0,
            task_id=_int_field(wire, "taskID", None),
            jobset_id=_int_field(wire, "jobsetID", None),
            looping_check=_flag(wire, "loopingCheck", True),
            event_service=_flag(wire, "eventService", False),
            allow_no_output=_flag(wire, "allowNoOutput", False),
            debug=_flag(wire, "debug", False),
            inputs=_parse_inputs(wire),
            outputs=tuple(f for f in outputs if f.lfn != log_lfn),
            log_file=log,
            clone_job=_clone_mode(wire),
            wire=MappingProxyType(dict(wire)),
        )

    def to_wire(self) -> dict[str, Any]:
        """The job definition exactly as the server sent it."""
        return dict(self.wire)


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
        payload as JSON, so they get the same checks as a job definition's fields.
        """
        if not isinstance(wire, Mapping):
            raise JobDefinitionError(ErrorCode.NOTDEFINED, f"event range is not an object: {show_value(wire)}")
        range_id = range_id_of(wire)
        if not range_id:
            raise JobDefinitionError(ErrorCode.NOTDEFINED,
                                     f"event range without eventRangeID: {show_value(wire.get('eventRangeID'))}")
        what = f"event range {show_value(range_id)}"
        checked_text(range_id, what)
        _check_encodable(wire, what)
        start = parse_int(wire.get("startEvent"), f"startEvent of {what}", INT_BOUNDS["startEvent"])
        last = parse_int(wire.get("lastEvent"), f"lastEvent of {what}", INT_BOUNDS["lastEvent"])
        if last < start:
            raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"{what} ends ({last}) before it starts ({start})")
        texts = [_text(wire.get(key), f"{key} of {what}") for key in ("LFN", "GUID", "scope")]
        extra = {k: v for k, v in wire.items() if k not in cls._WIRE}
        return cls(range_id, start, last, *texts, MappingProxyType(extra))

    def to_wire(self) -> dict[str, Any]:
        out = {wire: getattr(self, attr) for wire, attr in self._WIRE.items()}
        out.update(self.extra)
        return out

    @property
    def n_events(self) -> int:
        return self.last_event - self.start_event + 1


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


# summary.json / run-record key of JobRecord.cpu_seconds: not a PanDA field, never sent on the wire.
CPU_SECONDS_KEY = "cpuSeconds"

# JobRecord attribute -> updateJob field name (legacy API names; the v1 client maps them on).
JOB_RECORD_WIRE_NAMES: dict[str, str] = {
    "panda_id": "jobId",
    "state": "state",
    "attempt_nr": "attemptNr",
    "pilot_error_code": "pilotErrorCode",
    "pilot_error_diag": "pilotErrorDiag",
    "trans_exit_code": "transExitCode",
    "exe_error_code": "exeErrorCode",
    "exe_error_diag": "exeErrorDiag",
    "cpu_consumption_time": "cpuConsumptionTime",
    "cpu_consumption_unit": "cpuConsumptionUnit",
    "cpu_conversion_factor": "cpuConversionFactor",
    "core_count": "coreCount",
    "max_rss": "maxRSS",
    "max_pss": "maxPSS",
    "max_vmem": "maxVMEM",
    "max_swap": "maxSWAP",
    "avg_rss": "avgRSS",
    "avg_pss": "avgPSS",
    "avg_vmem": "avgVMEM",
    "avg_swap": "avgSWAP",
    "tot_rchar": "totRCHAR",
    "tot_wchar": "totWCHAR",
    "tot_rbytes": "totRBYTES",
    "tot_wbytes": "totWBYTES",
    "n_events": "nEvents",
    "n_input_files": "nInputFiles",
    "pilot_timing": "pilotTiming",
    "job_metrics": "jobMetrics",
    "start_time": "startTime",
    "end_time": "endTime",
    "node": "node",
    "site_name": "siteName",
    "output_report": "xml",
    "meta_data": "metaData",
    "stdout": "stdout",
}


@dataclass
class JobRecord:
    """Everything the pilot reports about one job: heartbeats and the final update.

    Mutable while the job runs (the job life fills it in); ``to_wire()`` gives the updateJob
    fields with PanDA names, and ``to_summary()`` the same plus the rank, for summary.json.
    """

    panda_id: int
    state: JobState = JobState.STARTING
    rank: int = 0
    attempt_nr: int | None = None  # None (left out of updates) until the job's definition parsed: never invented
    pilot_error_code: int = 0
    pilot_error_diag: str = ""
    trans_exit_code: int | None = None
    exe_error_code: int = 0
    exe_error_diag: str = ""
    cpu_consumption_time: int = 0
    # the same CPU time unrounded (s), for summary.json and the run record only: PanDA's field is whole
    # seconds, which makes every job under 0.5 s look as if it used no CPU at all
    cpu_seconds: float = 0.0
    cpu_consumption_unit: str = "s"
    cpu_conversion_factor: float = 1.0
    core_count: int = 1
    max_rss: int = 0
    max_pss: int = 0
    max_vmem: int = 0
    max_swap: int = 0
    avg_rss: int = 0
    avg_pss: int = 0
    avg_vmem: int = 0
    avg_swap: int = 0
    tot_rchar: int = 0
    tot_wchar: int = 0
    tot_rbytes: int = 0
    tot_wbytes: int = 0
    n_events: int = 0
    n_input_files: int = 0
    pilot_timing: str = ""
    job_metrics: str = ""
    start_time: str = ""
    end_time: str = ""
    node: str = ""
    site_name: str = ""
    output_report: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta_data: str = ""
    stdout: str = ""

    def fail(self, code: ErrorCode | int, diag: str) -> None:
        """Mark the job failed; the first error wins, as in pilot3."""
        self.state = JobState.FAILED
        if not self.pilot_error_code:
            self.pilot_error_code = int(code)
            self.pilot_error_diag = diag[:500]

    @property
    def failed(self) -> bool:
        return self.state == JobState.FAILED

    def to_wire(self) -> dict[str, Any]:
        """updateJob fields (legacy names); empty optional fields are left out."""
        out: dict[str, Any] = {}
        for attr, wire_name in JOB_RECORD_WIRE_NAMES.items():
            value = getattr(self, attr)
            if value in ("", None, {}) and attr not in ("state",):
                continue
            if attr == "output_report":
                value = json.dumps(value)
            out[wire_name] = str(value) if attr == "state" else value
        return out

    def to_summary(self) -> dict[str, Any]:
        """The record for summary.json: PanDA field names, output report as an object, plus the rank."""
        out = self.to_wire()
        if self.output_report:
            out["xml"] = self.output_report
        out["rank"] = self.rank
        out[CPU_SECONDS_KEY] = round(self.cpu_seconds, 6)
        return out

    @classmethod
    def from_summary(cls, data: Mapping[str, Any]) -> JobRecord:
        """Rebuild a record from its to_summary()/to_wire() form (used across MPI and by the journal)."""
        by_wire = {wire: attr for attr, wire in JOB_RECORD_WIRE_NAMES.items()}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            attr = by_wire.get(key)
            if attr is None:
                continue
            if attr == "output_report" and isinstance(value, str):
                value = json.loads(value)
            kwargs[attr] = JobState(value) if attr == "state" else value
        record = cls(**kwargs)
        record.rank = int(data.get("rank", 0))
        record.cpu_seconds = float(data.get(CPU_SECONDS_KEY, 0.0) or 0.0)
        return record
