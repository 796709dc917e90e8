"""PanDA wire formats: legacy <-> v1 field names and request bodies (replies: ``replies.py``).

Two dialects of the same four calls (getJob, updateJob, getEventRanges, updateEventRanges):

* legacy ``/server/panda/<method>``: form-encoded request (every value a string), reply either
  URL-encoded (``StatusCode=0&command=NULL``; lists are JSON strings inside it) or JSON when the
  client sends ``Accept: application/json`` -- and even then ``Returns``/``Command`` of
  updateEventRanges are JSON *strings* nested inside the JSON.  ``"NULL"`` means unset.
* v1 ``/api/v1/...``: JSON request with snake_case names, reply ``{success, message, data}``.

Everything in hpcpilot speaks legacy names (``JobRecord.to_wire()``); ``to_v1`` maps them on with
the single table ``LEGACY_TO_V1``.  ``WireError`` is the one-line error of anything on the wire
that hpcpilot cannot read or encode.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

GET_JOB = "getJob"
UPDATE_JOB = "updateJob"
GET_EVENT_RANGES = "getEventRanges"
UPDATE_EVENT_RANGES = "updateEventRanges"
METHODS = (GET_JOB, UPDATE_JOB, GET_EVENT_RANGES, UPDATE_EVENT_RANGES)
# Status look-ups, asked when an update's fate is unknown (panda-wire A.5): legacy method names.
GET_JOB_STATUS = "getStatus"
GET_EVENTS_STATUS = "get_events_status"
LOOKUPS = (GET_JOB_STATUS, GET_EVENTS_STATUS)

UPDATE_WORKER_NODE = "update_worker_node"
"""The worker-node map (v1 only, panda-server 0.8.1 and 1.0; B.10): not one of the legacy methods above."""
UPDATE_WORKER_NODE_PATH = "/api/v1/pilot/update_worker_node"
WORKER_NODE_TYPES: dict[str, type] = {
    "site": str, "host_name": str, "cpu_model": str, "panda_queue": str, "n_logical_cpus": int, "n_sockets": int,
    "cores_per_socket": int, "threads_per_core": int, "cpu_architecture": str, "cpu_architecture_level": str,
    "clock_speed": float, "total_memory": int, "total_local_disk": int}
"""What update_worker_node accepts on 0.8.1 and 1.0.4, with the type its signature declares: v1 refuses any other
field and a value not of that type (``isinstance``: an int ``clock_speed`` is refused, "must be of type float")."""
WORKER_NODE_FIELDS = frozenset(WORKER_NODE_TYPES)
UPDATE_WORKER_NODE_GPU = "update_worker_node_gpu"
"""The GPU map of a node: one call per GPU model of the node (the server keys a row on site, host, vendor, model)."""
UPDATE_WORKER_NODE_GPU_PATH = "/api/v1/pilot/update_worker_node_gpu"
WORKER_NODE_GPU_TYPES: dict[str, type] = {
    "site": str, "host_name": str, "vendor": str, "model": str, "count": int, "vram": int, "architecture": str,
    "framework": str, "framework_version": str, "driver_version": str}
"""What update_worker_node_gpu takes (pilot_api.py of 0.8.1 and 1.0.4 alike; ``site, host_name, vendor, model,
count`` required), typed as for update_worker_node."""
WORKER_NODE_GPU_FIELDS = frozenset(WORKER_NODE_GPU_TYPES)
WORKER_NODE_GPU_REQUIRED = ("site", "host_name", "vendor", "model", "count")
TARGET_ARCHITECTURE = "target_architecture"
"""acquire_jobs' GPU matching field: 1.0 only (0.8.1 refuses it as an unexpected keyword argument, A.7)."""
TARGET_GPU_KEYS = ("vendor", "model", "vram", "architecture", "framework_version", "driver_version")
"""What the server's ``hardware_matching.match_gpu_spec`` reads of each GPU of a target architecture."""

LEGACY_PREFIX = "/server/panda/"
V1_PATHS: dict[str, str] = {
    GET_JOB: "/api/v1/pilot/acquire_jobs",
    UPDATE_JOB: "/api/v1/pilot/update_job",
    GET_EVENT_RANGES: "/api/v1/event/acquire_event_ranges",
    UPDATE_EVENT_RANGES: "/api/v1/event/update_event_ranges",
    GET_JOB_STATUS: "/api/v1/pilot/get_job_status",
    GET_EVENTS_STATUS: "/api/v1/event/get_event_range_statuses",
}
V1_METHOD_BY_PATH = {path: method for method, path in V1_PATHS.items()}

STATUS_OK = 0
STATUS_TIMEOUT = 10
STATUS_NO_JOBS = 20
STATUS_FAILED = 30

NULL_STRINGS = frozenset({"NULL", "None", "null", ""})

