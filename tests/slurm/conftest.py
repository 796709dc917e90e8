"""The Slurm tier: a real one-node Slurm cluster started (and stopped) through slurm/cluster.sh.

Skipped, with the reason shown by ``pytest -ra``, only where the machine cannot run it: not root, or
Slurm missing and no apt-get to install it.  Anywhere else a cluster that does not start is a failure.
A cluster that was already running (started by CI through the same script) is used and left running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "slurm" / "cluster.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


@dataclass
class SlurmCluster:
    """A running one-node cluster and the environment its clients need (SLURM_CONF)."""

    directory: Path
    env: dict[str, str]

    def run(self, argv: list[str], timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def sbatch(self, script: Path, cwd: Path) -> str:
        done = self.run(["sbatch", "--parsable", str(script)], cwd=cwd)
        assert done.returncode == 0, f"sbatch failed: {done.stderr.strip()}"
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, StartTime, EndTime, ...)."""
        done = self.run(["scontrol", "show", "job", "-o", job_id])
        if done.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", done.stdout))

    def wait(self, job_id: str, timeout: float = 300) -> dict[str, str]:
        """Wait (sleeping, bounded) until the job has ended; cancel it and fail when it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in TERMINAL:
                return info
            time.sleep(1)
        self.run(["scancel", job_id])
        raise AssertionError(f"Slurm job {job_id} did not end within {timeout} s: {self.job(job_id)}")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "Slurm tier needs root (it starts munged, slurmctld and slurmd)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "Slurm tier: slurm-wlm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    directory = Path(os.environ.get("HPCPILOT_SLURM_DIR", "/tmp/hpcpilot-slurm"))
    script = [str(CLUSTER)]
    was_running = subprocess.run([*script, "status", "--dir", str(directory)], capture_output=True,
                                 text=True, timeout=60, check=False).returncode == 0
    started = subprocess.run([*script, "start", "--install", "--dir", str(directory)], capture_output=True,
                             text=True, timeout=900, check=False)
    if started.returncode != 0:
        pytest.fail(f"slurm/cluster.sh start failed: {(started.stderr or started.stdout).strip()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCPILOT_"))}
    env["SLURM_CONF"] = str(directory / "etc" / "slurm.conf")
    try:
        yield SlurmCluster(directory, env)
    finally:
        if not was_running:
            subprocess.run([*script, "stop", "--dir", str(directory)], capture_output=True, timeout=120,
                           check=False)
