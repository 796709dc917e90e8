"""A job's reports in the shapes Harvester reads: worker attributes, ``jobReport.json``, and the job's outputs
and log as event_status entries (what Harvester's stager transfers)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcpilot.harvester.files import write_json_atomically, write_text_atomically
from hpcpilot.panda.gpumap import gpu_map_fields
from hpcpilot.panda.workernode import worker_node_fields
from hpcpilot.records import JobRecord

PUBLISHED_LEFT_OUT = ("xml",)
"""updateJob fields not published in worker_attributes.json: outputs go to Harvester as event_status entries."""


def worker_attributes(record: JobRecord) -> dict[str, Any]:
    """The job's updateJob fields as published in worker_attributes.json, with its ``jobStatus``."""
    attributes = {k: v for k, v in record.to_wire().items() if k not in PUBLISHED_LEFT_OUT}
    attributes["jobStatus"] = str(record.state)
    return attributes


def write_job_report(path: Path, record: JobRecord, node_maps: Mapping[str, Any] | None = None) -> None:
    """The payload's own jobReport.json when it wrote one, else a minimal one from the record; with the maps of
    the node the job ran on (``worker_node``, ``worker_node_gpus``) merged in as pilot3 merges them, where the
    server's Adder reads them into its worker-node tables.  A payload report that is not a JSON object is kept
    as it is (nothing can be merged into it)."""
    if record.meta_data:
        try:
            report = json.loads(record.meta_data)
        except ValueError:
            report = None
        if not isinstance(report, dict) or not node_maps:
            write_text_atomically(path, record.meta_data)
            return
        write_json_atomically(path, {**report, **node_maps})
        return
    outputs = [{"subFiles": [{"name": lfn, "file_guid": entry.get("guid", ""),
                              "file_size": entry.get("fsize", 0)}]}
               for lfn, entry in record.output_report.items()]
    write_json_atomically(path, {
        "exitCode": record.exe_error_code or (0 if not record.failed else record.pilot_error_code),
        "exitMsg": record.exe_error_diag or record.pilot_error_diag or "OK",
        "files": {"output": outputs}, **(node_maps or {})})


def node_maps(node: Mapping[str, Any], site: str, queue: str) -> dict[str, Any]:
    """pilot3's job-report keys for a node: ``worker_node`` (its worker-node map) and, on a GPU node,
    ``worker_node_gpus`` -- one dict, as the Adder reads it (the node's most numerous GPU model)."""
    maps: dict[str, Any] = {"worker_node": worker_node_fields(node, site, queue)}
    gpus = sorted(gpu_map_fields(node, site), key=lambda m: -int(m.get("count", 0)))
    if gpus:
        maps["worker_node_gpus"] = gpus[0]
    return maps


def output_entries(record: JobRecord, log_file: str | None) -> list[dict[str, Any]]:
    """The job's outputs and log (``log_file``) as event_status entries."""
    return [{"eventStatus": "finished", "path": entry.get("surl", ""),
             "type": "log" if lfn == log_file else "output", "fsize": entry.get("fsize", 0),
             "chksum": entry.get("adler32", ""), "guid": entry.get("guid", "")}
            for lfn, entry in record.output_report.items()]
