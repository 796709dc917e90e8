"""Site configuration: one TOML file per site, typed, validated at load, overridable.

Every default the pilot uses lives in the dataclasses below (pilot3's defaults, from its
``default.cfg``), so a site file only names what differs.  Precedence, lowest first:
dataclass default < site TOML < ``HPCPILOT_<SECTION>_<KEY>`` environment variable < command
line.  Validation errors name the file, the key and what was expected, in one line.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from hpcpilot.errors import ConfigError

ENV_PREFIX = "HPCPILOT_"


def _doc(text: str, default: Any) -> Any:
    """A dataclass field with its documentation kept in metadata (for check-config and the README)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class SiteSection:
    """Who and where the pilot is."""

    name: str = _doc("site name, for logs and summaries", "generic")
    queue: str = _doc("PanDA queue name, sent as siteName/computingElement", "")
    experiment: str = _doc("experiment plug-in name", "generic")
    prod_source_label: str = _doc("prodSourceLabel sent to getJob", "managed")
    resource_type: str = _doc("resourceType sent to getJob (SCORE, MCORE, ...)", "")
    local_scratch: str = _doc("node-local directory for per-rank job workdirs ('' = under --workdir)", "")
    stagger_seconds: float = _doc("spread rank start-up over this many seconds (0 = off)", 0.0)


@dataclass(frozen=True)
class LauncherConfig:
    """How the ranks are started (used by launchers and render-sbatch)."""

    kind: str = _doc("local | mpiexec | mpirun | srun", "local")
    nodes: int = _doc("nodes in the allocation", 1)
    ranks_per_node: int = _doc("MPI ranks per node", 1)
    cores_per_node: int = _doc("cores per node (for CPU efficiency and sbatch)", 0)
    mpi: str = _doc("srun --mpi plugin: pmi2 for MPICH, pmix for Open MPI", "pmi2")
    partition: str = _doc("Slurm partition ('' = default)", "")
    account: str = _doc("Slurm account ('' = none)", "")
    qos: str = _doc("Slurm QOS ('' = none)", "")
    constraint: str = _doc("Slurm constraint ('' = none)", "")
    time_minutes: int = _doc("Slurm time limit of the allocation in minutes", 60)
    warning_signal: str = _doc("signal Slurm sends before the limit (--signal)", "USR1")
    warning_seconds: int = _doc("seconds before the limit for the warning signal", 300)
    extra_options: list[str] = _doc("extra launcher options, passed as given", [])  # noqa: RUF009 - a factory


@dataclass(frozen=True)
class WalltimeConfig:
    """The allocation's end and the guard before it."""

    limit: int = _doc("pilot walltime in seconds (0 = from Slurm or unlimited)", 0)
    margin: int = _doc("stop new work and wind down this many seconds before the end", 600)


@dataclass(frozen=True)
class MonitorConfig:
    """Monitoring intervals and limits (pilot3 defaults)."""

    report_interval: float = _doc("seconds between a rank's monitoring reports to rank 0", 10.0)
    memory_check_interval: float = _doc("seconds between memory checks", 60.0)
    disk_check_interval: float = _doc("seconds between disk, stdout and workdir checks", 60.0)
    looping_check_interval: float = _doc("seconds between looping checks", 900.0)
    looping_limit: float = _doc("no file modified for this long = looping (s)", 7200.0)
    stdout_is_activity: bool = _doc("does a growing payload.stdout count as activity for looping", False)
    free_space_start_mb: int = _doc("free local space needed to start a job (MB)", 2048)
    free_space_running_mb: int = _doc("free local space needed while running (MB)", 1024)
    stdout_limit_kb: int = _doc("largest payload stdout (kB)", 2097152)
    max_output_file_mb: int = _doc("largest output file (MB)", 512000)
    max_workdir_mb: int = _doc("largest job workdir (MB, 0 = no limit)", 0)
    workdir_grace_percent: float = _doc("grace on max_workdir_mb (%)", 20.0)
    rss_grace_percent: float = _doc("grace on the job memory limit, minRamCount (%)", 100.0)
    default_ram_per_core_mb: int = _doc("per-core memory when the job gives no minRamCount (MB)", 2000)
    use_cgroup: bool = _doc("put payloads into their own memory cgroup where possible", True)
    kill_grace: float = _doc("seconds between SIGTERM and SIGKILL of a payload", 10.0)
    lost_rank_intervals: int = _doc("a rank silent for this many report intervals is lost", 6)
    status_interval: float = _doc("seconds between rank 0's one-line status logs", 60.0)


