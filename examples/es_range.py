#!/usr/bin/env python3
"""One event range as a command (hpcpilot's per-range mode), for demos and tests.

    python examples/es_range.py {eventRangeID} {startEvent} {lastEvent} {output} [--ms-per-event 10]
                                [--fail-every N]

"Simulates" the range (``--ms-per-event`` milliseconds of arithmetic per event) and writes its
output file.  With ``--fail-every N`` it exits 1 for ranges whose job_processID (the 4th field
of the eventRangeID) is a multiple of N, so a test knows which ranges must fail.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("range_id")
    parser.add_argument("start", type=int)
    parser.add_argument("last", type=int)
    parser.add_argument("output", type=Path)
    parser.add_argument("--ms-per-event", type=float, default=10.0)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args(argv)
    end = time.perf_counter() + (args.last - args.start + 1) * args.ms_per_event / 1000.0
    while time.perf_counter() < end:
        pass
    parts = args.range_id.split("-")
    if args.fail_every and len(parts) == 5 and parts[3].isdigit() and int(parts[3]) % args.fail_every == 0:
        print(f"es_range: range {args.range_id} fails on purpose", file=sys.stderr)
        return 1
    args.output.write_text(f"{args.range_id} events {args.start}-{args.last}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
