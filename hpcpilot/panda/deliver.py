"""``hpcpilot deliver``: send what a dead pilot's journal still owes the PanDA server, then stop.

    hpcpilot deliver --workdir W [--site-config F] [--server URL] [--set SECTION.KEY=VALUE] [--deadline S]

For the operator after a pilot ended with exit status 3 (updates not acknowledged) or was killed:
the journal ``W/panda-journal.sqlite`` is opened as a new run, so -- exactly as when the next pilot
starts on the same work directory -- every update the old run queued is checked with the server
before it is sent (nothing is reported twice), and jobs and ranges it had leased without a final
status are reported failed (1200 for jobs, 1220 for ranges) so the server hands them out again.
Only run it when no pilot is running on that work directory.  Exit status 0 when nothing is owed
any more, 3 when something still is (run it again later) or the journal was unreadable (it is moved
aside and what it held cannot be delivered), 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from hpcpilot.config import load_config, parse_overrides
from hpcpilot.errors import EXIT_CONFIG, EXIT_OK, EXIT_OWED

logger = logging.getLogger(__name__)


def add_deliver_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("deliver", help="send what a pilot's journal still owes the PanDA server",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="the pilot work directory holding the journal")
    parser.add_argument("--site-config", type=Path, help="site configuration TOML file")
    parser.add_argument("--server", help="PanDA server URL (overrides panda.server)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config key")
    parser.add_argument("--deadline", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def run_deliver(args: argparse.Namespace) -> int:
    """Replay the journal within ``--deadline``; one closing line on stdout."""
    from hpcpilot.node import node_info
    from hpcpilot.panda.client import PandaError
    from hpcpilot.panda.source import JOURNAL_NAME, PandaSource

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    journal = args.workdir / JOURNAL_NAME
    if not journal.is_file():
        print(f"hpcpilot deliver: no journal {journal}", file=sys.stderr)
        return EXIT_CONFIG
    overrides = parse_overrides(args.set or [])
    if args.server:
        overrides.setdefault("panda", {})["server"] = args.server
    config = load_config(args.site_config, overrides)
    try:
        source = PandaSource(config, args.workdir, node_info(args.workdir), close_deadline=args.deadline)
    except PandaError as exc:
        print(f"hpcpilot deliver: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    lost = source.journal.lost
    source.flush(args.deadline)
    owed = source.delivery().owed
    source.close()
    if lost:  # what the unreadable file held is unknown: never say "everything is acknowledged"
        print(f"hpcpilot deliver: nothing could be delivered: {lost}", file=sys.stderr)
        return EXIT_OWED
    if owed:
        print(f"hpcpilot deliver: {owed} update(s) still not acknowledged, kept in {journal}; try again later")
        return EXIT_OWED
    print(f"hpcpilot deliver: everything in {journal} is acknowledged by {config.panda.server}")
    return EXIT_OK
