"""An event-service job's records for the server, made of its ranks' records and the ledger's totals.

Many ranks run parts of one PanDA job; the server wants one record: CPU time summed over the ranks,
memory peaks the largest of any rank, nEvents the events of the ranges finished, and a state that
says why the job ended.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice.tally import Tally
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.states import JobState


def final_record(spec: JobSpec, leader: int, members: Iterable[JobRecord], tally: Tally,
                 stop: tuple[int, str] | None) -> JobRecord:
    """The job's final record: nEvents, CPU and memory of all its ranks, and its state (``stop``: why
    the job was stopped, if it was; else finished if any range finished, else its first failure)."""
    record = JobRecord(spec.panda_id, attempt_nr=spec.attempt_nr, rank=leader, core_count=spec.core_count)
    merge_members(record, members, leader)
    record.n_events = tally.finished_events
    record.job_metrics = " ".join(filter(None, [record.job_metrics, f"nEvents={tally.finished_events}"]))
    record.n_input_files = len(spec.inputs)
    if stop is not None:
        record.fail(*stop)
    elif tally.finished_ranges:
        record.state = JobState.FINISHED
    elif tally.first_failure is not None:
        record.fail(tally.first_failure[0], f"no event range finished; first failure: {tally.first_failure[1]}")
    else:
        record.fail(ErrorCode.ESNOEVENTS, "the job source gave no event ranges")
    return record


def progress_record(spec: JobSpec, leader: int, members: Iterable[JobRecord], finished_events: int) -> JobRecord:
    """A heartbeat for the server while the job runs: running, with the events finished so far."""
    record = JobRecord(spec.panda_id, state=JobState.RUNNING, attempt_nr=spec.attempt_nr, rank=leader,
                       core_count=spec.core_count)
    merge_members(record, members, leader)
    record.n_events = finished_events
    return record


def merge_members(record: JobRecord, members: Iterable[JobRecord], leader: int) -> None:
    """CPU time adds up over ranks (the whole seconds PanDA gets are those of the precise sum, not a sum of
    rounded parts: 64 ranks of 0.4 s are 26 s, not 0); memory peaks are per rank, so the job reports the largest."""
    members = list(members)
    for member in members:
        record.cpu_consumption_time += member.cpu_consumption_time
        record.cpu_seconds += member.cpu_seconds
        for attr in ("max_pss", "max_rss", "max_vmem", "max_swap", "avg_pss", "avg_rss", "avg_vmem", "avg_swap"):
            setattr(record, attr, max(getattr(record, attr), getattr(member, attr)))
        for attr in ("tot_rchar", "tot_wchar", "tot_rbytes", "tot_wbytes"):
            setattr(record, attr, getattr(record, attr) + getattr(member, attr))
    if record.cpu_seconds > 0:
        record.cpu_consumption_time = round(record.cpu_seconds)
    starts = [m.start_time for m in members if m.start_time]
    ends = [m.end_time for m in members if m.end_time]
    record.start_time = min(starts) if starts else ""
    record.end_time = max(ends) if ends else ""
    lead = next((m for m in members if m.rank == leader), members[0] if members else None)
    if lead is not None:
        record.node, record.site_name, record.pilot_timing = lead.node, lead.site_name, lead.pilot_timing
        record.job_metrics = " ".join(f for f in lead.job_metrics.split() if not f.startswith("nEvents="))
