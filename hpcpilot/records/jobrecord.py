"""``JobRecord``: everything the pilot reports about one job, as updateJob fields and summary.json rows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcpilot.errors import ErrorCode
from hpcpilot.states import JobState

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
