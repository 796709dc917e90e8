"""``JobSpec``: a PanDA job definition (the getJob dict), parsed once at the boundary, and its files.

Per-file fields are comma-separated strings aligned by index; unset columns are the literal ``"NULL"``.  The
original dict is kept whole (``wire``) so ``to_wire()`` gives back exactly what the server sent, unknown keys
included, with no re-encoding ambiguity between the JSON and the URL-encoded forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from hpcpilot.errors import ErrorCode, JobDefinitionError, PilotError
from hpcpilot.records.fields import (
    INT_BOUNDS,
    check_encodable,
    flag_field,
    int_field,
    is_null,
    parse_int,
    show_value,
    split_field,
    text_field,
)
from hpcpilot.stageio.files import check_lfn

CLONE_RUNONCE, CLONE_STOREONCE = "runonce", "storeonce"
CLONE_MODES = (CLONE_RUNONCE, CLONE_STOREONCE)
"""cloneJob values (panda-wire C.5): the clone asks the server before its payload / its stage-out (hpcpilot.clones)."""


def _check_name(lfn: str) -> None:
    """A file name of the definition is a plain name of printable characters (``stageio.files.check_lfn``)."""
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
    names = [n for n in split_field(wire, names_key, ErrorCode.BADOUTPUTFILENAME) if n]
    for name in names:
        _check_name(name)
    columns = {}
    for key in keys:
        column = split_field(wire, key)
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
    scope_out = text_field(wire, "scopeOut").split(",")[0]
    scope_log = text_field(wire, "scopeLog")
    log_guid = text_field(wire, "logGUID")
    files = []
    for i, lfn in enumerate(names):
        files.append(FileSpec(lfn=lfn, scope=scope_log if lfn == log_lfn else scope_out,
                              guid=log_guid if lfn == log_lfn else "",
                              dataset=_column(cols["realDatasets"], i),
                              ddm_endpoint=_column(cols["ddmEndPointOut"], i),
                              destination=_column(cols["destinationDblock"], i),
                              token=_column(cols["destinationDBlockToken"], i)))
    return tuple(files)


def _clone_mode(wire: Mapping[str, Any]) -> str:
    """cloneJob: '' (not a clone) or one of CLONE_MODES; any other value would leave the clone's fate
    unknown (run twice, or never), so the job is refused."""
    mode = text_field(wire, "cloneJob").strip()
    if mode and mode not in CLONE_MODES:
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                 f"field cloneJob is neither {' nor '.join(CLONE_MODES)}: {show_value(mode)}")
    return mode


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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (to the worker rank that runs it) as the parsed fields plus the definition as a plain dict,
        since a mappingproxy does not pickle: the receiver rebuilds the JobSpec without parsing it again."""
        return _rebuild, (tuple(getattr(self, name) for name in _PARSED_FIELDS), dict(self.wire))

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> JobSpec:
        """Parse a getJob dict; raise JobDefinitionError naming the bad field (and nothing else, for any input)."""
        if not isinstance(wire, Mapping):
            raise JobDefinitionError(ErrorCode.NOTDEFINED, f"job definition is not an object: {show_value(wire)}")
        panda_id = int_field(wire, "PandaID", None)
        if panda_id is None:
            raise JobDefinitionError(ErrorCode.NOTDEFINED, "job definition has no PandaID")
        check_encodable(wire, "job definition")
        transformation = text_field(wire, "transformation")
        if not transformation.strip():
            raise JobDefinitionError(ErrorCode.TRANSFORMNOTFOUND, f"job {panda_id} has no transformation")
        log_lfn = text_field(wire, "logFile", ErrorCode.BADOUTPUTFILENAME)
        if log_lfn:
            _check_name(log_lfn)
        outputs = _parse_outputs(wire, log_lfn)
        log = next((f for f in outputs if f.lfn == log_lfn), None)
        if log is None and log_lfn:
            log = FileSpec(lfn=log_lfn, scope=text_field(wire, "scopeLog"), guid=text_field(wire, "logGUID"))
        return cls(
            panda_id=panda_id,
            transformation=transformation,
            job_pars=text_field(wire, "jobPars"),
            core_count=max(1, int_field(wire, "coreCount", 1) or 1),
            min_ram_count=int_field(wire, "minRamCount", 0) or 0,
            max_walltime=int_field(wire, "maxWalltime", None),
            attempt_nr=int_field(wire, "attemptNr", 0) or 0,
            task_id=int_field(wire, "taskID", None),
            jobset_id=int_field(wire, "jobsetID", None),
            looping_check=flag_field(wire, "loopingCheck", True),
            event_service=flag_field(wire, "eventService", False),
            allow_no_output=flag_field(wire, "allowNoOutput", False),
            debug=flag_field(wire, "debug", False),
            inputs=_parse_inputs(wire),
            outputs=tuple(f for f in outputs if f.lfn != log_lfn),
            log_file=log,
            clone_job=_clone_mode(wire),
            wire=MappingProxyType(dict(wire)),
        )

    def to_wire(self) -> dict[str, Any]:
        """The job definition exactly as the server sent it."""
        return dict(self.wire)


_PARSED_FIELDS = tuple(f.name for f in fields(JobSpec) if f.name != "wire")


def _rebuild(values: tuple[Any, ...], wire: dict[str, Any]) -> JobSpec:
    return JobSpec(*values, wire=MappingProxyType(wire))
