"""Site configuration: one TOML file per site, typed, validated at load, overridable.

Every default the pilot uses lives in the dataclasses below (pilot3's defaults, from its
``default.cfg``), so a site file only names what differs.  Precedence, lowest first:
dataclass default < site TOML < ``HPCPILOT_<SECTION>_<KEY>`` environment variable < command
line.  The whole configuration is validated before anything starts: types, choices, every number finite and
within its key's ``Range`` (intervals > 0, counts >= 1, limits bounded), text without NUL, panda.server an http(s)
URL.  Each refusal is one line naming the file (or environment variable, or command line), the key, the value and
what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
import tomllib
import urllib.parse
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
    direct_access: bool = _doc("the site reads inputs in place: a job with transferType 'direct' gets its turls in "
                               "PoolFileCatalog.xml and --usePFCTurl --directIn, and its inputs are not copied", False)
    arc_output_files: bool = _doc("write OutputFiles.xml (ARC's list of the staged outputs) in the job workdir, for a "
                                  "NorduGrid-flavoured site", False)


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
    jobs_per_fetch: int = _doc("most jobs asked for in one getJob (nJobs); rank 0 asks for as many as ranks are "
                               "idle, up to this (the server sets no ceiling and may answer fewer)", 100)
    fetches_in_flight: int = _doc("job requests under way at once while ranks are idle, if the job source can "
                                  "take them in parallel (a Harvester access point takes one)", 4)
    senders: int = _doc("threads delivering queued updates at once, each owning the jobs whose PandaID modulo "
                        "this is its number (one job's updates stay in order; 1 = one at a time)", 4)
    getjob_failures: int = _doc("end the pilot after this many failed job requests in a row with nothing "
                                "running (pilot3's --getjob-failures)", 5)
    ca_dir: str = _doc("CA directory ('' = $X509_CERT_DIR or the system store)", "")
    credential_min_lifetime: float = _doc("lease nothing when the X.509 proxy or token has less than this left at "
                                          "start (s): PROXYTOOSHORT 1382 (0 = no credential checks)", 3600.0)
    proxy_check_interval: float = _doc("seconds between looks at the proxy's and token's remaining lifetime "
                                       "(pilot3's proxy_verification_time)", 600.0)


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
class HarvesterConfig:
    """A Harvester access point (--harvester-dir): who moves files, late binding, and the file names, which mirror
    Harvester's per-queue [payload_interaction] keys (named in each key's meaning)."""

    stage: str = _doc("who moves files: harvester (inputs used where Harvester placed them, outputs declared where "
                      "the job wrote them) | pilot (the [stage] copy tools)", "harvester")
    feed_timeout: float = _doc("seconds to wait for Harvester to answer a job or event-range request before "
                               "concluding none is coming (0 = never ask: run what the access point holds)", 300.0)
    poll_interval: float = _doc("seconds between looks at the access point while a request is open", 10.0)
    status_interval: float = _doc("seconds event-range statuses gather before event_status is written (and at "
                                  "the end; a job's outputs at once): a killed pilot loses at most that much, "
                                  "which Harvester re-dispatches (0 = write at every report)", 2.0)
    job_spec_file: str = _doc("jobSpecFile: the job definition(s)", "HPCJobs.json")
    job_spec_format: str = _doc("jobSpecFileFormat: json ({PandaID: job}) | cgi (one URL-encoded job)", "json")
    event_ranges_file: str = _doc("eventRangesFile: event ranges fed by Harvester", "JobsEventRanges.json")
    attributes_file: str = _doc("jsonAttrsFileName: a job's state and metrics", "worker_attributes.json")
    event_status_file: str = _doc("jsonOutputsFileName: event statuses and files to stage out",
                                  "event_status.dump.json")
    job_request_file: str = _doc("jsonJobRequestFileName: the pilot asks for jobs", "worker_requestjob.json")
    events_request_file: str = _doc("jsonEventsRequestFileName: the pilot asks for event ranges",
                                    "worker_requestevents.json")
    kill_worker_file: str = _doc("killWorkerFile: the worker is done", "kill_worker.json")
    heartbeat_file: str = _doc("heartbeatFile: the worker is alive", "worker_heartbeat.json")
    pool_catalog_file: str = _doc("xmlPoolCatalogFile: the inputs Harvester placed", "PoolFileCatalog_H.xml")
    job_report_file: str = _doc("jobReportFile: a job's report (its metaData)", "jobReport.json")


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
    harvester: HarvesterConfig = field(default_factory=HarvesterConfig)
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

    def to_toml(self) -> str:
        """Every key with its effective value as a site file (``W/config.effective.toml``): load it back to rerun
        with exactly this configuration."""
        lines = [f"# effective configuration from {self.source}, environment and command line"]
        for section_name, section in self.sections().items():
            lines += ["", f"[{section_name}]"]
            lines += [f"{f.name} = {_toml_value(getattr(section, f.name))}" for f in fields(section)]
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    """A validated config value in TOML (JSON's string escapes are TOML's; numbers are finite)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("launcher", "kind"): ("local", "mpiexec", "mpirun", "srun"),
    ("stage", "copytool_in"): ("cp", "mv", "symlink"),
    ("stage", "copytool_out"): ("cp", "mv", "symlink"),
    ("stage", "checksum_type"): ("adler32", "md5"),
    ("panda", "api"): ("v1", "legacy", "auto"),
    ("eventservice", "payload_mode"): ("per-range", "protocol", "noop"),
    ("harvester", "stage"): ("harvester", "pilot"),
    ("harvester", "job_spec_format"): ("json", "cgi"),
}