# The one table of legacy name -> v1 (snake_case) name, for all four calls (panda-wire B.1).
LEGACY_TO_V1: dict[str, str] = {
    # getJob / acquire_jobs
    "siteName": "site_name",
    "computingElement": "computing_element",
    "prodSourceLabel": "prod_source_label",
    "node": "node",
    "diskSpace": "disk_space",
    "mem": "memory",
    "resourceType": "resource_type",
    "harvester_id": "harvester_id",
    "worker_id": "worker_id",
    "nJobs": "n_jobs",
    "timeout": "timeout",
    "prodUserID": "prod_user_id",
    "getProxyKey": "get_proxy_key",
    "taskID": "task_id",
    "background": "background",
    "schedulerID": "scheduler_id",
    "jobType": "job_type",
    "viaTopic": "via_topic",
    "remaining_time": "remaining_time",
    TARGET_ARCHITECTURE: TARGET_ARCHITECTURE,  # 1.0 only: sent only to a server known to take it
    # updateJob / update_job
    "jobId": "job_id",
    "state": "job_status",
    "xml": "job_output_report",
    "metaData": "meta_data",
    "cpuConsumptionTime": "cpu_consumption_time",
    "cpuConsumptionUnit": "cpu_consumption_unit",
    "cpuConversionFactor": "cpu_conversion_factor",
    "pilotID": "pilot_id",
    "pilotLog": "pilot_log",
    "transExitCode": "trans_exit_code",
    "pilotErrorCode": "pilot_error_code",
    "pilotErrorDiag": "pilot_error_diag",
    "exeErrorCode": "exe_error_code",
    "exeErrorDiag": "exe_error_diag",
    "pilotTiming": "pilot_timing",
    "startTime": "start_time",
    "endTime": "end_time",
    "nEvents": "n_events",
    "nInputFiles": "n_input_files",
    "batchID": "batch_id",
    "attemptNr": "attempt_nr",
    "jobMetrics": "job_metrics",
    "stdout": "stdout",
    "jobSubStatus": "job_sub_status",
    "coreCount": "core_count",
    "maxRSS": "max_rss",
    "maxVMEM": "max_vmem",
    "maxSWAP": "max_swap",
    "maxPSS": "max_pss",
    "avgRSS": "avg_rss",
    "avgVMEM": "avg_vmem",
    "avgSWAP": "avg_swap",
    "avgPSS": "avg_pss",
    "totRCHAR": "tot_rchar",
    "totWCHAR": "tot_wchar",
    "totRBYTES": "tot_rbytes",
    "totWBYTES": "tot_wbytes",
    "rateRCHAR": "rate_rchar",
    "rateWCHAR": "rate_wchar",
    "rateRBYTES": "rate_rbytes",
    "rateWBYTES": "rate_wbytes",
    "corruptedFiles": "corrupted_files",
    "meanCoreCount": "mean_core_count",
    "cpu_architecture_level": "cpu_architecture_level",
    "grid": "grid",
    "source_site": "source_site",
    "destination_site": "destination_site",
    # getEventRanges / acquire_event_ranges
    "pandaID": "job_id",
    "jobsetID": "jobset_id",
    "nRanges": "n_ranges",
    "scattered": "scattered",
    "segment_id": "segment_id",
    # updateEventRanges / update_event_ranges
    "eventRanges": "event_ranges",
    "version": "version",
}

# What each v1 endpoint accepts (panda-wire B.1); other fields have no v1 equivalent and are dropped.
V1_ACCEPTS: dict[str, frozenset[str]] = {
    GET_JOB: frozenset({"site_name", "timeout", "memory", "disk_space", "prod_source_label", "node",
                        "computing_element", "prod_user_id", "get_proxy_key", "task_id", "n_jobs",
                        "background", "resource_type", "harvester_id", "worker_id", "scheduler_id",
                        "job_type", "via_topic", "remaining_time", TARGET_ARCHITECTURE}),
    UPDATE_JOB: frozenset({"job_id", "job_status", "job_output_report", "node", "cpu_consumption_time",
                           "cpu_consumption_unit", "scheduler_id", "pilot_id", "site_name", "pilot_log",
                           "meta_data", "cpu_conversion_factor", "trans_exit_code", "pilot_error_code",
                           "pilot_error_diag", "exe_error_code", "exe_error_diag", "pilot_timing",
                           "start_time", "end_time", "n_events", "n_input_files", "batch_id",
                           "attempt_nr", "job_metrics", "stdout", "job_sub_status", "core_count",
                           "max_rss", "max_vmem", "max_swap", "max_pss", "avg_rss", "avg_vmem",
                           "avg_swap", "avg_pss", "tot_rchar", "tot_wchar", "tot_rbytes", "tot_wbytes",
                           "rate_rchar", "rate_wchar", "rate_rbytes", "rate_wbytes", "corrupted_files",
                           "mean_core_count", "cpu_architecture_level", "grid", "source_site",
                           "destination_site", "timeout"}),
    GET_EVENT_RANGES: frozenset({"job_id", "jobset_id", "task_id", "n_ranges", "timeout", "scattered",
                                 "segment_id"}),
    UPDATE_EVENT_RANGES: frozenset({"event_ranges", "timeout", "version"}),
}
V1_INT_FIELDS = frozenset({"job_id", "jobset_id", "task_id", "n_jobs", "n_ranges", "attempt_nr", "version",
                           "memory", "disk_space", "n_events", "timeout"})
