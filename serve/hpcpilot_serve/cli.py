"""``hpcpilot-serve`` (also ``hpcpilot serve``): run the PanDA test server, or dump a state file's final state.

    hpcpilot-serve --port P --state FILE --jobs FILE... [--ranges-per-job N] [--events-per-range M]
                   [--release 1.0|0.8] [--api both|v1|legacy] [--tls-cert C --tls-key K]
                   [--fault KIND [--fault-count N] [--fault-method M] [--fault-after-commit] [--fault-delay S]]
    hpcpilot-serve --dump STATE

``--release`` picks the panda-server release it behaves like: 1.0 (the default, the current line: v1
only, every legacy path HTTP 403 "method X is forbidden") or 0.8 (0.8.1: v1 and legacy).  ``--api``
narrows or widens that (``legacy`` alone is a server older than 0.8).  On both releases v1
update_event_ranges answers HTTP 500 after committing, as the real ones do.

Job files hold getJob dicts: a Harvester ``HPCJobs.json`` map ``{PandaID: job}``, a list of jobs or
one job.  Event-service jobs (``eventService: "True"``) get ``--ranges-per-job`` ranges.
``--fault`` answers the next N requests (of one method, e.g. updateEventRanges) with a fault, before
or after the server committed the call: 5xx, 500, garbage, no-data, status-zero, truncated, slow,
reset (see serve/hpcpilot_serve/faults.py); ``--no-v1-bug`` makes v1 update_event_ranges answer 200.

``hpcpilot serve`` is this command, registered by the hpcpilot command line where this package is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the server is imported when one is run (see run_serve)
    from hpcpilot_serve.server import PandaTestServer

logger = logging.getLogger(__name__)
HELP = "run a local PanDA-compatible test server on 127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options, for ``hpcpilot-serve`` and ``hpcpilot serve`` alike."""
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; e.g. the bridge of nodes made on this machine)")
    parser.add_argument("--state", type=Path, help="SQLite state file (kept across restarts)")
    parser.add_argument("--jobs", type=Path, nargs="*", default=[], help="job-definition files to load")
    parser.add_argument("--ranges-per-job", type=int, default=0, help="event ranges per event-service job")
    parser.add_argument("--events-per-range", type=int, default=1, help="events per generated range")
    parser.add_argument("--release", choices=("1.0", "0.8"), default="1.0",
                        help="behave like panda-server 1.0 (v1 only, the default) or 0.8.1 (v1 and legacy)")
    parser.add_argument("--api", choices=("both", "v1", "legacy"), help="APIs to serve (default: the release's)")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    parser.add_argument("--dump", type=Path, metavar="STATE", help="print STATE's final state as JSON")
    parser.add_argument("--fault", help="inject this fault (5xx, 500, garbage, no-data, status-zero, truncated, "
                                        "slow, reset)")
    parser.add_argument("--fault-count", type=int, help="how many requests get the fault (default: all)")
    parser.add_argument("--fault-method", help="only requests of this legacy method name (e.g. updateJob)")
    parser.add_argument("--fault-after-commit", action="store_true", help="commit the call, then answer the fault")
    parser.add_argument("--fault-delay", type=float, default=0.0, help="seconds of delay for the 'slow' fault")
    parser.add_argument("--no-v1-bug", action="store_true",
                        help="v1 update_event_ranges answers 200 (every real release answers 500 after committing)")
    parser.set_defaults(func=run_serve)
    return parser


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to an argparse sub-parser collection (``hpcpilot serve``)."""
    return add_arguments(subparsers.add_parser("serve", help=HELP, description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv: list[str] | None = None) -> int:
    """The ``hpcpilot-serve`` console script."""
    parser = argparse.ArgumentParser(prog="hpcpilot-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return run_serve(add_arguments(parser).parse_args(argv))


def _load_job_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read job file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None


def _refusal(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, in one line, or None."""
    if args.state is None:
        return "--state FILE is required (or --dump STATE)"
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    return None


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM (or print a dump); returns the process exit status."""
    # Imported here, not at the top (also dump_state in _print_dump): the hpcpilot command line imports this
    # module on every rank of every pilot run for ``add_serve_parser``, and the server pulls in ssl,
    # http.server and hpcpilot's PanDA wire code.
    from hpcpilot_serve.server import PandaTestServer

    if args.dump is not None:
        return _print_dump(args.dump)
    refusal = _refusal(args)
    if refusal is not None:
        print(f"hpcpilot serve: {refusal}", file=sys.stderr)
        return 2
    apis = None if args.api is None else ("v1", "legacy") if args.api == "both" else (args.api,)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    try:
        server = PandaTestServer(args.state, args.port, release=args.release, apis=apis, tls=tls,
                                 v1_event_update_bug=not args.no_v1_bug, host=args.host)
    except (OSError, sqlite3.Error) as exc:  # a state file that cannot be opened: one line
        print(f"hpcpilot serve: {args.state}: cannot open the state file ({exc})", file=sys.stderr)
        return 2
    try:
        _prepare(server, args)
    except ValueError as exc:
        print(f"hpcpilot serve: {exc}", file=sys.stderr)
        server.close()
        return 2
    return _serve_until_stopped(server, args.host, args.port)


def _print_dump(path: Path) -> int:
    from hpcpilot_serve.state import dump_state  # not at the top: see run_serve

    try:
        print(json.dumps(dump_state(path), indent=2))
    except (FileNotFoundError, OSError) as exc:
        print(f"hpcpilot serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _prepare(server: PandaTestServer, args: argparse.Namespace) -> None:
    """Set the fault asked for and load the job files (ValueError: a bad fault or job file)."""
    if args.fault:
        server.set_fault(args.fault, args.fault_count, args.fault_delay, method=args.fault_method,
                         after_commit=args.fault_after_commit)
    for path in args.jobs:
        added = server.load_jobs(_load_job_file(path), args.ranges_per_job, args.events_per_range)
        logger.info("%s: %d job(s) loaded", path, len(added))


def _serve_until_stopped(server: PandaTestServer, host: str, port: int) -> int:
    """Listen until SIGINT or SIGTERM, then close the server (its state file stays)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as exc:  # a busy port, a certificate that cannot be read: one line, not a traceback
            print(f"hpcpilot serve: cannot serve on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"serving PanDA test server on {server.url}", flush=True)
        while not stop.wait(3600):
            pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
