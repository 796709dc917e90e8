"""Shared helpers of the pilot benchmarks: access points, mpiexec runs, CPU of a process tree, tables.

The benchmarks run the real pilot under the venv's ``mpiexec`` (MPICH Hydra), exactly as a user
would, and measure it from the outside with psutil, so the pilot needs no instrumentation.

Bytecode: the sandbox these benchmarks were written in exports ``PYTHONDONTWRITEBYTECODE=1``,
so every rank would compile hpcpilot's sources on every start, which no installed pilot does.
By default the children therefore get a private ``PYTHONPYCACHEPREFIX`` (filled by the first
run; start-up and dispatch discard a warm-up run) and behave like an installation with ``.pyc``
files; ``--no-bytecode-cache`` keeps the environment as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# Re-exported: the one definition of a getJob dict and of an access point, shared with the tests.
from tests.pilotrun import make_access_point as make_access_point
from tests.pilotrun import make_job as make_job

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
LAPTOP = REPO / "site_configs" / "laptop.toml"
PROXY_NAMES = frozenset({"hydra_pmi_proxy"})


# ---- environment and command lines ----------------------------------------------------------


def bench_env(tmp: Path, bytecode_cache: bool = True) -> dict[str, str]:
    """The children's environment: importable ``bench`` (for mpi4py.futures workers), and .pyc files.

    See the module docstring for why the bytecode cache is the default.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


def bytecode_note(bytecode_cache: bool) -> str:
    """One line for a table header: how the ranks get their bytecode."""
    if bytecode_cache:
        return "bytecode: cached .pyc (private PYTHONPYCACHEPREFIX), as an installed pilot has"
    return f"bytecode: environment as is (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})"


def mpi_argv(ranks: int, argv: Sequence[str], hosts: Sequence[str] = ()) -> list[str]:
    """``mpiexec [hosts...] -n ranks argv...`` with the venv's MPICH Hydra launcher; ``hosts`` are the options
    that place the ranks on other nodes (``Cluster.mpich_args`` of tests/nodes/netns.py), none for this host."""
    return [str(MPIEXEC), *hosts, "-n", str(ranks), *argv]


def pilot_argv(ranks: int, access_point: Path, run_dir: Path, settings: Sequence[str] = (),
               log_dir: bool = True, hosts: Sequence[str] = ()) -> list[str]:
    """The pilot as a site runs it: laptop.toml, a Harvester access point, stage dirs inside ``run_dir``.

    Unlike the tests' FAST settings nothing is shortened except what ``settings`` overrides.
    """
    argv = [sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--harvester-dir",
            str(access_point), "--workdir", str(run_dir / "work"),
            "--set", f"stage.input_dir={run_dir / 'inputs'}", "--set", f"stage.output_dir={run_dir / 'outputs'}"]
    if log_dir:
        argv += ["--log-dir", str(run_dir / "logs")]
    for setting in settings:
        argv += ["--set", setting]
    return mpi_argv(ranks, argv, hosts)


def run_true(_index: int) -> int:
    """One no-op job for mpi4py.futures: lives here so that workers can unpickle it by module name."""
    return subprocess.run(["true"], check=False).returncode


@contextlib.contextmanager
def bench_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A scratch directory for the runs; kept (and named) with ``--keep`` to look at logs afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"\nrun directories kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# ---- running ----------------------------------------------------------------------------------


@dataclass
class Launched:
    """A started command: its process, when it started, and (once ended) its wall time and output."""

    proc: subprocess.Popen[bytes]
    started: float
    run_dir: Path
    wall: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        """Wait for the exit (killing the whole group after ``timeout``); record the wall time."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.run_dir}: still running after {timeout:.0f} s, killed") from None
        self.wall = time.perf_counter() - self.started
        return code

    def kill(self) -> None:
        """SIGKILL the process group this benchmark started (the launcher, its proxies, ranks, payloads)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def output(self, name: str = "stderr") -> str:
        return (self.run_dir / f"{name}.txt").read_text(errors="replace")


