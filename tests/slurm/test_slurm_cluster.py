"""The pilot under a real (one-node) Slurm: sbatch of the rendered template, the singleton refusal,
the early-warning signal before the time limit, and scancel.

Timing facts these tests rely on (measured with slurm/cluster.sh, Slurm 22.05): slurmctld checks time
limits every 30 s, so `--signal=B:USR1@S` comes at the first check where the time left is about S or
less (seen: 33-36 s left for S = 40; environment notes: up to 60 s early), and the TERM at the limit
comes up to ~30 s late, followed by KILL after KillWait (30 s).  With --time=2 and S = 60 the warning
comes 30-90 s after the start: after the pilot is up, well before the limit.  No assertion is timed.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.config import load_config
from hpcpilot.errors import ErrorCode
from hpcpilot.slurm import render_sbatch
from tests.pilotrun import FAST, LAPTOP, make_access_point, make_job, processes_with, wait_for
from tests.slurm.conftest import SlurmCluster

pytestmark = pytest.mark.slurm

VENV = Path(sys.executable).parent.parent
RANKS = 4


def _pilot_args(tmp: Path, access_point: Path) -> list[str]:
    args = ["--site-config", str(LAPTOP), "--harvester-dir", str(access_point),
            "--workdir", str(tmp / "work"), "--set", f"stage.input_dir={tmp / 'inputs'}",
            "--set", f"stage.output_dir={tmp / 'outputs'}"]
    for setting in FAST:
        args += ["--set", setting]
    return args


def _batch_script(tmp: Path, access_point: Path, name: str, minutes: int, warning: int,
                  python: str = sys.executable) -> Path:
    launcher = {"kind": "srun", "mpi": "pmi2", "nodes": 1, "ranks_per_node": RANKS, "time_minutes": minutes,
                "warning_signal": "USR1", "warning_seconds": warning, "extra_options": []}
    config = load_config(LAPTOP, overrides={"launcher": launcher}, environ={"HPCPILOT": ""})
    script = tmp / f"{name}.sbatch"
    script.write_text(render_sbatch(config, _pilot_args(tmp, access_point), job_name=name, python=python))
    return script


def _long_jobs(marker: str, count: int, first_id: int) -> list[dict[str, Any]]:
    # the marker is in the payload's own command line, so a surviving payload can be found
    command = f"{sys.executable} -c 'import time; time.sleep(600)' {marker}"
    return [make_job(first_id + n, command) for n in range(count)]


def _summary(tmp: Path) -> dict[str, Any]:
    path = tmp / "work" / "summary.json"
    assert path.exists(), f"no summary.json; batch output:\n{_output(tmp)}"
    return json.loads(path.read_text())


def _output(tmp: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(tmp.glob("*.out")))


def _assert_wound_down(tmp: Path, marker: str, count: int, codes: set[int]) -> None:
    jobs = _summary(tmp)["jobs"]
    assert len(jobs) == count, _output(tmp)
    for job in jobs:
        assert job["state"] in ("failed", "closed"), job
        assert int(job["pilotErrorCode"]) in codes, job
    left = not wait_for(lambda: not processes_with(marker), timeout=30)
    assert not left, f"payloads left running: {processes_with(marker)}"


def test_sbatch_drains_access_point_on_all_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    jobs = [make_job(100 + n, f"sleep 1; echo {n} > out.{100 + n}", outputs=[f"out.{100 + n}"])
            for n in range(3 * RANKS)]
    access_point = make_access_point(tmp_path / "access_point", jobs)
    # python3 from the venv the template activates (HPCPILOT_VENV), as a user's batch job would
    script = _batch_script(tmp_path, access_point, "hpcpilot-drain", minutes=5, warning=60, python="python3")
    slurm_cluster.env["HPCPILOT_VENV"] = str(VENV)
    try:
        job_id = slurm_cluster.sbatch(script, cwd=tmp_path)
    finally:
        slurm_cluster.env.pop("HPCPILOT_VENV")
    info = slurm_cluster.wait(job_id, timeout=300)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{_output(tmp_path)}"
    records = _summary(tmp_path)["jobs"]
    assert sorted(int(j["jobId"]) for j in records) == [j["PandaID"] for j in jobs]
    assert all(j["state"] == "finished" and int(j["pilotErrorCode"]) == 0 for j in records), records
    ranks = {int(j["rank"]) for j in records}
    assert set(range(1, RANKS)) <= ranks <= set(range(RANKS)), ranks
    assert "srun --mpi=pmi2" in script.read_text()


def test_srun_without_mpi_plugin_is_refused(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    access_point = make_access_point(tmp_path / "access_point", [make_job(200, "true")])
    argv = ["srun", "-n", str(RANKS), "--time=2", sys.executable, "-m", "hpcpilot", "run",
            *_pilot_args(tmp_path, access_point)]
    done = slurm_cluster.run(["env", "-u", "SLURM_MPI_TYPE", *argv], timeout=180, cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "--mpi=pmi2" in done.stderr and f"{RANKS} tasks" in done.stderr, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "--mpi=pmi2" in line]
    # said once, by task 0, not once per singleton (each of which believes it is rank 0)
    assert len(refusals) == 1 and refusals[0].startswith("hpcpilot: "), done.stderr
    assert not (tmp_path / "work" / "summary.json").exists(), "singletons ran jobs"


def test_time_limit_warning_winds_down_before_the_limit(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    marker = f"hpcpilot-walltime-{uuid.uuid4().hex}"
    count = RANKS - 1
    access_point = make_access_point(tmp_path / "access_point", _long_jobs(marker, count, 300))
    script = _batch_script(tmp_path, access_point, "hpcpilot-warn", minutes=2, warning=60)
    assert "#SBATCH --signal=B:USR1@60" in script.read_text()
    job_id = slurm_cluster.sbatch(script, cwd=tmp_path)
    info = slurm_cluster.wait(job_id, timeout=400)
    output = _output(tmp_path)
    assert info["JobState"] != "TIMEOUT", f"pilot did not wind down before the limit: {info}\n{output}"
    # an orderly wind-down on the warning is a normal end: Slurm must not call it FAILED (138)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{output}"
    assert "batch shell got SIGUSR1" in output, output
    _assert_wound_down(tmp_path, marker, count, {int(ErrorCode.REACHEDMAXTIME), int(ErrorCode.SIGUSR1)})


def test_scancel_winds_down_with_the_signal_code(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    marker = f"hpcpilot-scancel-{uuid.uuid4().hex}"
    count = RANKS - 1
    access_point = make_access_point(tmp_path / "access_point", _long_jobs(marker, count, 400))
    script = _batch_script(tmp_path, access_point, "hpcpilot-cancel", minutes=10, warning=60)
    job_id = slurm_cluster.sbatch(script, cwd=tmp_path)
    running = wait_for(lambda: len(processes_with(marker)) >= count, timeout=120, interval=0.5)
    if not running:
        slurm_cluster.run(["scancel", job_id])
        pytest.fail(f"payloads did not start: {slurm_cluster.job(job_id)}\n{_output(tmp_path)}")
    cancelled = slurm_cluster.run(["scancel", job_id])
    assert cancelled.returncode == 0, cancelled.stderr
    info = slurm_cluster.wait(job_id, timeout=200)
    assert info["JobState"] == "CANCELLED", info
    _assert_wound_down(tmp_path, marker, count, {int(ErrorCode.SIGTERM)})


def test_readme_one_node_recipe_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The README's recipe as written: render-sbatch with --set for this cluster's partition and size."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "examples" / "access_point", tmp_path / "access_point")
    sets = ["launcher.partition=debug", "launcher.nodes=1", "launcher.ranks_per_node=4", "harvester.stage=pilot",
            "harvester.feed_timeout=0", f"site.local_scratch={tmp_path / 'scratch'}",
            f"stage.input_dir={repo / 'examples' / 'inputs'}", f"stage.output_dir={tmp_path / 'outputs'}"]
    argv = [str(VENV / "bin" / "hpcpilot"), "render-sbatch", "--site-config", "site_configs/generic-slurm.toml"]
    for setting in sets:
        argv += ["--set", setting]
    argv += ["--", "--harvester-dir", str(tmp_path / "access_point"), "--workdir", str(tmp_path / "work")]
    rendered = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=60, check=False)
    assert rendered.returncode == 0, rendered.stderr
    script = tmp_path / "pilot.sbatch"
    script.write_text(rendered.stdout)
    # submitted from the repository as the README does (the site config path is relative to it); only the
    # batch output goes to tmp_path instead of the repository
    slurm_cluster.env["HPCPILOT_VENV"] = str(VENV)
    try:
        submit = slurm_cluster.run(["sbatch", "--parsable", f"--output={tmp_path}/hpcpilot-%j.out", str(script)],
                                   cwd=repo)
    finally:
        slurm_cluster.env.pop("HPCPILOT_VENV")
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    info = slurm_cluster.wait(job_id, timeout=300)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{_output(tmp_path)}"
    records = _summary(tmp_path)["jobs"]
    assert sorted(int(j["jobId"]) for j in records) == [1001, 1002, 1003], records
    assert all(j["state"] == "finished" for j in records), records
