"""Which files a finished payload stages out (004 steps 11 and 12a): the jobReport's list, spill-over files.

The job definition names the outputs the server expects; the payload knows what it made.  Where the payload's
jobReport.json lists outputs (``files.output[].subFiles[].name``), that list is used:

* a listed name the definition names is that entry;
* a listed ``<name>._NNN`` is a **spill-over** file of the definition's ``<name>`` (a transform that splits a
  large output): it goes out with that entry's dataset, token, scope and destination;
* a listed name the definition does not know is not staged out (logged): the server could not register it;
* a definition entry neither listed nor spilled into is still looked for in the workdir.

Every chosen file must exist and be non-empty; a definition entry that is missing or empty is dropped when
the job allows no output (``allowNoOutput``), else it fails the job with MISSINGOUTPUTFILE (1165) or
ZEROFILESIZE (1191).  A listed name that is missing or empty is treated the same way.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.records import FileSpec, JobSpec
from hpcpilot.stageio import files

log = logging.getLogger(__name__)

SPILL_OVER = re.compile(r"(?P<base>.+)\._(?P<number>[0-9]{3,})")
"""``name._NNN``: a spill-over file of the definition's ``name``."""


@dataclass(frozen=True, slots=True)
class Output:
    """One file to stage out: where it is, its LFN, and the definition entry it belongs to."""

    path: Path
    lfn: str
    entry: FileSpec


def listed_outputs(report_text: str) -> list[str] | None:
    """The output names a jobReport lists, in order and once each; None when it lists none (or is unreadable)."""
    try:
        report = json.loads(report_text) if report_text else None
    except ValueError:
        return None
    entries = report.get("files", {}).get("output") if isinstance(report, dict) and \
        isinstance(report.get("files"), dict) else None
    names: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        for sub in entry.get("subFiles", []) if isinstance(entry, dict) else []:
            name = sub.get("name") if isinstance(sub, dict) else None
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names or None


def spill_over_of(name: str, defined: dict[str, FileSpec]) -> FileSpec | None:
    """The definition entry ``name`` spills over from (``<lfn>._NNN``), or None."""
    match = SPILL_OVER.fullmatch(name)
    return defined.get(match.group("base")) if match else None


def choose_outputs(spec: JobSpec, listed: list[str] | None, workdir: Path) -> list[Output]:
    """The outputs to stage out; raises PilotError (1165, 1191, 1371) as the module docstring says."""
    defined = {fspec.lfn: fspec for fspec in spec.outputs}
    chosen: list[Output] = []
    covered: set[str] = set()
    for name in listed or []:
        entry = defined.get(name) or spill_over_of(name, defined)
        if entry is None:
            log.warning("job %d: jobReport output %s is not in the job definition; not staged out",
                        spec.panda_id, files.show_name(name))
            continue
        files.check_lfn(name)
        covered.add(entry.lfn)
        path = _checked(workdir, name, allow_missing=spec.allow_no_output)
        if path is not None:
            chosen.append(Output(path, name, entry))
    for lfn, entry in defined.items():
        if lfn in covered:
            continue
        path = _checked(workdir, lfn, allow_missing=spec.allow_no_output)
        if path is not None:
            chosen.append(Output(path, lfn, entry))
    return chosen


def _checked(workdir: Path, lfn: str, allow_missing: bool) -> Path | None:
    """The output's path if it is a non-empty file; None if it is not and ``allow_missing``; else PilotError."""
    path = files.safe_join(workdir, lfn)
    if not path.exists():
        if allow_missing:
            return None
        raise PilotError(ErrorCode.MISSINGOUTPUTFILE, f"output {files.show_name(lfn)} was not produced")
    if path.stat().st_size == 0:
        if allow_missing:
            return None
        raise PilotError(ErrorCode.ZEROFILESIZE, f"output {files.show_name(lfn)} is empty")
    return path


def describe(report: dict[str, dict[str, Any]], chosen: list[Output]) -> None:
    """Add each output's dataset, scope, token and destination (its definition entry's) to the output report."""
    for output in chosen:
        entry = report.get(output.lfn)
        if entry is None:
            continue
        fields = {"dataset": output.entry.dataset, "scope": output.entry.scope,
                  "destinationDblock": output.entry.destination, "destinationDBlockToken": output.entry.token,
                  "ddmEndPoint": output.entry.ddm_endpoint}
        entry.update({key: value for key, value in fields.items() if value})
        if output.lfn != output.entry.lfn:
            entry["spillOverOf"] = output.entry.lfn