V1_TO_LEGACY: dict[str, dict[str, str]] = {
    method: {v1: legacy for legacy, v1 in LEGACY_TO_V1.items() if v1 in accepted}
    for method, accepted in V1_ACCEPTS.items()
}
V1_TO_LEGACY[GET_EVENT_RANGES]["job_id"] = "pandaID"
V1_TO_LEGACY[UPDATE_JOB]["job_id"] = "jobId"

# Server-side length limits of updateJob fields (panda-wire A.3); stdout keeps its tail.
FIELD_LIMITS = {"pilotErrorDiag": 500, "exeErrorDiag": 500, "jobMetrics": 500, "node": 128, "pilotID": 200,
                "batchID": 80, "stdout": 2048, "pilotLog": 1024}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class WireError(ValueError):
    """A server reply hpcpilot cannot read; the message is one line naming the problem."""


def snippet(data: bytes | str, limit: int = 80) -> str:
    """A short printable excerpt of a reply, for one-line errors."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in NULL_STRINGS)


# ---------------------------------------------------------------------------------------- requests

def _legacy_value(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value)
    return str(value)


def encode_legacy(fields: Mapping[str, Any]) -> bytes:
    """A form-encoded legacy request body: every value a string, booleans as True/False."""
    return urlencode({k: _legacy_value(v) for k, v in fields.items() if v is not None}).encode()


def encode_legacy_json_gzip(fields: Mapping[str, Any]) -> bytes:
    """The other legacy request form: gzip-compressed JSON (the server always gunzips JSON bodies)."""
    return gzip.compress(json.dumps({k: v for k, v in fields.items() if v is not None}).encode())


def to_v1(method: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Legacy field names -> v1 names for ``method``; fields without a v1 equivalent are dropped."""
    accepted = V1_ACCEPTS[method]
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = LEGACY_TO_V1.get(key, key)
        if name not in accepted or value is None:
            continue
        if name in V1_INT_FIELDS and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        out[name] = value
    return out


def from_v1(method: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """v1 names -> legacy names (used by the test server to share one implementation)."""
    names = V1_TO_LEGACY[method]
    return {names.get(key, key): value for key, value in fields.items()}


def encode_v1(fields: Mapping[str, Any], compress_over: int = 4096) -> tuple[bytes, dict[str, str]]:
    """A v1 request body (JSON) and its headers; bodies larger than ``compress_over`` are gzipped."""
    body = json.dumps(fields).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if len(body) > compress_over:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def format_time(value: Any) -> str:
    """startTime/endTime as the server parses them: ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC).strftime(TIME_FORMAT)
    text = str(value).strip()
    try:
        return datetime.fromtimestamp(float(text), UTC).strftime(TIME_FORMAT)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WireError(f"not a time: {snippet(text)!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC)
    return parsed.strftime(TIME_FORMAT)


def prepare_update(fields: Mapping[str, Any]) -> dict[str, Any]:
    """updateJob fields made server-safe: times formatted, the output report as JSON text, limits applied."""
    out = dict(fields)
    for key in ("startTime", "endTime"):
        if key in out and not is_null(out[key]):
            out[key] = format_time(out[key])
    if isinstance(out.get("xml"), Mapping):
        out["xml"] = json.dumps(out["xml"])
    for key, limit in FIELD_LIMITS.items():
        value = out.get(key)
        if isinstance(value, str) and len(value) > limit:
            out[key] = value[-limit:] if key == "stdout" else value[:limit]
    return out


def timestamp() -> str:
    """Local ISO-8601 time with UTC offset, as pilot3 sends in ``timestamp``."""
    return datetime.fromtimestamp(time.time()).astimezone().isoformat(timespec="seconds")


def range_ids_of(payload: Sequence[Mapping[str, Any]]) -> list[str]:
    """The eventRangeIDs in an updateEventRanges payload (version 0 flat, version 1/2 chunked)."""
    out: list[str] = []
    for item in payload:
        if "eventRanges" in item:
            out.extend(str(r.get("eventRangeID")) for r in item["eventRanges"])
        else:
            out.append(str(item.get("eventRangeID")))
    return out