@dataclass(frozen=True)
class StageConfig:
    """Stage-in and stage-out with site copy tools."""

    copytool_in: str = _doc("copy tool for inputs: cp | mv | symlink", "cp")
    copytool_out: str = _doc("copy tool for outputs: cp | mv | symlink", "cp")
    input_dir: str = _doc("site directory the inputs are staged in from", "")
    output_dir: str = _doc("site directory the outputs are staged out to", "")
    timeout_base: float = _doc("transfer timeout base (s); plus size / 1 MB/s", 400.0)
    timeout_max: float = _doc("transfer timeout cap (s)", 10800.0)
    checksum_type: str = _doc("checksum of outputs: adler32 | md5", "adler32")


@dataclass(frozen=True)
class PandaConfig:
    """The PanDA server connection (rank 0 only)."""

    server: str = _doc("PanDA server base URL ('' = use a Harvester access point)", "")
    api: str = _doc("v1 | legacy | auto", "auto")
    heartbeat: float = _doc("seconds between job heartbeats", 1800.0)
    debug_heartbeat: float = _doc("seconds between heartbeats in debug mode", 300.0)
    lost_heartbeat: float = _doc("abort jobs after this long without a successful update (s)", 10800.0)
    connect_timeout: float = _doc("HTTP connect timeout (s)", 100.0)
    read_timeout: float = _doc("HTTP read timeout (s)", 120.0)
    call_deadline: float = _doc("give up one call (all retries) after this long (s)", 600.0)
    retry_initial: float = _doc("first retry back-off (s)", 1.0)
    retry_max: float = _doc("longest retry back-off (s)", 120.0)
    jobs_per_fetch: int = _doc("most jobs asked for in one getJob", 8)
    ca_dir: str = _doc("CA directory ('' = $X509_CERT_DIR or the system store)", "")


@dataclass(frozen=True)
class EventServiceConfig:
    """Event-service settings."""

    payload_mode: str = _doc("per-range | protocol (AthenaMP messages over a local socket) | noop "
                             "(benchmarks of rank 0 only: ranges finish without running anything)", "per-range")
    range_command: str = _doc("command template run once per range (per-range mode)", "")
    ranges_per_request: int = _doc("ranges a rank asks for at once", 2)
    prefetch_seconds: float = _doc("lease ranges this many seconds of consumption ahead", 30.0)
    bundle_events: int = _doc("events per output zip bundle", 100)
    bundle_seconds: float = _doc("close an output bundle after this many seconds", 600.0)
    objstore_id: int = _doc("objstoreID reported for zip bundles", -1)
    path_convention: int = _doc("pathConvention reported for zip bundles", 1000)
    report_interval: float = _doc("seconds between event status reports", 10.0)


