#!/usr/bin/env python3
"""A payload that leaks memory on purpose, at a steady rate, for tests and the demo.

Every ``--interval`` seconds it allocates ``--leak-kb`` kB, writes to every page (so the
memory is resident and counts in PSS) and keeps a reference to it, for ``--duration``
seconds in all.  ``--leak-kb 0`` gives a well-behaved payload of the same shape.  Each step
also does ``--work`` rounds of arithmetic, so it uses some CPU, and every
``--event-every`` steps it prints ``event <n> <epoch time>``, a stand-in for an event
being processed.  Steps are paced against the start time, so the leak rate does not
drift with the time a step takes.

    python examples/leaky_payload.py --leak-kb 256 --interval 0.1 --duration 10
"""

from __future__ import annotations

import argparse
import sys
import time


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leak-kb", type=int, default=256, help="kB leaked per step (default 256)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds per step (default 0.1)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    parser.add_argument("--work", type=int, default=20000, help="arithmetic rounds per step (default 20000)")
    parser.add_argument("--event-every", type=int, default=5, help="steps per printed event (default 5)")
    args = parser.parse_args(argv)
    if args.leak_kb < 0 or args.interval <= 0 or args.duration < 0 or args.work < 0 or args.event_every < 1:
        parser.error("--interval and --event-every must be positive, the other numbers not negative")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    leaked: list[bytes] = []
    start = time.monotonic()
    steps = int(args.duration / args.interval)
    accumulator = 0
    for step in range(1, steps + 1):
        if args.leak_kb:
            leaked.append(bytes([step % 251 + 1]) * (args.leak_kb * 1024))
        for k in range(args.work):
            accumulator = (accumulator + k * k) % 1_000_003
        if step % args.event_every == 0:
            print(f"event {step // args.event_every} {time.time():.3f}", flush=True)
        delay = start + step * args.interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    total_kb = sum(len(b) for b in leaked) // 1024
    print(f"done: leaked {total_kb} kB in {steps} steps (checksum {accumulator})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
