"""The ``hpcpilot`` command: run, check-config, render-sbatch, serve, report.

``main`` never lets a traceback reach the user for bad input: configuration and access
point problems end in one line and exit status 2.  Under MPI an uncaught exception on any
rank aborts the whole job (MPI Abort) instead of leaving the other ranks hanging in
MPI_Finalize until the allocation ends.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcpilot import __version__
from hpcpilot.config import SiteConfig, documented_keys, load_config, parse_overrides, replace
from hpcpilot.credentials import CredentialGuard
from hpcpilot.errors import EXIT_STATUSES, ConfigError, cutting_signal, exit_status_for_signal, pilot_exit_status
from hpcpilot.log import LOG_FORMATS, setup_logging
from hpcpilot.panda.deliver import add_deliver_parser, run_deliver

log = logging.getLogger("hpcpilot")
EFFECTIVE_CONFIG = "config.effective.toml"


def _run_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = parse_overrides(args.set or [])
    if args.server:
        overrides.setdefault("panda", {})["server"] = args.server
    if args.queue:
        overrides.setdefault("site", {})["queue"] = args.queue
    if args.walltime is not None:
        overrides.setdefault("walltime", {})["limit"] = args.walltime
    return overrides


def _exit_status_epilog() -> str:
    """``run --help``'s list of exit statuses, from the one table in hpcpilot.errors."""
    import textwrap

    return "exit status:\n" + "\n".join(textwrap.fill(meaning, 100, initial_indent=f"  {status:<7}",
                                                       subsequent_indent=" " * 9)
                                         for status, meaning in EXIT_STATUSES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcpilot", description="An MPI pilot for PanDA jobs on HPC machines.")
    parser.add_argument("--version", action="version", version=f"hpcpilot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pilot (one rank, or every rank of an MPI launch)",
                         epilog=_exit_status_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--site-config", type=Path, help="site configuration TOML file")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--harvester-dir", type=Path, help="Harvester access point holding HPCJobs.json")
    source.add_argument("--server", help="PanDA server URL (overrides panda.server)")
    run.add_argument("--queue", help="PanDA queue (overrides site.queue)")
    run.add_argument("--workdir", type=Path, default=Path("hpcpilot-work"), help="pilot work directory")
    run.add_argument("--walltime", type=int, help="pilot walltime in seconds (overrides walltime.limit)")
    run.add_argument("--max-jobs", type=int, help="lease at most this many jobs")
    run.add_argument("--log-dir", type=Path, help="one log file per rank here (default: stderr)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--log-format", default="text", choices=list(LOG_FORMATS),
                     help="text: '[rank r/N host]' lines; json: one JSON object per line (UTC times)")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config key")

    check = sub.add_parser("check-config", help="validate a site configuration and print its effective values "
                                                 "(with HPCPILOT_* variables and --set, as run uses it)")
    check.add_argument("file", type=Path)
    check.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config key")

    render = sub.add_parser("render-sbatch", help="print an sbatch script for a site configuration")
    render.add_argument("--site-config", type=Path, required=True)
    render.add_argument("--job-name", default="hpcpilot")
    render.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one config key, for the script and for the srun line's 'hpcpilot run'")
    render.add_argument("pilot_args", nargs=argparse.REMAINDER, help="arguments for 'hpcpilot run' (after --)")

    from hpcpilot.livestatus import add_status_parser
    from hpcpilot.report import add_report_parser

    _add_serve_parser(sub)
    add_deliver_parser(sub)
    add_report_parser(sub)
    add_status_parser(sub)
    return parser


SERVE_PACKAGE = "hpcpilot_serve"
SERVE_MISSING = ("hpcpilot serve: the PanDA test server is not installed: pip install ./serve "
                 "(hpcpilot-serve, in the hpcpilot repository)")


def _add_serve_parser(sub: Any) -> None:
    """``hpcpilot serve``, delegated to the hpcpilot-serve distribution (``serve/``) where it is installed.

    hpcpilot-serve is an optional extra that depends on hpcpilot, not a part of it: the hpcpilot wheel holds
    no HTTP server.  It is looked up by name with importlib, so nothing in hpcpilot imports it; this is not a
    hidden import cycle, as hpcpilot_serve never imports hpcpilot.cli.  Without it ``serve`` takes any
    arguments and refuses in one line, so someone trying the pilot on a laptop learns what to install.
    """
    if importlib.util.find_spec(SERVE_PACKAGE) is not None:
        importlib.import_module(f"{SERVE_PACKAGE}.cli").add_serve_parser(sub)
        return
    missing = sub.add_parser("serve", help="run a local PanDA test server (needs hpcpilot-serve: pip install "
                                           "./serve)", add_help=False, prefix_chars="\0")  # every argument as is
    missing.add_argument("ignored", nargs="*")
    missing.set_defaults(func=_serve_missing)


def _serve_missing(_args: argparse.Namespace) -> int:
    print(SERVE_MISSING, file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        if args.command != "run" or _launcher_rank(os.environ) == 0:  # every rank of a launch refuses alike
            print(f"hpcpilot: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print(f"hpcpilot {args.command}: interrupted", file=sys.stderr)
        return exit_status_for_signal(signal.SIGINT)
    except OSError as exc:  # a busy port, a path that is not there: the operator needs the one line, not a trace
        print(f"hpcpilot {args.command}: {_os_error_line(exc)}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    """Run one sub-command (the slow imports only for the command that needs them)."""
    if args.command == "run":
        return run_command(args)
    if args.command == "check-config":
        return check_config(args.file, args.set or [])
    if args.command == "render-sbatch":
        return render_sbatch(args)
    if args.command == "serve":
        return args.func(args)  # hpcpilot_serve's run_serve, or the one-line refusal where it is not installed
    if args.command == "deliver":
        return run_deliver(args)
    if args.command == "report":
        from hpcpilot.report import report_main

        return report_main(args)
    if args.command == "status":
        from hpcpilot.livestatus import status_main

        return status_main(args)
    return 2


def _os_error_line(exc: OSError) -> str:
    """``<what failed>: <strerror>`` for an OSError, naming the file or address when it has one."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}" + (f" (errno {exc.errno})" if exc.errno else "")


def _closed_pipe() -> int:
    """The reader of our stdout went away (``| head``): stop quietly, as a SIGPIPE'd tool would, without the
    interpreter's own BrokenPipeError report when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    print("hpcpilot: output closed early (broken pipe)", file=sys.stderr)
    return exit_status_for_signal(signal.SIGPIPE)


def _launcher_rank(environ: Mapping[str, str]) -> int:
    """This process's rank as the launcher set it (0 when not launched as one of several), read before MPI starts."""
    from hpcpilot.slurm import RANK_VARIABLES

    for name in RANK_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def check_config(path: Path, settings: list[str]) -> int:
    """The configuration ``run`` would use with this file: HPCPILOT_* variables and ``--set`` applied."""
    config = load_config(path, parse_overrides(settings))
    print(config.describe())
    print(f"{path}: OK ({len(documented_keys())} keys known)")
    return 0


def render_sbatch(args: argparse.Namespace) -> int:
    """The batch script; its srun line always carries the site config and every ``--set``, before the
    arguments given after ``--``, so the batch job runs with the configuration the script was rendered for."""
    from hpcpilot.slurm import render_sbatch as render

    settings = args.set or []
    config = load_config(args.site_config, parse_overrides(settings))
    extra = args.pilot_args[1:] if args.pilot_args[:1] == ["--"] else args.pilot_args
    pilot_args = ["--site-config", str(args.site_config)]
    for setting in settings:
        pilot_args += ["--set", setting]
    sys.stdout.write(render(config, [*pilot_args, *extra], job_name=args.job_name))
    return 0


# ---- run ----------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    config = load_config(args.site_config, _run_overrides(args))
    if not args.harvester_dir and not config.panda.server:
        raise ConfigError("run: give --harvester-dir DIR or --server URL (or panda.server in the site config)")
    if not args.harvester_dir:
        config = replace(config, "harvester", stage="pilot")  # without Harvester, the pilot moves every file
    else:  # every rank, before MPI starts: a missing access point refuses the run before any rank makes a file
        from hpcpilot.harvester.layout import AccessPoint

        AccessPoint(args.harvester_dir, config.harvester)
    from hpcpilot.transport import under_mpi_launcher

    if under_mpi_launcher(os.environ):
        return _run_mpi(args, config)
    return _run_single(args, config)


def _jobs_dir(config: SiteConfig, workdir: Path, rank: int) -> Path:
    base = Path(os.path.expandvars(config.site.local_scratch)) if config.site.local_scratch else workdir
    return base / "jobs" / f"rank{rank}"


def _run_single(args: argparse.Namespace, config: SiteConfig) -> int:
    """One rank: controller in the main thread, worker in a thread, over in-process queues."""
    from hpcpilot.transport import QueueHub
    from hpcpilot.worker import Worker

    setup_logging(0, 1, args.log_level, args.log_dir, args.log_format)
    workdir = args.workdir.resolve()  # made by _make_controller, once the run is not refused
    hub = QueueHub(2)
    stop = threading.Event()
    controller, _signals = _make_controller(args, config, hub.transport(0), workdir, worker_ranks=[1],
                                            single_rank=True)
    worker = Worker(hub.transport(1), config, _jobs_dir(config, workdir, 0), workdir, stop, rank_label=0)
    thread = threading.Thread(target=_guarded(worker.run), name="worker", daemon=True)
    thread.start()
    try:
        controller.run()
    finally:
        stop.set()
    thread.join(timeout=config.monitor.kill_grace + 30)
    print(controller.summary.human())
    return controller.summary.exit_status(controller.signals)


def _run_mpi(args: argparse.Namespace, config: SiteConfig) -> int:
    from hpcpilot.slurm import launch_mismatch
    from hpcpilot.transport import MpiTransport

    transport = MpiTransport()
    mismatch = launch_mismatch(transport.size, transport.rank, os.environ, MpiTransport.library_version())
    if mismatch:
        if _launcher_rank(os.environ) == 0:  # singletons all think they are rank 0: say it once, as task 0
            print(f"hpcpilot: {mismatch}", file=sys.stderr)
        return 2
    setup_logging(transport.rank, transport.size, args.log_level, args.log_dir, args.log_format)
    try:
        return transport.leave(_run_rank(args, config, transport))  # no MPI_Finalize under fault tolerance
    except ConfigError as exc:  # rank 0 refused the run (an unreadable access point): one line, every rank ends
        print(f"hpcpilot: {' '.join(str(exc).splitlines())}", file=sys.stderr, flush=True)
        transport.abort(2)
        return 2
    except Exception:
        log.critical("uncaught exception, aborting every rank:\n%s", traceback.format_exc())
        transport.abort(1)
        return 1


def _run_rank(args: argparse.Namespace, config: SiteConfig, transport: Any) -> int:
    from hpcpilot.signals import SignalFlag
    from hpcpilot.worker import Worker

    workdir = args.workdir.resolve()  # rank 0 makes it once the run is not refused
    if transport.size == 1:
        return _run_single(args, config)
    local = _node_local_rank(transport)
    if transport.rank == 0:
        controller, signals = _make_controller(args, config, transport, workdir,
                                               worker_ranks=list(range(1, transport.size)))
        controller.run()
        transport.flush()
        print(controller.summary.human())
        return controller.summary.exit_status(controller.signals)
    if config.site.stagger_seconds:
        time.sleep(config.site.stagger_seconds * transport.rank / transport.size)
    signals = SignalFlag()
    signals.install()
    worker = Worker(transport, config, _jobs_dir(config, workdir, transport.rank), workdir, signals=signals,
                    local=local)
    worker.run()
    transport.flush()
    from hpcpilot.slurm import warning_signum

    return pilot_exit_status(cutting_signal(signals.received, warning_signum(config)), 0, False)


def _node_local_rank(transport: Any) -> Any:
    """This rank's place on its node (hpcpilot.gpu.local), for its GPU share: from the launcher's variables, or,
    where the launcher sets none (the same for every rank of a launch), from a shared-memory split that every
    rank, rank 0 included, joins."""
    from hpcpilot.gpu.local import from_environment, split_local

    return from_environment(os.environ) or split_local(transport.comm)


def _prepare_workdir(workdir: Path) -> Path:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{workdir}: cannot create the work directory ({exc.strerror})") from None
    return workdir.resolve()


def _make_controller(args: argparse.Namespace, config: SiteConfig, transport: Any, workdir: Path,
                     worker_ranks: list[int], single_rank: bool = False) -> tuple[Any, Any]:
    from hpcpilot.controller import Controller
    from hpcpilot.scheduler import Scheduler, SchedulerPolicy
    from hpcpilot.signals import SignalFlag

    signals = SignalFlag()
    signals.install()
    log.debug("%s", config.describe())
    source = _make_source(args, config, workdir)
    _write_effective_config(config, workdir)
    log.info("hpcpilot %s starting: site %s, work directory %s (configuration in %s)", __version__,
             config.site.name, workdir, EFFECTIVE_CONFIG)
    deadline = _deadline(config)
    policy = SchedulerPolicy.from_config(config, deadline, args.max_jobs)
    if args.harvester_dir:  # an open request to Harvester is looked at every poll_interval
        policy.fetch_retry = config.harvester.poll_interval
    scheduler = Scheduler(worker_ranks, config, policy)
    scheduler.gate.credentials = CredentialGuard.from_environ(config.panda.credential_min_lifetime,
                                                              config.panda.proxy_check_interval)
    recorder = _make_recorder(workdir)
    controller = Controller(transport, source, scheduler, workdir, signals, recorder, single_rank=single_rank)
    return controller, signals


def _write_effective_config(config: SiteConfig, workdir: Path) -> None:
    """``W/config.effective.toml``: what this run uses, every key, written only once the run starts."""
    path = workdir / EFFECTIVE_CONFIG
    tmp = path.with_name(f".{EFFECTIVE_CONFIG}.tmp")
    tmp.write_text(config.to_toml())
    os.replace(tmp, path)


def _make_source(args: argparse.Namespace, config: SiteConfig, workdir: Path) -> Any:
    """The job source; the work directory is made only after an access point was found readable, so a refused
    run leaves nothing behind (a PanDA source needs it first, for its journal)."""
    if args.harvester_dir:
        from hpcpilot.harvester import HarvesterSource

        source = HarvesterSource(args.harvester_dir, config.harvester, site=config.site.name, queue=config.site.queue)
        _prepare_workdir(workdir)
        return source
    _prepare_workdir(workdir)
    from hpcpilot.node import node_info
    from hpcpilot.panda.client import PandaError
    from hpcpilot.panda.source import PandaSource

    try:
        return PandaSource(config, workdir, node_info(workdir))
    except PandaError as exc:  # a server URL or credentials that cannot work: refuse in one line
        raise ConfigError(str(exc)) from None


def _make_recorder(workdir: Path) -> Any:
    """One HDF5 file per pilot run: a pilot restarted on the same workdir writes run.1.h5, run.2.h5, ..."""
    from hpcpilot.runrecord import RunRecorder

    path, n = workdir / "run.h5", 0
    while path.exists():
        n += 1
        path = workdir / f"run.{n}.h5"
    return RunRecorder(path)


def _deadline(config: SiteConfig) -> float | None:
    """The allocation's end: the configured walltime, else Slurm's end time, else none."""
    now = time.time()
    if config.walltime.limit:
        return now + config.walltime.limit
    from hpcpilot.slurm import allocation_end_time

    return allocation_end_time(os.environ, now)


def _guarded(body: Any) -> Any:
    def run() -> None:
        try:
            body()
        except Exception:
            log.critical("worker thread failed:\n%s", traceback.format_exc())
            os._exit(1)

    return run
