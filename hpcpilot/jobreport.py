"""Reading what a payload leaves behind: its jobReport.json, and the debug-mode log tail."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hpcpilot.records import JobRecord

log = logging.getLogger(__name__)

MAX_JOB_REPORT_BYTES = 16 * 1024 * 1024


def apply_job_report(path: Path, record: JobRecord) -> dict[str, str]:
    """Copy a payload's jobReport.json into the record; return the output GUIDs it names.

    exitCode/exitMsg become exeErrorCode/exeErrorDiag (when not OK), processed events or the
    sum of the outputs' nentries become nEvents, and the whole text goes to metaData.  A
    missing or malformed report is not an error of the job: the pilot falls back to its own
    measurements.
    """
    try:
        if path.stat().st_size > MAX_JOB_REPORT_BYTES:
            log.warning("%s is larger than %d bytes; ignored", path, MAX_JOB_REPORT_BYTES)
            return {}
        text = path.read_text(errors="replace")
        report = json.loads(text)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("job report %s unreadable: %s", path, str(exc).splitlines()[0])
        return {}
    if not isinstance(report, dict):
        log.warning("job report %s is not a JSON object; ignored", path)
        return {}
    record.meta_data = text
    _apply_exit(report, record)
    guids, n_events = _outputs(report)
    processed = _dig(report, "resource", "transform", "processedEvents")
    record.n_events = int(processed) if isinstance(processed, int) and processed >= 0 else n_events
    return guids


def _apply_exit(report: dict[str, Any], record: JobRecord) -> None:
    code, message = report.get("exitCode", 0), report.get("exitMsg", "")
    if isinstance(code, int) and code != 0:
        record.exe_error_code = code
        record.exe_error_diag = str(message)[:500]


def _outputs(report: dict[str, Any]) -> tuple[dict[str, str], int]:
    guids: dict[str, str] = {}
    n_events = 0
    outputs = _dig(report, "files", "output")
    for entry in outputs if isinstance(outputs, list) else []:
        for sub in entry.get("subFiles", []) if isinstance(entry, dict) else []:
            if not isinstance(sub, dict):
                continue
            if isinstance(sub.get("name"), str) and isinstance(sub.get("file_guid"), str):
                guids[sub["name"]] = sub["file_guid"]
            if isinstance(sub.get("nentries"), int):
                n_events += sub["nentries"]
    return guids, n_events


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def tail_of_newest_text_file(workdir: Path, limit: int) -> str:
    """The last ``limit`` characters of the most recently modified non-binary file (debug mode)."""
    newest: tuple[float, Path] | None = None
    for root, _dirs, names in os.walk(workdir):
        for name in names:
            path = Path(root) / name
            try:
                mtime = path.lstat().st_mtime
            except OSError:
                continue
            if path.is_file() and not path.is_symlink() and (newest is None or mtime > newest[0]) \
                    and _is_text(path):
                newest = (mtime, path)
    if newest is None:
        return ""
    with open(newest[1], "rb") as handle:
        handle.seek(max(0, newest[1].stat().st_size - limit))
        return handle.read(limit).decode(errors="replace")


def _is_text(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return b"\0" not in handle.read(1024)
    except OSError:
        return False


NOT_FOUND_TAIL_BYTES = 64 * 1024
COMMAND_NOT_FOUND = 127  # the shell's exit code for a command it cannot find


def not_found_line(stderr: Path) -> str:
    """The last 'not found' line of a payload's stderr (``sh: 1: athena.py: not found``), '' if none.

    A payload that exits 127 says only its code; the shell's own line names what was missing, which is
    what pilot3 puts in the diagnostic.  Only the file's tail is read: stderr may be large.
    """
    try:
        with stderr.open("rb") as handle:
            handle.seek(max(0, stderr.stat().st_size - NOT_FOUND_TAIL_BYTES))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    found = [line.strip() for line in lines if "not found" in line.lower() or "no such file" in line.lower()]
    return found[-1][:200] if found else ""
