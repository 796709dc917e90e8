"""A Harvester access point as the job source: jobs in from files, reports out to files.

File names and shapes are those of Harvester's shared-file messenger (``payload_interaction``
configuration).  Harvester gives a worker that holds several jobs one sub-directory per
PandaID for the per-job files; with a single job the access point itself is used.  hpcpilot
follows that rule: ``worker_attributes.json`` and ``jobReport.json`` go to
``DIR/<PandaID>/`` when HPCJobs.json holds more than one job, else to ``DIR/``.
``event_status.dump.json`` and ``worker_heartbeat.json`` are per worker, in ``DIR/``.
Every file is written atomically (temporary file, then rename) so Harvester never reads
half a file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from hpcpilot.errors import ConfigError
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import Command, OutputBundle

log = logging.getLogger(__name__)

JOBS_FILE = "HPCJobs.json"
EVENT_RANGES_FILE = "JobsEventRanges.json"
WORKER_ATTRIBUTES_FILE = "worker_attributes.json"
JOB_REPORT_FILE = "jobReport.json"
EVENT_STATUS_FILE = "event_status.dump.json"
HEARTBEAT_FILE = "worker_heartbeat.json"
HEARTBEAT_INTERVAL = 60.0


def write_json_atomically(path: Path, data: Any, compact: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=None if compact else 1, default=str))
    os.replace(tmp, path)


def _load_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no {what} in the access point") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {what} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object {{PandaID: job}}, got {type(data).__name__}")
    return data


def _job_dict(value: Any) -> Any:
    """A job as a dict; Harvester's 'cgi' format gives it URL-encoded."""
    if isinstance(value, str):
        return dict(parse_qsl(value, keep_blank_values=True))
    return value


class HarvesterSource:
    """Jobs from ``HPCJobs.json``; reports to the files Harvester reads."""

    def __init__(self, access_point: Path) -> None:
        self.dir = access_point
        if not access_point.is_dir():
            raise ConfigError(f"{access_point}: the Harvester access point is not a directory")
        jobs = _load_json_object(access_point / JOBS_FILE, JOBS_FILE)
        self.queue: list[Any] = [_job_dict(v) for _k, v in sorted(jobs.items(), key=lambda kv: str(kv[0]))]
        for key, job in zip(sorted(jobs, key=str), self.queue, strict=True):
            if isinstance(job, dict) and "PandaID" not in job:
                job["PandaID"] = key  # Harvester keys the file by PandaID; the dict may omit it
        self.multi_job = len(self.queue) > 1
        ranges_path = access_point / EVENT_RANGES_FILE
        self.ranges: dict[str, list[Any]] = (
            {str(k): list(v) for k, v in _load_json_object(ranges_path, EVENT_RANGES_FILE).items()}
            if ranges_path.exists() else {})
        self.event_status: dict[str, list[dict[str, Any]]] = {}
        self.log_files: dict[str, str] = {}
        self.last_heartbeat = 0.0

    # ---- JobSource ----------------------------------------------------------------------

    def fetch_jobs(self, n: int) -> list[Mapping[str, Any]]:
        taken, self.queue = self.queue[:n], self.queue[n:]
        for job in taken:
            if isinstance(job, dict):
                self.log_files[str(job.get("PandaID"))] = str(job.get("logFile", ""))
        return taken

    def abandon(self) -> list[Mapping[str, Any]]:
        return self.fetch_jobs(len(self.queue))

    def update_job(self, record: JobRecord, final: bool) -> None:
        job_dir = self.job_dir(record.panda_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        attributes = record.to_wire()
        attributes["jobStatus"] = str(record.state)
        write_json_atomically(job_dir / WORKER_ATTRIBUTES_FILE, attributes)
        if final:
            self.write_job_report(job_dir, record)
            self.add_output_entries(record)

    def fetch_event_ranges(self, job: JobSpec, n: int) -> list[Mapping[str, Any]]:
        pending = self.ranges.get(str(job.panda_id), [])
        taken, self.ranges[str(job.panda_id)] = pending[:n], pending[n:]
        return taken

    def update_event_ranges(self, job: JobSpec, updates: Sequence[EventRangeUpdate],
                            bundle: OutputBundle | None = None) -> None:
        entries = self.event_status.setdefault(str(job.panda_id), [])
        for update in updates:
            entry: dict[str, Any] = {"eventRangeID": update.event_range_id, "eventStatus": str(update.status)}
            if bundle is not None:
                entry.update({"path": bundle.path, "type": "zip_output", "fsize": bundle.fsize,
                              "chksum": bundle.adler32})
            elif update.output:
                entry.update({"path": update.output, "type": "es_output", "fsize": update.fsize,
                              "chksum": update.adler32})
            if update.error_code:
                entry["errorCode"] = update.error_code
            entries.append(entry)
        write_json_atomically(self.dir / EVENT_STATUS_FILE, self.event_status, compact=True)

    def poll(self, now: float) -> list[Command]:
        if now - self.last_heartbeat >= HEARTBEAT_INTERVAL:
            self.write_heartbeat(now)
        return []

    def close(self) -> None:
        self.write_heartbeat(time.time())

    # ---- files --------------------------------------------------------------------------

    def job_dir(self, panda_id: int) -> Path:
        return self.dir / str(int(panda_id)) if self.multi_job else self.dir

    def write_heartbeat(self, now: float) -> None:
        self.last_heartbeat = now
        write_json_atomically(self.dir / HEARTBEAT_FILE, {"time": now, "pid": os.getpid()})

    @staticmethod
    def write_job_report(job_dir: Path, record: JobRecord) -> None:
        """The payload's own jobReport.json when it wrote one, else a minimal one from the record."""
        if record.meta_data:
            tmp = job_dir / f".{JOB_REPORT_FILE}.tmp"
            tmp.write_text(record.meta_data)
            os.replace(tmp, job_dir / JOB_REPORT_FILE)
            return
        outputs = [{"subFiles": [{"name": lfn, "file_guid": entry.get("guid", ""),
                                  "file_size": entry.get("fsize", 0)}]}
                   for lfn, entry in record.output_report.items()]
        write_json_atomically(job_dir / JOB_REPORT_FILE, {
            "exitCode": record.exe_error_code or (0 if not record.failed else record.pilot_error_code),
            "exitMsg": record.exe_error_diag or record.pilot_error_diag or "OK",
            "files": {"output": outputs}})

    def add_output_entries(self, record: JobRecord) -> None:
        if not record.output_report:
            return
        entries = self.event_status.setdefault(str(record.panda_id), [])
        log_file = self.log_files.get(str(record.panda_id))
        for lfn, entry in record.output_report.items():
            entries.append({"eventStatus": "finished", "path": entry.get("surl", ""),
                            "type": "log" if lfn == log_file else "output", "fsize": entry.get("fsize", 0),
                            "chksum": entry.get("adler32", ""), "guid": entry.get("guid", "")})
        write_json_atomically(self.dir / EVENT_STATUS_FILE, self.event_status, compact=True)
