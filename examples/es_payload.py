#!/usr/bin/env python3
"""An event-service payload that speaks the AthenaMP event-range protocol, for demos and tests.

It connects to the pilot's socket (``$PILOT_EVENTRANGECHANNEL``), and for as long as the pilot
has ranges: says ``Ready for events``, receives one range as a JSON array, "simulates" it
(``--ms-per-event`` milliseconds of arithmetic per event), writes ``<eventRangeID>.pool.root``
in its working directory and answers ``<path>,ID:<id>,CPU:<s>,WALL:<s>``.  On ``No more
events`` it exits 0.  For tests it can fail ranges (``--fail-every N``: ``ERR_ATHENAMP_PROCESS``
for every N-th range, ``--fatal-every N``: ``ERR_FATAL``) and crash once mid-range
(``--crash-at N``: exit 3 after receiving its N-th range; a marker file keeps the fresh
payload the pilot starts next from crashing again).  ``--relative-every N`` answers every N-th
range as recent AthenaMT does: with an output path relative to its working directory.

    PILOT_EVENTRANGECHANNEL=/path/to/socket python examples/es_payload.py --ms-per-event 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

READY = "Ready for events"
NO_MORE = "No more events"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms-per-event", type=float, default=10.0, help="busy milliseconds per event")
    parser.add_argument("--fail-every", type=int, default=0, help="fail every N-th range (0: never)")
    parser.add_argument("--fatal-every", type=int, default=0, help="fail every N-th range fatally (0: never)")
    parser.add_argument("--crash-at", type=int, default=0, help="crash once after receiving the N-th range")
    parser.add_argument("--output-bytes", type=int, default=1024, help="bytes written per range output")
    parser.add_argument("--relative-every", type=int, default=0,
                        help="answer every N-th range with a relative output path, as AthenaMT does (0: never)")
    return parser.parse_args(argv)


def busy(seconds: float) -> None:
    """Burn CPU for ``seconds`` (a stand-in for simulating events)."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


class Lines:
    """Newline-framed messages over the pilot's socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def receive(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("pilot closed the channel")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def process(item: dict, args: argparse.Namespace, count: int) -> str:
    """One range: the answer message for the pilot."""
    range_id = item["eventRangeID"]
    started, cpu0 = time.monotonic(), time.process_time()
    n_events = int(item["lastEvent"]) - int(item["startEvent"]) + 1
    busy(n_events * args.ms_per_event / 1000.0)
    if args.fatal_every and count % args.fatal_every == 0:
        return f"ERR_FATAL {range_id}: range {count} fails fatally on purpose"
    if args.fail_every and count % args.fail_every == 0:
        return f"ERR_ATHENAMP_PROCESS {range_id}: range {count} fails on purpose"
    relative = bool(args.relative_every) and count % args.relative_every == 0
    output = Path("athenamt") / f"{range_id}.pool.root" if relative else Path.cwd() / f"{range_id}.pool.root"
    output.parent.mkdir(exist_ok=True)
    output.write_bytes(f"{range_id} {item.get('LFN', '')} {n_events}\n".encode().ljust(args.output_bytes, b"."))
    wall, cpu = time.monotonic() - started, time.process_time() - cpu0
    return f"{output},ID:{range_id},CPU:{cpu:.3f},WALL:{wall:.3f}"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    channel = os.environ.get("PILOT_EVENTRANGECHANNEL")
    if not channel:
        print("es_payload: PILOT_EVENTRANGECHANNEL is not set", file=sys.stderr)
        return 2
    lines = Lines(channel)
    crash_marker = Path.cwd() / ".es_payload_crashed"
    count = 0
    while True:
        lines.send(READY)
        message = lines.receive()
        if message.strip() == NO_MORE:
            print(f"es_payload: no more events after {count} range(s)", flush=True)
            return 0
        item = json.loads(message)[0]
        count += 1
        if args.crash_at and count == args.crash_at and not crash_marker.exists():
            crash_marker.write_text(item["eventRangeID"])
            print(f"es_payload: crashing on purpose in range {item['eventRangeID']}", flush=True)
            os._exit(3)
        lines.send(process(item, args, count))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
