"""Where ``hpcpilot status``'s "time left" comes from: the pilot's --walltime or the Slurm job's end."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcpilot.livestatus import SLURM, WALLTIME, deadline_source, format_status, metrics_text

NOW = 1_800_000_000.0


def _snapshot(**extra: object) -> dict:
    base = {"site": "s", "pid": 1, "state": "running", "started": NOW - 60, "updated": NOW, "ranks_total": 2,
            "worker_ranks": 1, "jobs": {"running": 1, "queued": 0, "finished": 0, "failed": 0},
            "ranks": {"busy": 1}, "time_left": 3600.0, "guard_in": 3000.0, "event_service": [],
            "last_errors": []}
    return {**base, **extra}


@pytest.mark.parametrize(("walltime", "deadline", "environ", "expected"), [
    (600, NOW + 600, {}, {"source": WALLTIME, "batch_job": None}),
    (600, NOW + 600, {"SLURM_JOB_ID": "77"}, {"source": WALLTIME, "batch_job": "77"}),  # --walltime wins
    (0, NOW + 900, {"SLURM_JOB_ID": "77"}, {"source": SLURM, "batch_job": "77"}),
    (0, None, {"SLURM_JOB_ID": "77"}, {"source": None, "batch_job": "77"}),  # squeue could not tell
    (0, None, {"PBS_JOBID": "9.pbs"}, {"source": None, "batch_job": None}),
])
def test_deadline_source(walltime, deadline, environ, expected):
    assert deadline_source(walltime, deadline, environ) == expected


@pytest.mark.parametrize(("source", "job", "shown"), [
    (WALLTIME, None, "time left: 1h00m00s (by --walltime)"),
    (SLURM, "77", "time left: 1h00m00s (Slurm job 77's end)"),
])
def test_status_says_which_clock_time_left_counts(source, job, shown):
    text = format_status(_snapshot(time_left_source=source, slurm_job=job), NOW)
    assert shown in text, text
    families = {f.name: f for f in text_string_to_metric_families(metrics_text(
        _snapshot(time_left_source=source, slurm_job=job)))}
    (sample,) = families["hpcpilot_time_left_seconds"].samples
    assert sample.labels["source"] == source and sample.value == 3600.0


def test_status_without_a_deadline_says_why():
    text = format_status(_snapshot(time_left=None, guard_in=None, time_left_source=None, slurm_job="77"), NOW)
    assert "time left: unlimited (no --walltime; Slurm job 77's end unknown)" in text, text
    text = format_status(_snapshot(time_left=None, guard_in=None, time_left_source=None, slurm_job=None), NOW)
    assert "time left: unlimited (no --walltime, not in a Slurm job)" in text, text
    older = format_status(_snapshot(), NOW)  # a status.json written before the source was recorded
    assert "time left: 1h00m00s  (walltime guard in 50m00s)" in older, older
