"""The ``hpcpilot report`` command: its options, and what it prints and returns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hpcpilot.report.defaults import DEFAULT_LEAK_GROWTH_PERCENT, DEFAULT_LEAK_MIB_PER_MIN, kb_per_s


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report RUN.h5 [--plots DIR] [--no-plots] [--leak-threshold X] [--leak-growth P]``."""
    parser = subparsers.add_parser("report", help="summarize a run record (RUN.h5) and plot it",
                                   description="Summarize an hpcpilot run record and write PNG plots.")
    parser.add_argument("run", type=Path, metavar="RUN.h5", help="the run record written by rank 0")
    parser.add_argument("--plots", type=Path, metavar="DIR", default=None,
                        help="directory for the PNG plots (default: RUN_plots next to RUN.h5)")
    parser.add_argument("--no-plots", action="store_true", help="print the summary only")
    parser.add_argument("--leak-threshold", type=float, default=DEFAULT_LEAK_MIB_PER_MIN,
                        metavar="MIB_PER_MIN",
                        help=f"leak slope to flag, MiB/min (default {DEFAULT_LEAK_MIB_PER_MIN:g}, i.e. "
                             f"{kb_per_s(DEFAULT_LEAK_MIB_PER_MIN):.1f} kB/s, the unit the report prints)")
    parser.add_argument("--leak-growth", type=float, default=DEFAULT_LEAK_GROWTH_PERCENT, metavar="PERCENT",
                        help=f"minimum growth over the fit window to flag, percent "
                             f"(default {DEFAULT_LEAK_GROWTH_PERCENT:g})")
    parser.set_defaults(func=report_main)
    return parser


def report_main(args: argparse.Namespace) -> int:
    """Print the summary and write the plots; 2 with a one-line error when the record is unreadable."""
    # Here, not at the top: every rank of every run imports this module for add_report_parser, and only
    # the report command reads a record, fits leaks, summarizes it or plots it.  These modules do not import this one.
    from hpcpilot.report import plots
    from hpcpilot.report.read import RunFileError, load_run
    from hpcpilot.report.stats import LeakPolicy
    from hpcpilot.report.summary import summarize

    policy = LeakPolicy(getattr(args, "leak_threshold", DEFAULT_LEAK_MIB_PER_MIN),
                        getattr(args, "leak_growth", DEFAULT_LEAK_GROWTH_PERCENT))
    try:
        run = load_run(args.run)
        text = summarize(run, policy)
    except RunFileError as exc:
        print(f"hpcpilot report: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if getattr(args, "no_plots", False):
        return 0
    if not plots.plots_available():
        print("hpcpilot report: plots skipped, matplotlib is not installed (pip install 'hpcpilot[plots]')",
              file=sys.stderr)
        return 0
    outdir = getattr(args, "plots", None) or Path(args.run).with_name(Path(args.run).stem + "_plots")
    try:
        paths = plots.write_plots(run, outdir, policy)
    except OSError as exc:
        print(f"hpcpilot report: cannot write plots to {outdir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"plot: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcpilot.report RUN.h5 ...`` without the rest of the command line."""
    parser = argparse.ArgumentParser(prog="hpcpilot")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
    return report_main(args)
