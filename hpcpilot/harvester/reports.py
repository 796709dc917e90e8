"""A job's reports in the shapes Harvester reads: worker attributes, ``jobReport.json``, and the job's outputs
and log as event_status entries (what Harvester's stager transfers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcpilot.harvester.files import write_json_atomically, write_text_atomically
from hpcpilot.records import JobRecord

PUBLISHED_LEFT_OUT = ("xml",)
"""updateJob fields not published in worker_attributes.json: outputs go to Harvester as event_status entries."""


def worker_attributes(record: JobRecord) -> dict[str, Any]:
    """The job's updateJob fields as published in worker_attributes.json, with its ``jobStatus``."""
    attributes = {k: v for k, v in record.to_wire().items() if k not in PUBLISHED_LEFT_OUT}
    attributes["jobStatus"] = str(record.state)
    return attributes


def write_job_report(path: Path, record: JobRecord) -> None:
    """The payload's own jobReport.json when it wrote one, else a minimal one from the record."""
    if record.meta_data:
        write_text_atomically(path, record.meta_data)
        return
    outputs = [{"subFiles": [{"name": lfn, "file_guid": entry.get("guid", ""),
                              "file_size": entry.get("fsize", 0)}]}
               for lfn, entry in record.output_report.items()]
    write_json_atomically(path, {
        "exitCode": record.exe_error_code or (0 if not record.failed else record.pilot_error_code),
        "exitMsg": record.exe_error_diag or record.pilot_error_diag or "OK",
        "files": {"output": outputs}})


def output_entries(record: JobRecord, log_file: str | None) -> list[dict[str, Any]]:
    """The job's outputs and log (``log_file``) as event_status entries."""
    return [{"eventStatus": "finished", "path": entry.get("surl", ""),
             "type": "log" if lfn == log_file else "output", "fsize": entry.get("fsize", 0),
             "chksum": entry.get("adler32", ""), "guid": entry.get("guid", "")}
            for lfn, entry in record.output_report.items()]
