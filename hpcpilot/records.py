"""Typed records for PanDA job definitions, event ranges and final job records.

A job definition arrives as the getJob dict the server sends: per-file fields are
comma-separated strings aligned by index, unset columns are the literal ``"NULL"``, and in
URL-encoded mode every number is a string.  It is parsed once, here, into a ``JobSpec``.
The original dict is kept whole (``wire``) so ``to_wire()`` gives back exactly what the
server sent, unknown keys included, with no re-encoding ambiguity between the JSON and the
URL-encoded forms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hpcpilot.errors import ErrorCode, JobDefinitionError
from hpcpilot.states import EventRangeStatus, JobState

NULL_VALUES = frozenset({"NULL", "None", "null", ""})
MAX_LFN_LENGTH = 255


def is_null(value: Any) -> bool:
    """True for the server's spellings of 'no value'."""
    return value is None or (isinstance(value, str) and value.strip() in NULL_VALUES)


def panda_id_of(wire: Any) -> int:
    """The PandaID of a job definition that may not parse (0 when it has none), for reporting it."""
    try:
        return int(wire["PandaID"])
    except (KeyError, TypeError, ValueError):
        return 0


def _int_field(wire: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = wire.get(key)
    if is_null(value):
        return default
    if isinstance(value, bool):
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"field {key} is not a number: {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                 f"field {key} is not a number: {str(value)[:60]!r}") from None


def _flag(wire: Mapping[str, Any], key: str, default: bool) -> bool:
    value = wire.get(key)
    if is_null(value):
        return default
    return str(value).strip().lower() in ("true", "1", "yes")


def _split(wire: Mapping[str, Any], key: str) -> list[str]:
    value = wire.get(key)
    if is_null(value):
        return []
    return [item.strip() for item in str(value).split(",")]


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


def _column(values: list[str], index: int) -> str:
    if index < len(values) and not is_null(values[index]):
        return values[index]
    return ""


def _aligned(wire: Mapping[str, Any], names_key: str, keys: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The file names of ``names_key`` and each per-file list, checked to have the same length."""
    names = [n for n in _split(wire, names_key) if n]
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
        try:
            fsize = int(size_text) if size_text else None
        except ValueError:
            raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                     f"fsize of input {lfn!r} is not a number: {size_text[:40]!r}") from None
        files.append(FileSpec(lfn=lfn, guid=_column(cols["GUID"], i), fsize=fsize,
                              checksum=_column(cols["checksum"], i), scope=_column(cols["scopeIn"], i),
                              dataset=_column(cols["realDatasetsIn"], i),
                              ddm_endpoint=_column(cols["ddmEndPointIn"], i)))
    return tuple(files)


def _parse_outputs(wire: Mapping[str, Any], log_lfn: str) -> tuple[FileSpec, ...]:
    names, cols = _aligned(wire, "outFiles", ["realDatasets", "ddmEndPointOut", "destinationDblock"])
    scope_out = "" if is_null(wire.get("scopeOut")) else str(wire["scopeOut"]).split(",")[0]
    scope_log = "" if is_null(wire.get("scopeLog")) else str(wire["scopeLog"])
    files = []
    for i, lfn in enumerate(names):
        files.append(FileSpec(lfn=lfn, scope=scope_log if lfn == log_lfn else scope_out,
                              guid=str(wire.get("logGUID", "")) if lfn == log_lfn else "",
                              dataset=_column(cols["realDatasets"], i),
                              ddm_endpoint=_column(cols["ddmEndPointOut"], i)))
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
    wire: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> JobSpec:
        """Parse a getJob dict; raise JobDefinitionError naming the bad field."""
        if not isinstance(wire, Mapping):
            raise JobDefinitionError(ErrorCode.NOTDEFINED, f"job definition is not an object: {type(wire).__name__}")
        panda_id = _int_field(wire, "PandaID", None)
        if panda_id is None:
            raise JobDefinitionError(ErrorCode.NOTDEFINED, "job definition has no PandaID")
        transformation = wire.get("transformation")
        if is_null(transformation):
            raise JobDefinitionError(ErrorCode.TRANSFORMNOTFOUND, f"job {panda_id} has no transformation")
        log_lfn = "" if is_null(wire.get("logFile")) else str(wire["logFile"])
        outputs = _parse_outputs(wire, log_lfn)
        log = next((f for f in outputs if f.lfn == log_lfn), None)
        if log is None and log_lfn:
            log = FileSpec(lfn=log_lfn, scope=str(wire.get("scopeLog", "") or ""), guid=str(wire.get("logGUID", "")))
        return cls(
            panda_id=panda_id,
            transformation=str(transformation),
            job_pars="" if is_null(wire.get("jobPars")) else str(wire["jobPars"]),
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
        if not isinstance(wire, Mapping) or is_null(wire.get("eventRangeID")):
            raise JobDefinitionError(ErrorCode.NOTDEFINED, f"event range without eventRangeID: {str(wire)[:80]}")
        try:
            start, last = int(wire["startEvent"]), int(wire["lastEvent"])
        except (KeyError, TypeError, ValueError):
            raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                     f"event range {wire['eventRangeID']} has bad startEvent/lastEvent") from None
        extra = {k: v for k, v in wire.items() if k not in cls._WIRE}
        return cls(str(wire["eventRangeID"]), start, last, str(wire.get("LFN", "")), str(wire.get("GUID", "")),
                   str(wire.get("scope", "")), MappingProxyType(extra))

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
    attempt_nr: int = 0
    pilot_error_code: int = 0
    pilot_error_diag: str = ""
    trans_exit_code: int | None = None
    exe_error_code: int = 0
    exe_error_diag: str = ""
    cpu_consumption_time: int = 0
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
        return record