@dataclass(frozen=True)
class Range:
    """Where a numeric key must lie (always finite).

    A value outside is a typo or a unit mistake, never a wish: refused at start it costs a minute, accepted it
    costs an allocation (a nan interval never fires, 0 spins, a 20-digit limit overflows a sleep or a deadline).
    """

    low: int | float
    high: int | float
    above_low: bool = False  # the value must be strictly greater than ``low``

    def admits(self, value: float) -> bool:
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.above_low else value >= self.low

    def text(self) -> str:
        return f"{'>' if self.above_low else '>='} {self.low} and <= {self.high}"


MAX_SECONDS = 366 * 24 * 3600  # one year: longer than any allocation, job, heartbeat or timeout a site means
MAX_COUNT = 10**6  # more nodes, ranks, jobs per request or events per bundle than any machine has
MAX_SIZE = 10**12  # in the key's unit (kB or MB): beyond any disk, only refuses runaway digits
MAX_PERCENT = 10**4  # a grace of 100 times the limit
MAX_FETCHES_IN_FLIGHT = 64  # each is a thread at rank 0; more would only queue at the server
MAX_SENDERS = 64  # each is a sender thread at rank 0 with its own HTTP request in flight
INTERVAL = Range(0, MAX_SECONDS, above_low=True)  # a period or timeout: 0 would spin or never wait
DURATION = Range(0, MAX_SECONDS)  # a time where 0 means off, unlimited or at once (as documented per key)
COUNT = Range(1, MAX_COUNT)
SIZE = Range(0, MAX_SIZE)  # 0 = no limit or no check
PERCENT = Range(0, MAX_PERCENT)
INT64 = Range(-(2**63), 2**63 - 1)  # identifiers PanDA stores as database integers

