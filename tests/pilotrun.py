"""Helpers for tests that run the real pilot: job definitions, access points, pilot processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LAPTOP = Path(os.environ.get("HPCPILOT_TEST_SITE_CONFIG", REPO / "site_configs" / "laptop.toml"))



@dataclass(frozen=True)
class Mpi:
    """One MPI to run the pilot under: the python of the venv that holds its wheel (one MPI per venv), its
    launcher's argv before the rank count and the environment the launcher needs."""

    name: str
    python: str
    launcher: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def argv(self, ranks: int) -> list[str]:
        return [*self.launcher, "-n", str(ranks)]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **dict(self.env)}


MPICH = Mpi("mpich", sys.executable, (str(BIN / "mpiexec"),))
"""The test venv's own MPI: the pip `mpich` wheel's Hydra mpiexec."""
OPENMPI_ROOT_ENV = (("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"))
"""Open MPI refuses to start as root (CI) without both."""


def open_mpi(venv: Path, fault_tolerant: bool = False) -> Mpi:
    """The pip `openmpi` wheel's mpirun in ``venv``, oversubscribed (2 cores here), with ULFM if asked."""
    ft = ("--with-ft", "ulfm") if fault_tolerant else ()
    return Mpi("openmpi-ulfm" if fault_tolerant else "openmpi", str(venv / "bin" / "python"),
               (str(venv / "bin" / "mpirun"), "--oversubscribe", *ft), OPENMPI_ROOT_ENV)


# Settings that make monitoring decisions happen within seconds in tests.
FAST = [
    "monitor.report_interval=0.5",
    "monitor.kill_grace=1",
    "monitor.disk_check_interval=0.5",
    "monitor.looping_check_interval=0.5",
    "monitor.free_space_start_mb=50",
    "monitor.free_space_running_mb=10",
    "monitor.status_interval=5",
    "walltime.margin=2",
]


def make_job(panda_id: int, command: str, outputs: Sequence[str] = (), inputs: Sequence[tuple[str, int, str]] = (),
             **extra: Any) -> dict[str, Any]:
    """A getJob dict as the server sends it: per-file comma lists, the log file last."""
    log = f"log.{panda_id}.tgz"
    outs = [*outputs, log]
    job: dict[str, Any] = {
        "PandaID": panda_id, "attemptNr": 1, "jobsetID": 1, "taskID": 7, "prodSourceLabel": "managed",
        "transformation": "/bin/sh", "jobPars": f"-c {json.dumps(command)}", "coreCount": 1,
        "minRamCount": 2000, "outFiles": ",".join(outs), "logFile": log,
        "logGUID": f"00000000-0000-4000-8000-{panda_id:012d}", "scopeOut": "test", "scopeLog": "test",
        "realDatasets": ",".join(["test.ds"] * len(outs)), "inFiles": ",".join(i[0] for i in inputs),
        "fsize": ",".join(str(i[1]) for i in inputs), "checksum": ",".join(i[2] for i in inputs),
        "GUID": ",".join(f"G-{n}" for n, _ in enumerate(inputs)), "scopeIn": ",".join("test" for _ in inputs),
    }
    job.update(extra)
    return job


def make_access_point(path: Path, jobs: Sequence[dict[str, Any]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "HPCJobs.json").write_text(json.dumps({str(j["PandaID"]): j for j in jobs}))
    return path


@dataclass
class PilotRun:
    """A finished pilot run: its exit code, output and summary."""

    returncode: int
    stdout: str
    stderr: str
    workdir: Path

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.workdir / "summary.json").read_text())

    @property
    def jobs(self) -> dict[int, dict[str, Any]]:
        return {int(j["jobId"]): j for j in self.summary["jobs"]}


def pilot_argv(tmp: Path, access_point: Path, settings: Sequence[str] = (), ranks: int = 0,
               extra: Sequence[str] = (), mpi: Mpi = MPICH) -> list[str]:
    argv = [mpi.python, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--harvester-dir",
            str(access_point), "--workdir", str(tmp / "work"), "--set", f"stage.input_dir={tmp / 'inputs'}",
            "--set", f"stage.output_dir={tmp / 'outputs'}"]
    for setting in [*FAST, *settings]:
        argv += ["--set", setting]
    argv += list(extra)
    if ranks:
        argv = [*mpi.argv(ranks), *argv]
    return argv


def default_sigint() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT: a test runner started with SIGINT ignored (a
    background job of a non-interactive shell) would pass the ignored disposition on, and the child would
    never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pilot(tmp: Path, access_point: Path, settings: Sequence[str] = (), ranks: int = 0,
                extra: Sequence[str] = (), mpi: Mpi = MPICH) -> subprocess.Popen[str]:
    return subprocess.Popen(pilot_argv(tmp, access_point, settings, ranks, extra, mpi), cwd=tmp, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env=mpi.environ(), preexec_fn=default_sigint)


def finish(proc: subprocess.Popen[str], tmp: Path, timeout: float = 120) -> PilotRun:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"pilot did not end within {timeout} s\nstdout:\n{out}\nstderr:\n{err[-5000:]}") from None
    return PilotRun(proc.returncode, out, err, tmp / "work")


def run_pilot(tmp: Path, jobs: Sequence[dict[str, Any]], settings: Sequence[str] = (), ranks: int = 0,
              extra: Sequence[str] = (), timeout: float = 120, mpi: Mpi = MPICH) -> PilotRun:
    access_point = make_access_point(tmp / "access_point", jobs)
    return finish(start_pilot(tmp, access_point, settings, ranks, extra, mpi), tmp, timeout)


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (to prove nothing of a payload survived)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found