@contextlib.contextmanager
def launch(argv: Sequence[str], run_dir: Path, env: dict[str, str]) -> Iterator[Launched]:
    """Start ``argv`` in its own session (output to files in ``run_dir``); never leave it running."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stdout.txt", "wb") as out, open(run_dir / "stderr.txt", "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
    launched = Launched(proc, started, run_dir)
    try:
        yield launched
    finally:
        if proc.poll() is None:
            launched.kill()


def check_pilot_run(launched: Launched, code: int, jobs: int) -> str:
    """'' when the pilot exited 0 and summary.json lists ``jobs`` finished jobs, else what is wrong."""
    summary_path = launched.run_dir / "work" / "summary.json"
    if code != 0:
        return f"exit status {code}; stderr tail: {launched.output()[-400:]!r}{_log_errors(launched.run_dir)}"
    if not summary_path.is_file():
        return f"no {summary_path}"
    records = json.loads(summary_path.read_text())["jobs"]
    finished = sum(1 for record in records if record.get("state") == "finished")
    if len(records) != jobs or finished != jobs:
        return f"summary.json: {len(records)} job(s), {finished} finished, {jobs} expected"
    return ""


def _log_errors(run_dir: Path, limit: int = 5) -> str:
    """The first ERROR/CRITICAL lines of the rank logs (--log-dir), to say why a run failed."""
    lines = []
    for path in sorted((run_dir / "logs").glob("*.log")):
        lines += [line for line in path.read_text(errors="replace").splitlines()
                  if " ERROR " in line or " CRITICAL " in line]
    return ("; rank logs: " + " | ".join(lines[:limit])) if lines else ""


def summary_span(launched: Launched) -> float:
    """Seconds between the controller's start and its last summary (both in summary.json)."""
    pilot = json.loads((launched.run_dir / "work" / "summary.json").read_text())["pilot"]
    return float(pilot["end"]) - float(pilot["start"])


# ---- CPU of a process tree --------------------------------------------------------------------


@dataclass(frozen=True)
class ProcCpu:
    """One process of a launch: its role, its MPI rank (ranks only) and its own CPU seconds so far.

    ``cpu`` is utime+stime (10 ms ticks, every thread that ever ran).  ``runtime`` is the
    scheduler's nanosecond sum over the live threads, with their ids, when asked for.
    """

    role: str  # "launcher" (mpiexec, hydra_pmi_proxy), "rank" or "payload" (a descendant of a rank)
    rank: int | None
    cpu: float
    runtime: float | None = None
    threads: frozenset[int] = frozenset()


def _rank_of(proc: psutil.Process) -> int | None:
    """PMI_RANK from the process environment (Hydra sets it for every rank)."""
    try:
        value = proc.environ().get("PMI_RANK")
    except (psutil.Error, OSError):
        return None
    return int(value) if value is not None and value.isdigit() else None


def _classify(root: psutil.Process, procs: list[psutil.Process]) -> dict[int, tuple[str, int | None]]:
    """Role of every process: the launcher and its proxies, ranks (children of a proxy), payloads."""
    parent = {}
    names = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            parent[proc.pid], names[proc.pid] = proc.ppid(), proc.name()
    ranks = {pid for pid, ppid in parent.items() if names.get(ppid) in PROXY_NAMES}
    roles: dict[int, tuple[str, int | None]] = {}
    for proc in procs:
        pid = proc.pid
        if pid in ranks:
            roles[pid] = ("rank", _rank_of(proc))
            continue
        ancestor = parent.get(pid)
        while ancestor is not None and ancestor not in ranks and ancestor != root.pid:
            ancestor = parent.get(ancestor)
        roles[pid] = ("payload", None) if ancestor in ranks else ("launcher", None)
    return roles