_RANGES: dict[tuple[str, str], Range] = {
    ("site", "stagger_seconds"): DURATION,
    ("launcher", "nodes"): COUNT,
    ("launcher", "ranks_per_node"): COUNT,
    ("launcher", "cores_per_node"): Range(0, MAX_COUNT),
    ("launcher", "time_minutes"): Range(1, MAX_SECONDS // 60),
    ("launcher", "warning_seconds"): DURATION,
    ("walltime", "limit"): DURATION,
    ("walltime", "margin"): DURATION,
    **{("monitor", key): INTERVAL for key in ("report_interval", "memory_check_interval", "disk_check_interval",
                                              "looping_check_interval", "status_interval")},
    ("monitor", "looping_limit"): DURATION,
    ("monitor", "kill_grace"): DURATION,
    ("monitor", "lost_rank_intervals"): COUNT,
    **{("monitor", key): SIZE for key in ("free_space_start_mb", "free_space_running_mb", "stdout_limit_kb",
                                          "max_output_file_mb", "max_workdir_mb", "default_ram_per_core_mb")},
    ("monitor", "workdir_grace_percent"): PERCENT,
    ("monitor", "rss_grace_percent"): PERCENT,
    ("stage", "timeout_base"): INTERVAL,
    ("stage", "timeout_max"): INTERVAL,
    **{("panda", key): INTERVAL for key in ("heartbeat", "debug_heartbeat", "lost_heartbeat", "connect_timeout",
                                            "read_timeout", "call_deadline", "retry_initial", "retry_max")},
    ("panda", "jobs_per_fetch"): COUNT,
    ("panda", "fetches_in_flight"): Range(1, MAX_FETCHES_IN_FLIGHT),
    ("panda", "senders"): Range(1, MAX_SENDERS),
    ("panda", "credential_min_lifetime"): DURATION,
    ("panda", "proxy_check_interval"): INTERVAL,
    ("eventservice", "ranges_per_request"): COUNT,
    ("eventservice", "prefetch_seconds"): DURATION,
    ("eventservice", "bundle_events"): COUNT,
    ("eventservice", "bundle_seconds"): INTERVAL,
    ("eventservice", "objstore_id"): INT64,
    ("eventservice", "path_convention"): INT64,
    ("eventservice", "report_interval"): DURATION,
    ("harvester", "feed_timeout"): DURATION,
    ("harvester", "poll_interval"): INTERVAL,
    ("harvester", "status_interval"): DURATION,
}
DEFAULT_RANGE = SIZE  # a numeric key not listed above: not negative, and bounded


def value_range(section: str, key: str) -> Range:
    """The allowed range of a numeric key (the one place that says it, shown in site_configs/README.md)."""
    return _RANGES.get((section, key), DEFAULT_RANGE)


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80
_SHOW.maxlevel = 3


def _show(value: Any) -> str:
    """A hostile value for a one-line message: repr (control characters escaped), bounded in length and depth."""
    return _SHOW.repr(value)


def _name(name: Any) -> str:
    """A section or key name as typed, unless it holds something that would break the line or flood it."""
    return name if isinstance(name, str) and name.isprintable() and len(name) <= 80 else _show(name)


def _coerce(value: Any, expected: type, where: str) -> Any:
    """Check one value against its declared type; strings (env, CLI) are converted, other types are not."""
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
    if expected in (int, float):
        return _coerce_number(value, expected, where)
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    # list[str]
    if isinstance(value, str):
        return [v for v in value.split() if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a list of strings, got {_show(value)}")


def _coerce_number(value: Any, expected: type, where: str) -> int | float:
    """An int or float key's value; a TOML float for an int key is refused, not truncated."""
    if isinstance(value, int | float) and not isinstance(value, bool) and (expected is float or isinstance(value, int)):
        try:
            return expected(value)  # type: ignore[no-any-return]
        except OverflowError:  # an integer beyond any float: out of every range
            return math.inf
    if isinstance(value, str):
        try:
            return expected(value.strip())  # type: ignore[no-any-return]
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {'an integer' if expected is int else 'a number'}, got {_show(value)}")


def _check_text(typed: str | list[str], where: str) -> None:
    """Text goes into paths, argv and the environment: a NUL or an unencodable character can reach none of them."""
    for item in typed if isinstance(typed, list) else [typed]:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{where}: expected UTF-8 text, got {_show(typed)}") from None
        if "\0" in item:
            raise ConfigError(f"{where}: expected text without NUL characters, got {_show(typed)}")


_SERVER_EXPECTED = "'' or an http:// or https:// URL with a host"


def _split_url(url: str) -> urllib.parse.SplitResult | None:
    """``url`` split, or None when no HTTP client could ever reach it (scheme, host, port, blanks)."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0  # .port raises ValueError for a bad port
    except ValueError:
        return None
    return parts if port_ok and parts.scheme in ("http", "https") and parts.hostname else None


def _check_server(url: str, where: str) -> None:
    """panda.server: '' or a well-formed http(s) URL.

    Any other URL can never be reached, so it is a configuration error at start rather than a fault retried until
    the walltime.  A user or password in it is refused without echoing it: the server URL is logged.
    """
    if not url:
        return
    parts = _split_url(url)
    if parts is None:
        raise ConfigError(f"{where}: expected {_SERVER_EXPECTED}, got {_show(url)}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: expected {_SERVER_EXPECTED} and no user or password (the URL is logged), "
                          f"got a URL with credentials for {_show(parts.hostname)}")


_TEXT_CHECKS = {("panda", "server"): _check_server}


def _validate_key(cls: type, section: str, key: str, value: Any, origin: str) -> Any:
    """Check one key of a section and return its typed value; the error names origin, key, value and the rule."""
    hints = get_type_hints(cls)
    if key not in hints:
        known = ", ".join(sorted(f.name for f in fields(cls)))
        raise ConfigError(f"{origin}: unknown key '{section}.{_name(key)}' (known: {known})")
    where = f"{origin}: key '{section}.{key}'"
    expected = hints[key]
    typed = _coerce(value, list if expected == list[str] else expected, where)
    if isinstance(typed, str | list):
        _check_text(typed, where)
        if (section, key) in _TEXT_CHECKS:
            _TEXT_CHECKS[(section, key)](typed, where)
    choices = _CHOICES.get((section, key))
    if choices and typed not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {_show(typed)}")
    if isinstance(typed, int | float) and not isinstance(typed, bool):
        allowed = value_range(section, key)
        if not allowed.admits(typed):
            kind = "an integer" if isinstance(typed, int) else "a number"
            raise ConfigError(f"{where}: expected {kind} {allowed.text()}, got {_show(typed)}")
    return typed


Layer = dict[str, dict[str, tuple[Any, str]]]  # section -> key -> (value, where it came from)


def _env_overrides(environ: Mapping[str, str]) -> Layer:
    """``HPCPILOT_MONITOR_LOOPING_LIMIT=60`` -> {"monitor": {"looping_limit": ("60", "environment HPCPILOT_...")}}."""
    out: Layer = {}
    section_names = [f.name for f in fields(SiteConfig) if f.name != "source"]
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX):].lower()
        for section in section_names:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1:]] = (value, f"environment {_name(key)}")
                break
    return out


def _tagged(layer: Mapping[str, Any], origin: str) -> Layer:
    """A file's or the command line's sections with their origin; a section that is not a table is refused."""
    out: Layer = {}
    for section, values in layer.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: '{_name(section)}' must be a table of keys, got {_show(values)}")
        out[section] = {key: (value, origin) for key, value in values.items()}
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _read_toml(path: str | os.PathLike[str], origin: str) -> dict[str, Any]:
    """The parsed file; every way reading it can fail is one ConfigError line naming the file.

    Beyond syntax that covers bytes that are not UTF-8, nesting deeper than the parser's recursion limit and
    integers longer than Python converts: tomllib raises UnicodeDecodeError, RecursionError and ValueError
    for those, not TOMLDecodeError.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{origin}: no such site config file") from None
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read site config ({exc.strerror or _one_line(exc)})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
                          ) from None
    except RecursionError:
        raise ConfigError(f"{origin}: not usable TOML (arrays or tables nested too deeply)") from None
    except ValueError as exc:  # TOMLDecodeError, or a number of thousands of digits
        raise ConfigError(f"{origin}: not valid TOML ({_one_line(exc)})") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SiteConfig:
    """Load a site config file (or defaults), apply environment and command-line overrides, validate the whole.

    Every refusal is a ConfigError of one line naming where the value came from (file, environment variable or
    command line), the key, the value and what was expected.
    """
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = _name(str(path))
        raw = _read_toml(path, origin)
    merged: Layer = {}
    env = _env_overrides(os.environ if environ is None else environ)
    for layer in (_tagged(raw, origin), env, _tagged(overrides or {}, "command line")):
        for section, entries in layer.items():
            merged.setdefault(section, {}).update(entries)
    config = _assemble(merged, origin)
    _check_walltime(config, merged)
    return config


def _assemble(merged: Layer, origin: str) -> SiteConfig:
    section_types = {f.name: f.default_factory for f in fields(SiteConfig) if f.name != "source"}  # type: ignore[misc]
    built: dict[str, Any] = {}
    for section, entries in merged.items():
        if section not in section_types:
            first_origin = next(iter(entries.values()))[1] if entries else origin
            raise ConfigError(f"{first_origin}: unknown section '{_name(section)}' "
                              f"(known: {', '.join(section_types)})")
        cls = section_types[section]
        values = {key: _validate_key(cls, section, key, value, key_origin)
                  for key, (value, key_origin) in entries.items()}
        built[section] = cls(**values)
    return SiteConfig(**built, source=origin)


def _check_walltime(config: SiteConfig, merged: Layer) -> None:
    """A set walltime.limit must exceed walltime.margin: else the guard winds the pilot down before any job."""
    limit, margin = config.walltime.limit, config.walltime.margin
    if limit and margin >= limit:
        given = merged.get("walltime", {})
        limit_origin = given.get("limit", (limit, config.source))[1]
        margin_origin = given.get("margin", (margin, "the default"))[1]
        raise ConfigError(f"{limit_origin}: key 'walltime.limit': expected more than walltime.margin "
                          f"({margin} s, from {margin_origin}), got {limit}")


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
            default = getattr(section, sf.name)
            doc = sf.metadata.get("doc", "")
            if isinstance(default, int | float) and not isinstance(default, bool):
                doc = f"{doc}; allowed: {value_range(f.name, sf.name).text()}"
            out.append((f.name, sf.name, default, doc))
    return out


def resolve_path(value: str, base: Path) -> Path:
    """Expand ``$VARS`` and ``~`` in a configured path; relative paths are taken from ``base``."""
    expanded = Path(os.path.expandvars(os.path.expanduser(value)))
    return expanded if expanded.is_absolute() else base / expanded
