"""Typed records for PanDA job definitions, event ranges and final job records.

A job definition arrives as the getJob dict the server sends: per-file fields are
comma-separated strings aligned by index, unset columns are the literal ``"NULL"``, and in
URL-encoded mode every number is a string.  It is parsed once, into a ``JobSpec``.

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

One module per record, each importable from here:

* ``fields``: the total parsers of single wire values (numbers, text, flags, per-file lists);
* ``jobspec``: ``JobSpec`` and its ``FileSpec`` files, the cloneJob modes;
* ``eventrange``: ``EventRange`` and ``EventRangeUpdate``;
* ``outcomes``: ``RangeOutcomes``, a batch of outcomes as columns;
* ``jobrecord``: ``JobRecord``, the updateJob fields and the summary.json row.
"""

from hpcpilot.records.eventrange import EventRange, EventRangeUpdate
from hpcpilot.records.fields import (
    INT_BOUNDS,
    MAX_BIGINT,
    NULL_VALUES,
    SHOW_CHARS,
    attempt_nr_of,
    checked_text,
    is_null,
    panda_id_of,
    parse_int,
    range_id_of,
    show_value,
)
from hpcpilot.records.jobrecord import CPU_SECONDS_KEY, JOB_RECORD_WIRE_NAMES, JobRecord
from hpcpilot.records.jobspec import CLONE_MODES, CLONE_RUNONCE, CLONE_STOREONCE, FileSpec, JobSpec
from hpcpilot.records.outcomes import RangeOutcomes
from hpcpilot.stageio.files import MAX_LFN_LENGTH  # the file-name rule's limit, defined with that rule

__all__ = [
    "CLONE_MODES",
    "CLONE_RUNONCE",
    "CLONE_STOREONCE",
    "CPU_SECONDS_KEY",
    "INT_BOUNDS",
    "JOB_RECORD_WIRE_NAMES",
    "MAX_BIGINT",
    "MAX_LFN_LENGTH",
    "NULL_VALUES",
    "SHOW_CHARS",
    "EventRange",
    "EventRangeUpdate",
    "FileSpec",
    "JobRecord",
    "JobSpec",
    "RangeOutcomes",
    "attempt_nr_of",
    "checked_text",
    "is_null",
    "panda_id_of",
    "parse_int",
    "range_id_of",
    "show_value",
]
