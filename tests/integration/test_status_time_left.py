"""``hpcpilot status`` of a real pilot in a (stand-in) Slurm job: which clock "time left" counts down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pilotrun import make_access_point, make_job, pilot_argv

SLURM_LEFT = 3600


def _status_after_run(tmp: Path, extra: list[str]) -> tuple[dict, str]:
    """Run one short job with SLURM_JOB_ID and SLURM_JOB_END_TIME set (how Slurm >= 21.08 tells a job its end)."""
    access_point = make_access_point(tmp / "access_point", [make_job(6301, "sleep 0.2")])
    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_END_TIME": str(int(time.time()) + SLURM_LEFT)}
    done = subprocess.run(pilot_argv(tmp, access_point, extra=extra), cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = tmp / "work"
    shown = subprocess.run([sys.executable, "-m", "hpcpilot", "status", str(workdir)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    return json.loads((workdir / "status.json").read_text()), shown.stdout


def test_without_walltime_time_left_is_the_slurm_jobs(tmp_path: Path) -> None:
    status, shown = _status_after_run(tmp_path, [])
    assert status["time_left_source"] == "slurm" and status["slurm_job"] == "4242"
    assert SLURM_LEFT - 120 < status["time_left"] <= SLURM_LEFT
    assert "(Slurm job 4242's end)" in shown, shown


def test_walltime_wins_over_the_slurm_end(tmp_path: Path) -> None:
    status, shown = _status_after_run(tmp_path, ["--walltime", "900"])
    assert status["time_left_source"] == "walltime"
    assert status["time_left"] == pytest.approx(900, abs=60)
    assert "(by --walltime)" in shown, shown