def _runtime(pid: int) -> tuple[float, frozenset[int]] | None:
    """Seconds on a CPU summed over the live threads (``se.sum_exec_runtime``, in ms, of each
    thread's /proc sched file) and the thread ids; None where the kernel does not offer it.

    Why: utime+stime come in 10 ms ticks, coarse for an idle process over a few seconds.
    """
    total = 0.0
    try:
        tids = frozenset(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
        for tid in tids:
            with open(f"/proc/{pid}/task/{tid}/sched") as handle:
                line = next(line for line in handle if line.startswith("se.sum_exec_runtime"))
            total += float(line.split(":")[1]) / 1000.0
    except (OSError, StopIteration, ValueError):
        return None
    return total, tids


def snapshot(root_pid: int, precise: bool = False) -> dict[int, ProcCpu]:
    """Every process under ``root_pid`` (inclusive) with its role and utime+stime (children excluded).

    A payload's CPU never counts for the pilot: it is in the payload's own times, and in the rank's
    ``cutime`` once reaped, which is not read here.  ``precise`` adds the scheduler's runtime.
    """
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    roles = _classify(root, procs)
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        role, rank = roles.get(proc.pid, ("launcher", None))
        runtime = _runtime(proc.pid) if precise else None
        out[proc.pid] = ProcCpu(role, rank, times.user + times.system, *(runtime or (None, frozenset())))
    return out


def cpu_delta(before: dict[int, ProcCpu], after: dict[int, ProcCpu]) -> dict[int, ProcCpu]:
    """CPU used between two snapshots by processes present in both (the pilot's own are).

    The nanosecond runtime is used when the process kept the same threads (none ended in
    between, whose time would be lost), else the tick-based utime+stime.
    """
    out = {}
    for pid, now in after.items():
        then = before.get(pid)
        if then is None:
            continue
        if now.runtime is not None and then.runtime is not None and now.threads == then.threads:
            used = now.runtime - then.runtime
        else:
            used = now.cpu - then.cpu
        out[pid] = ProcCpu(now.role, now.rank, used)
    return out


class CpuTracker:
    """Polls a launch's processes and keeps each one's last CPU reading, so ranks that already
    exited still count with what they had used shortly before (at most one interval is lost)."""

    def __init__(self, root_pid: int, interval: float = 0.05) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.last: dict[int, ProcCpu] = {}
        self._stop = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CpuTracker:
        self._thread = threading.Thread(target=self._poll, name="cpu-tracker", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop:
            for pid, info in snapshot(self.root_pid).items():
                known = self.last.get(pid)
                if known is not None and known.rank is not None and info.rank is None:
                    # An exiting rank's environment is gone (and so its PMI_RANK): keep what it was.
                    info = ProcCpu(known.role, known.rank, info.cpu)
                self.last[pid] = info
            time.sleep(self.interval)

    def total(self, role: str, rank: int | None = None) -> float:
        """CPU seconds of every process with ``role`` (and ``rank``, when given)."""
        return sum(info.cpu for info in self.last.values()
                   if info.role == role and (rank is None or info.rank == rank))


def wait_for_payloads(root_pid: int, command: str, count: int, timeout: float = 90.0) -> bool:
    """Poll until ``count`` payload processes named ``command`` run under the launch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = 0
        for pid, info in snapshot(root_pid).items():
            if info.role == "payload":
                with contextlib.suppress(psutil.Error):
                    found += psutil.Process(pid).name() == command
        if found >= count:
            return True
        time.sleep(0.1)
    return False


# ---- numbers and tables -----------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, notes: Sequence[str], header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain text table (right-aligned numbers), with its title and the settings it was measured with."""
    cells = [[str(h) for h in header], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for note in notes:
        print(f"  {note}")
    for index, row in enumerate(cells):
        print("  " + "  ".join(value.rjust(width) for value, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)

BASELINE_COMMIT = "0ff2331"
"""The last commit before issue 14's rank-0 scale work: benchmarks that compare with the code as it was
(``git show BASELINE_COMMIT:path``, read-only) load it from there, so the "before" column stays the same
after the change is committed."""