@dataclass(frozen=True)
class SiteConfig:
    """The whole site configuration, one typed object."""

    site: SiteSection = field(default_factory=SiteSection)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    walltime: WalltimeConfig = field(default_factory=WalltimeConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    panda: PandaConfig = field(default_factory=PandaConfig)
    eventservice: EventServiceConfig = field(default_factory=EventServiceConfig)
    source: str = "<defaults>"

    def describe(self) -> str:
        """One line per key with its effective value, for rank 0's start-up log."""
        lines = [f"site config {self.source}:"]
        for section_name, section in self.sections().items():
            for f in fields(section):
                lines.append(f"  {section_name}.{f.name} = {getattr(section, f.name)!r}")
        return "\n".join(lines)

    def sections(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("launcher", "kind"): ("local", "mpiexec", "mpirun", "srun"),
    ("stage", "copytool_in"): ("cp", "mv", "symlink"),
    ("stage", "copytool_out"): ("cp", "mv", "symlink"),
    ("stage", "checksum_type"): ("adler32", "md5"),
    ("panda", "api"): ("v1", "legacy", "auto"),
    ("eventservice", "payload_mode"): ("per-range", "protocol", "noop"),
}


def _coerce(value: Any, expected: type, where: str) -> Any:
    """Check one value against its declared type; strings (env, CLI) are converted."""
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if expected in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, int | float) and (expected is float or isinstance(value, int)):
            return expected(value)
        try:
            return expected(str(value))
        except ValueError:
            raise ConfigError(f"{where}: expected {'an integer' if expected is int else 'a number'}, "
                              f"got {value!r}") from None
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    # list[str]
    if isinstance(value, str):
        return [v for v in value.split() if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a list of strings, got {value!r}")


def _validate_key(cls: type, section: str, key: str, value: Any, origin: str) -> Any:
    """Check one key of a section and return its typed value; the error names origin and key."""
    hints = get_type_hints(cls)
    if key not in hints:
        known = ", ".join(sorted(f.name for f in fields(cls)))
        raise ConfigError(f"{origin}: unknown key '{section}.{key}' (known: {known})")
    where = f"{origin}: key '{section}.{key}'"
    expected = hints[key]
    typed = _coerce(value, list if expected == list[str] else expected, where)
    choices = _CHOICES.get((section, key))
    if choices and typed not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {typed!r}")
    if isinstance(typed, int | float) and not isinstance(typed, bool) and typed < 0:
        raise ConfigError(f"{where}: expected a value >= 0, got {typed!r}")
    return typed


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``HPCPILOT_MONITOR_LOOPING_LIMIT=60`` -> {"monitor": {"looping_limit": "60"}}."""
    out: dict[str, dict[str, str]] = {}
    section_names = [f.name for f in fields(SiteConfig) if f.name != "source"]
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX):].lower()
        for section in section_names:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1:]] = value
                break
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SiteConfig:
    """Load a site config file (or defaults), then apply environment and command-line overrides."""
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = str(path)
        try:
            with open(path, "rb") as handle:
                raw = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{origin}: no such site config file") from None
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read site config ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: not valid TOML ({exc})") from None
    merged: dict[str, dict[str, Any]] = {}
    env = _env_overrides(os.environ if environ is None else environ)
    for layer, layer_origin in ((raw, origin), (env, "environment"), (overrides or {}, "command line")):
        for section, values in layer.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"{layer_origin}: '{section}' must be a table of keys")
            merged.setdefault(section, {}).update({k: (v, layer_origin) for k, v in values.items()})
    return _assemble(merged, origin)


def _assemble(merged: dict[str, dict[str, Any]], origin: str) -> SiteConfig:
    section_types = {f.name: f.default_factory for f in fields(SiteConfig) if f.name != "source"}  # type: ignore[misc]
    built: dict[str, Any] = {}
    for section, entries in merged.items():
        if section not in section_types:
            first_origin = next(iter(entries.values()))[1] if entries else origin
            raise ConfigError(f"{first_origin}: unknown section '{section}' "
                              f"(known: {', '.join(section_types)})")
        cls = section_types[section]
        values = {key: _validate_key(cls, section, key, value, key_origin)
                  for key, (value, key_origin) in entries.items()}
        built[section] = cls(**values)
    return SiteConfig(**built, source=origin)


def replace(config: SiteConfig, section: str, **changes: Any) -> SiteConfig:
    """A copy of ``config`` with some keys of one section changed (for tests and the CLI)."""
    updated = dataclasses.replace(getattr(config, section), **changes)
    return dataclasses.replace(config, **{section: updated})


def documented_keys() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, doc) for every key, for the README and check-config."""
    out = []
    for f in fields(SiteConfig):
        if f.name == "source":
            continue
        section = f.default_factory()  # type: ignore[misc]
        for sf in fields(section):
            out.append((f.name, sf.name, getattr(section, sf.name), sf.metadata.get("doc", "")))
    return out


def resolve_path(value: str, base: Path) -> Path:
    """Expand ``$VARS`` and ``~`` in a configured path; relative paths are taken from ``base``."""
    expanded = Path(os.path.expandvars(os.path.expanduser(value)))
    return expanded if expanded.is_absolute() else base / expanded
