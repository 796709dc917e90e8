"""The site configuration's schema: every section and key, its type, its default and what it means.

Every default the pilot uses lives in the dataclasses below (pilot3's defaults, from its ``default.cfg``), so a
site file only names what differs; each key's documentation is kept beside it (``documented_keys``: the README
and check-config show it).  Loading and precedence are in ``hpcpilot.config.load``, the rules a value must
follow in ``hpcpilot.config.rules``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hpcpilot.config.rules import value_range


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
class ContainerConfig:
    """The runtime payloads run in (hpcpilot.container): a job names its image (container_name or
    --containerImage), the site names the runtime, what every container binds and the image for jobs naming none."""

    runtime: str = _doc("none (bare node) | apptainer | singularity | podman | podman-hpc | shifter | charliecloud",
                        "none")
    image: str = _doc("image for jobs that name none ('' = such jobs run on the bare node)", "")
    binds: list[str] = _doc("host paths bound into every container: HOST (at the same path) or HOST:CTR "  # noqa: RUF009
                            "(e.g. /cvmfs)", [])
    options: str = _doc("extra runtime options, split like a shell line and put before the image", "")
    executable: str = _doc("the runtime's program ('' = the runtime's name looked up on PATH)", "")


@dataclass(frozen=True)
class GpuConfig:
    """How a node's GPUs are shared among its ranks (hpcpilot.gpu): the rule per rank, and a per-payload limit."""

    bind: str = _doc("auto (split the node's GPUs by node-local rank, unless Slurm bound the task) | none (every "
                     "rank sees every GPU) | slurm (keep what Slurm set; refuse nothing)", "auto")
    per_rank: int = _doc("GPUs (Intel: tiles) each rank gets; 0 = the node's GPUs divided evenly among its ranks", 0)
    share: bool = _doc("let two ranks share a GPU when the node has fewer GPUs than ranks (else the rest get none)",
                       False)
    memory_limit_mb: int = _doc("GPU memory one payload may use on any of its GPUs, MB (0 = no limit)", 0)


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
    container: ContainerConfig = field(default_factory=ContainerConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
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
