"""Slurm: batch scripts rendered from a template, the allocation's end, and the srun consistency check.

Every batch command (squeue, sbatch, scontrol, ...) goes through :func:`run_command`, the one seam tests
replace (or they put a fake ``squeue`` first on ``PATH``).  Nothing here shells out at import time or in
a constructor.  Batch scripts are data: ``slurm/pilot.sbatch.tmpl`` is filled by
``string.Template.substitute``, which fails on a missing key.

Running this module regenerates the files derived from the code (``site_configs/README.md`` and
``slurm/examples/*.sbatch``)::

    python -m hpcpilot.slurm regenerate

Tests re-render both and compare, so they cannot drift.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from hpcpilot.config import SiteConfig, documented_keys, load_config
from hpcpilot.errors import ConfigError
from hpcpilot.launchers import launcher_for

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "slurm" / "pilot.sbatch.tmpl"
EXAMPLES_DIR = REPO_ROOT / "slurm" / "examples"
SITE_CONFIG_DIR = REPO_ROOT / "site_configs"

# Slurm's --signal takes at most 65535 seconds.
MAX_WARNING_SECONDS = 65535
DEFAULT_TIMEOUT = 30.0
# Generated files must not depend on the caller's HPCPILOT_* variables.  (A non-empty mapping:
# load_config treats an empty one as "use os.environ".)
_NO_OVERRIDES = {"HPCPILOT": ""}


def run_command(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str, str]:
    """Run one batch command; (exit status, stdout, stderr).  Never raises.

    A missing program gives 127 and a timeout 124 (the shell's conventions), with a one-line stderr.
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{shlex.join(argv)}: timed out after {timeout:g} s"
    except OSError as exc:
        return 126, "", f"{argv[0]}: {exc.strerror}"
    return done.returncode, done.stdout, done.stderr


# --- sbatch rendering ------------------------------------------------------------------------------


def format_time(minutes: int) -> str:
    """Slurm ``--time`` for a number of minutes: ``HH:MM:00`` or ``D-HH:MM:00``."""
    if minutes < 1:
        raise ConfigError(f"launcher.time_minutes must be at least 1 for a batch job, got {minutes}")
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    hhmm = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{hhmm}" if days else hhmm


def signal_name(name: str) -> str:
    """A signal as Slurm and ``kill -s`` spell it (``USR1``), from ``USR1``, ``SIGUSR1`` or ``10``."""
    text = name.strip().upper()
    try:
        sig = signal.Signals(int(text)) if text.isdigit() else signal.Signals[
            text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise ConfigError(f"launcher.warning_signal: unknown signal {name!r}") from None
    return sig.name[3:]


def warning_signum(config: SiteConfig) -> int | None:
    """The batch system's early-warning signal number (``launcher.warning_signal``), None when unknown."""
    try:
        return int(signal.Signals["SIG" + signal_name(config.launcher.warning_signal)])
    except ConfigError:
        return None


def _optional_directives(config: SiteConfig) -> str:
    lc = config.launcher
    lines = [f"#SBATCH --{option}={value}" for option, value in
             (("partition", lc.partition), ("account", lc.account), ("qos", lc.qos),
              ("constraint", lc.constraint)) if value]
    return "\n".join(lines) if lines else "# (no partition, account, qos or constraint set)"


def _signal_directive(config: SiteConfig, sig: str) -> str:
    seconds = config.launcher.warning_seconds
    if seconds == 0:
        return "# (no early warning: launcher.warning_seconds = 0)"
    if seconds > MAX_WARNING_SECONDS:
        raise ConfigError(f"launcher.warning_seconds: Slurm allows at most {MAX_WARNING_SECONDS}, "
                          f"got {seconds}")
    return f"#SBATCH --signal=B:{sig}@{seconds}"


def render_sbatch(config: SiteConfig, pilot_args: list[str], job_name: str = "hpcpilot",
                  template: Path | None = None, python: str = "python3") -> str:
    """The sbatch script that runs ``hpcpilot run <pilot_args>`` with the site's launcher and limits."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", job_name):
        raise ConfigError(f"job name {job_name!r}: use letters, digits and _ . + - only")
    lc = config.launcher
    sig = signal_name(lc.warning_signal)
    command = [python, "-m", "hpcpilot", "run", *pilot_args]
    argv = launcher_for(config)(command, lc.nodes, lc.ranks_per_node)
    text = (template or TEMPLATE).read_text()
    return Template(text).substitute(
        site=config.site.name,
        source=Path(config.source).name,
        job_name=job_name,
        nodes=lc.nodes,
        ranks_per_node=lc.ranks_per_node,
        time=format_time(lc.time_minutes),
        optional_directives=_optional_directives(config),
        signal_directive=_signal_directive(config, sig),
        warning_signal=sig,
        python=shlex.quote(python),
        launch_command=shlex.join(argv),
    )


# --- the allocation's end --------------------------------------------------------------------------


def parse_end_time(text: str) -> float | None:
    """``squeue -o %e`` (local time ``YYYY-MM-DDTHH:MM:SS``) as an epoch; None for N/A, Unknown, junk."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def parse_time_left(text: str) -> float | None:
    """``squeue -o %L`` (``[D-][HH:]MM:SS``) in seconds; None for UNLIMITED, NOT_SET, INVALID, junk."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, mins, secs = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + mins) * 60 + secs)


def allocation_end_time(environ: Mapping[str, str], now: float | None = None) -> float | None:
    """When the Slurm allocation ends (epoch seconds), or None outside Slurm or when it cannot be told.

    ``SLURM_JOB_END_TIME`` (newer Slurm) first; else ``squeue -h -j $SLURM_JOB_ID -o '%e|%L'``: the end
    time, or ``now`` plus the time left when the end is not parseable.  Never raises.
    """
    raw = environ.get("SLURM_JOB_END_TIME", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return float(raw)
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        return None
    try:
        rc, out, _err = run_command(["squeue", "-h", "-j", job_id, "-o", "%e|%L"], timeout=DEFAULT_TIMEOUT)
    except Exception:  # a replaced seam must not take the pilot down either
        return None
    lines = out.strip().splitlines()
    if rc != 0 or not lines:
        return None
    end_text, _, left_text = lines[0].partition("|")
    end = parse_end_time(end_text)
    if end is not None:
        return end
    left = parse_time_left(left_text)
    if left is None:
        return None
    return (time.time() if now is None else now) + left


# --- the step this process belongs to --------------------------------------------------------------


@dataclass(frozen=True)
class SlurmStep:
    """What Slurm tells one task of a step about itself (from the environment srun sets)."""

    job_id: str
    step_id: str
    procid: int
    ntasks: int
    localid: int
    nodelist: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SlurmStep | None:
        """The step of a task started by srun; None outside a step (a batch shell, a laptop)."""
        job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
        step_id = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")
        if not job_id or step_id is None or "SLURM_PROCID" not in environ:
            return None
        try:
            procid = int(environ["SLURM_PROCID"])
            ntasks = int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1")
            localid = int(environ.get("SLURM_LOCALID", "0"))
        except ValueError:
            return None
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_NODELIST", "")
        return cls(job_id, step_id, procid, ntasks, localid, nodelist)


# --- srun and MPI agree? ---------------------------------------------------------------------------

# Variables only an mpiexec-style launcher puts in its processes' environment.  MPICH's Hydra sets
# MPI_LOCALRANKID and MPI_LOCALNRANKS (hydra_pmi_proxy, per process) and HYDI_CONTROL_FD; it also sets
# PMI_RANK, PMI_SIZE and PMI_FD, but so does Slurm's own pmi2 plugin, so those prove nothing.  Open MPI's
# mpirun (ORTE, PRRTE) sets OMPI_COMM_WORLD_SIZE and OMPI_COMM_WORLD_RANK.  Inside an allocation such a
# launcher starts its proxies with srun, so its ranks also see SLURM_STEP_ID and SLURM_PROCID (of the
# proxy: one task per node), and a different world size there is legitimate.
MPIEXEC_MARKERS = ("MPI_LOCALRANKID", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD",
                   "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")

_SRUN_FIX = {
    "mpich": "srun --mpi=pmi2 (or SLURM_MPI_TYPE=pmi2)",
    "cray-mpich": "srun --mpi=cray_shasta (or SLURM_MPI_TYPE=cray_shasta)",
    "openmpi": "srun --mpi=pmix (or SLURM_MPI_TYPE=pmix)",
}


def detect_mpi_vendor(library_version: str) -> str:
    """``mpich``, ``cray-mpich``, ``openmpi`` or ``unknown`` from ``MPI.Get_library_version()`` (or a name).

    MVAPICH and Intel MPI are MPICH derivatives and count as ``mpich`` (they use ``--mpi=pmi2`` too).
    """
    text = library_version.lower()
    if "cray" in text and "mpich" in text:
        return "cray-mpich"
    if "open mpi" in text or "openmpi" in text or "open-mpi" in text:
        return "openmpi"
    if any(name in text for name in ("mpich", "mvapich", "intel(r) mpi", "intel mpi")):
        return "mpich"
    return "unknown"


def launched_by_mpiexec(environ: Mapping[str, str]) -> bool:
    """True when an mpiexec/mpirun (not srun's own PMI) started this process."""
    return any(name in environ for name in MPIEXEC_MARKERS)


def launch_mismatch(world_size: int, world_rank: int, environ: Mapping[str, str],
                    mpi_vendor: str) -> str | None:
    """A one-line refusal when srun started this process but MPI disagrees with srun; else None.

    Checked only for a task of an srun step (``SLURM_STEP_ID`` and ``SLURM_PROCID`` set) that no mpiexec
    started (:data:`MPIEXEC_MARKERS` absent): then the MPI world must have the step's task count and this
    rank must be ``SLURM_PROCID``.  The typical failure is ``srun -n 4`` without ``--mpi`` on a cluster
    whose ``MpiDefault`` is none: four singletons that all believe they are rank 0.  ``mpi_vendor`` is
    ``MPI.Get_library_version()`` or a vendor name, and picks the fix the message names.  Pass the
    environment as it was before MPI was initialised.
    """
    step = SlurmStep.from_environ(environ)
    if step is None or launched_by_mpiexec(environ):
        return None
    if world_size == step.ntasks and world_rank == step.procid:
        return None
    vendor = detect_mpi_vendor(mpi_vendor)
    fix = _SRUN_FIX.get(vendor, "srun --mpi=pmi2 for MPICH or srun --mpi=pmix for Open MPI")
    return (f"srun started {step.ntasks} tasks (this is task {step.procid}) but MPI sees a world of "
            f"{world_size} with this process as rank {world_rank}: srun did not connect the ranks to "
            f"{'this MPI' if vendor == 'unknown' else vendor}; start the pilot with {fix}")


# --- forwarding the early warning -----------------------------------------------------------------

RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")  # first present wins (Hydra in
# an allocation: every rank on node 0 has SLURM_PROCID=0 from its proxy, but its own PMI_RANK)


# Launchers repeat the pilot's command line in their own (srun even forks a helper with it): never them.
LAUNCHER_NAMES = frozenset({"srun", "mpiexec", "mpirun", "mpiexec.hydra", "orterun", "prterun",
                            "hydra_pmi_proxy"})


def _read_proc(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pilot_rank0_pids(job_id: str, exclude: Sequence[int] = (), proc: Path = Path("/proc")) -> list[int]:
    """Pids on this node of the pilot's rank 0 in Slurm job ``job_id`` (``... hpcpilot run`` processes).

    Found by command line (``-m hpcpilot run`` or ``hpcpilot run``, not a launcher's) and environment
    (``SLURM_JOB_ID`` and a rank variable equal to 0); payloads inherit the environment but not the
    command line.
    """
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        argv = _read_proc(entry / "cmdline")
        if not argv or Path(argv[0]).name in LAUNCHER_NAMES:
            continue
        is_pilot = any(argv[i:i + 3] == ["-m", "hpcpilot", "run"] for i in range(len(argv))) or any(
            Path(argv[i]).name == "hpcpilot" and argv[i + 1:i + 2] == ["run"] for i in range(len(argv)))
        if not is_pilot:
            continue
        env = dict(item.partition("=")[::2] for item in _read_proc(entry / "environ") if "=" in item)
        if env.get("SLURM_JOB_ID", env.get("SLURM_JOBID")) != job_id:
            continue
        rank = next((env[name] for name in RANK_VARIABLES if name in env), None)
        if rank == "0":
            found.append(int(entry.name))
    return sorted(found)


def forward_warning(signum: int, step_pid: int, job_id: str, proc: Path = Path("/proc"),
                    kill: Callable[[int, int], None] = os.kill,
                    elsewhere: Callable[[], list[str]] | None = None) -> list[str]:
    """Deliver the batch shell's early warning to the pilot; where it went (``pid N``, ``HOST pid N``).

    Only rank 0 gets it when it can be found: rank 0 then stops every rank in order and the payloads are
    ended by the pilot, not by the signal.  Signalling the srun step instead would reach every process of
    the step, payloads included.  Rank 0 is looked for on this node, then (``elsewhere``, see
    hpcpilot/warningfanout.py) on the job's other nodes; only without a rank 0 anywhere (a single-rank
    pilot that is itself ``step_pid``, an unusual task layout) does ``step_pid`` get the signal, and srun
    relays it.
    """
    targets = pilot_rank0_pids(job_id, exclude=[step_pid], proc=proc)
    if not targets and elsewhere is not None:
        remote = elsewhere()
        if remote:
            return remote
    targets = targets or [step_pid]
    for pid in targets:
        try:
            kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            continue
    return [f"pid {pid}" for pid in targets]


def signal_rank0_here(signum: int, job_id: str, proc: Path = Path("/proc"),
                      kill: Callable[[int, int], None] = os.kill) -> list[int]:
    """The helper's part on one node (``forward-warning SIG --here``): signal rank 0 if it is on this node."""
    targets = pilot_rank0_pids(job_id, proc=proc)
    for pid in targets:
        try:
            kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            continue
    return targets


# --- generated files -------------------------------------------------------------------------------


def site_config_reference() -> str:
    """``site_configs/README.md``: every site config key with its default and meaning."""
    out = [
        "# Site configuration reference",
        "",
        "<!-- Generated by `python -m hpcpilot.slurm regenerate` from hpcpilot/config/schema.py; do not edit. -->",
        "",
        "One TOML file per site, one table per section. A file names only what differs from the defaults",
        "below. Precedence, lowest first: default < site file < `HPCPILOT_<SECTION>_<KEY>` environment",
        "variable < command line. Relative paths (such as `stage.input_dir`) are taken from the directory",
        "the pilot is started in. `$VARS` and `~` are expanded in paths. Every number must be finite and in",
        "its allowed range (times at most a year), `panda.server` is `\"\"` or an http(s) URL with a host, and",
        "text holds no NUL; anything else stops the pilot before it starts, in one line, exit status 2.",
        "",
        "Shipped sites:",
        "",
    ]
    for path in sorted(SITE_CONFIG_DIR.glob("*.toml")):
        config = load_config(path, environ=_NO_OVERRIDES)
        first = path.read_text().splitlines()[0].lstrip("# ").strip() if path.stat().st_size else ""
        out.append(f"- `{path.name}` ({config.site.name}, launcher `{config.launcher.kind}`): {first}")
    section = None
    for name, key, default, doc in documented_keys():
        if name != section:
            section = name
            out += ["", f"## [{name}]", "", "| key | default | meaning |", "|---|---|---|"]
        shown = repr(default).replace("'", '"').replace("|", "\\|")
        out.append(f"| `{key}` | `{shown}` | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(out) + "\n"


def example_pilot_args(site_file: Path) -> list[str]:
    """The pilot arguments used in the rendered examples (paths relative to the submit directory)."""
    return ["--site-config", f"site_configs/{site_file.name}", "--harvester-dir", "harvester",
            "--workdir", "pilot-work"]


def render_examples() -> dict[Path, str]:
    """``slurm/examples/<site>.sbatch`` for every shipped site config: path -> text."""
    out = {}
    for path in sorted(SITE_CONFIG_DIR.glob("*.toml")):
        config = load_config(path, environ=_NO_OVERRIDES)
        out[EXAMPLES_DIR / f"{path.stem}.sbatch"] = render_sbatch(config, example_pilot_args(path))
    return out


def regenerate() -> list[Path]:
    """Rewrite the generated files; returns those that changed."""
    wanted = render_examples()
    wanted[SITE_CONFIG_DIR / "README.md"] = site_config_reference()
    changed = []
    for path, text in wanted.items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    for stale in EXAMPLES_DIR.glob("*.sbatch"):
        if stale not in wanted:
            stale.unlink()
            changed.append(stale)
    return changed


def main(argv: list[str]) -> int:
    """``regenerate`` | ``forward-warning SIGNAL STEP_PID|--here`` (used by the batch script's trap)."""
    if argv == ["regenerate"]:
        for changed_path in regenerate():
            print(f"wrote {changed_path.relative_to(REPO_ROOT)}")
        return 0
    if len(argv) == 3 and argv[0] == "forward-warning" and (argv[2].isdigit() or argv[2] == "--here"):
        return _forward_warning_command(argv[1], argv[2])
    print("usage: python -m hpcpilot.slurm regenerate | forward-warning SIGNAL STEP_PID|--here", file=sys.stderr)
    return 2


def _forward_warning_command(name: str, where: str) -> int:
    """``forward-warning SIGNAL STEP_PID`` (the batch shell's trap) or ``forward-warning SIGNAL --here``
    (the helper srun runs on each node, see hpcpilot/warningfanout.py)."""
    from hpcpilot import warningfanout

    try:
        sig = signal_name(name)
    except ConfigError as exc:
        print(f"hpcpilot: {exc}", file=sys.stderr)
        return 2
    signum = signal.Signals["SIG" + sig]
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if where == "--here":
        print(warningfanout.found_lines(signal_rank0_here(signum, job_id)), end="", flush=True)
        return 0
    targets = forward_warning(signum, int(where), job_id,
                              elsewhere=lambda: warningfanout.signal_rank0_elsewhere(sig, os.environ))
    print(f"hpcpilot: sent SIG{sig} to {', '.join(targets)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
