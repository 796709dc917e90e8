"""Range updates on a v1 server (issue 21): what confirming them by status look-ups costs as the job grows.

v1 ``update_event_ranges`` answers HTTP 500 on every panda-server release, also after committing, so
``PandaSource`` parks each unconfirmed range update and confirms it with a status look-up
(``get_event_range_statuses``), which answers the status of *every* range of the job.  The policy
(hpcpilot/panda/rangecheck.py) is one look-up per job per batch: due once the parked ranges reach
1/LOOKUP_RATIO of the job's ranges, by age, or at flush / before the job's final update.

For each job size N (ranges per job; default 1,000, 10,000, 100,000; ``--quick`` 1,000 and 10,000):
``hpcpilot serve --release 1.0`` runs in its own process (so its CPU is not rank 0's) with one ES job
of N ranges; a real ``PandaSource`` in this process leases the job and all its ranges
(getEventRanges in chunks of 1,000, looping until all are leased; not measured), then reports them
finished in ``update_event_ranges`` calls of ``--per-update`` ranges (default 100) as fast as it
can, then the job's final update, then ``flush``.  Measured:

(a) server calls per 1,000 ranges reported: update_event_ranges and look-ups (get_events_status in
    the server's request log, read from ``POST /admin/requests``), separately;
(b) look-up answer bytes per 1,000 ranges reported: the sum of the bodies of the look-up answers as
    ``PandaClient`` received them (its ``_call`` is wrapped in this process to count them), so the
    real bytes of every look-up, whatever the ranges' states were then; a GET of the look-up of our
    own at the end (every range finished) gives the size of one whole-job answer, printed as a note;
(c) rank-0 CPU per range reported: ``time.process_time`` of this process over the report phase (first
    update queued to ``flush`` returning), which includes the sender threads sending, journaling and
    parsing the look-up answers; the server's own CPU (psutil, the ``hpcpilot serve`` process) is
    printed beside it;
(d) ranges/s end to end: ranges reported / (first update queued to ``flush`` returning).

Each run is checked: every reported range finished at the server (the final GET), nothing owed in
``delivery()``, and the update calls counted against the updates queued (a resent update shows as
extra update calls).

Baseline in the same run, same N, same batching: the one-look-up-per-update behaviour.  The same
``PandaSource`` is built while ``hpcpilot.panda.senders.RangeChecks`` is monkeypatched (in this process
only, for the source's whole life, since each sender builds its ``RangeChecks`` when the source starts it)
with ``EveryUpdate``, a subclass whose ``is_due`` is true for every parked job: every update's 500 is
followed at once by its job's look-up.  The baseline reports the first ``--baseline-cap`` ranges
(default 10,000) of its own N-range job (so each look-up still lists all N ranges) and then the final
update: at 100,000 a whole baseline run would be 1,000 look-ups of 7.5 MB, about half an hour of the
test server on a 2-core VM.  The table says how many ranges each side reported.

    .venv/bin/python -m bench.bench_range_lookups [--quick] [--sizes 1000 10000 100000] [--per-update 100]
        [--baseline-cap 10000]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hpcpilot.panda.senders as senders_module
from bench._common import BIN, print_table
from hpcpilot.panda import wire
from hpcpilot.panda.rangecheck import LOOKUP_RATIO, RangeChecks
from hpcpilot.panda.source import PandaSource
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import Delivery
from hpcpilot.states import EventRangeStatus, JobState
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import NODE, job_definitions, panda_config

PANDA_ID = 800
LEASE_CHUNK = 1000
FLUSH_TIMEOUT = 900.0


class EveryUpdate(RangeChecks):
    """The baseline: a parked job's look-up is always due, so each update is followed by its own look-up."""

    def is_due(self, panda_id: int, now: float) -> bool:
        return self.is_parked(panda_id)


class Server:
    """``hpcpilot serve --release 1.0`` on loopback with one ES job of ``n`` ranges, for a ``with`` block.

    The state file is filled here first, in one transaction (the server's own ``--jobs`` load commits each
    range by itself: over 2 minutes for 100,000 ranges), then served by the subprocess, which keeps it."""

    def __init__(self, directory: Path, n: int) -> None:
        directory.mkdir(parents=True)
        state = directory / "state.sqlite"
        seed = PandaTestServer(state, release="1.0")
        seed._db.execute("BEGIN")
        seed.load_jobs(job_definitions(1, start_id=PANDA_ID, es=True), ranges_per_job=n)
        seed._db.execute("COMMIT")
        seed.close()
        argv = [str(BIN / "hpcpilot"), "serve", "--release", "1.0", "--port", "0", "--state", str(state)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "serving PanDA test server on " not in line:
            self.proc.kill()
            raise SystemExit(f"bench_range_lookups: hpcpilot serve did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[-1].strip()
        self.ps = psutil.Process(self.proc.pid)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def requests(self, method: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(self.url + "/admin/requests", json.dumps({"method": method}).encode(),
                                         {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read())

    def lookup(self, task_id: int) -> bytes:
        """One v1 get_event_range_statuses of the job, as the client asks it: the answer's body."""
        query = urllib.parse.urlencode({"job_task_ids": json.dumps([{"task_id": task_id, "panda_id": PANDA_ID}])})
        with urllib.request.urlopen(f"{self.url}{wire.V1_PATHS[wire.GET_EVENTS_STATUS]}?{query}",
                                    timeout=120) as answer:
            return answer.read()


@dataclass(frozen=True)
class Run:
    """One job's report phase: what the server received and what it cost."""

    n: int  # ranges in the job
    reported: int
    updates: int  # update_event_ranges calls at the server
    queued: int  # update_event_ranges calls queued by the bench
    lookups: int
    lookup_bytes: int  # summed over the look-up answers the client received
    whole_lookup: int  # bytes of one look-up of the whole job at the end (every reported range finished)
    cpu: float  # rank 0 (this process), s
    server_cpu: float  # the hpcpilot serve process, s
    wall: float

    def per_k(self, value: float) -> float:
        return value * 1000.0 / self.reported


def run_job(directory: Path, n: int, report: int, per_update: int, baseline: bool) -> Run:
    """Lease ``report`` ranges of an ``n``-range job and report them; the baseline with ``EveryUpdate``."""
    with Server(directory, n) as server:
        config = panda_config(server.url, "v1", connect_timeout=5.0, read_timeout=120.0, call_deadline=300.0,
                              retry_initial=0.05, retry_max=0.5)
        saved = senders_module.RangeChecks
        if baseline:
            senders_module.RangeChecks = EveryUpdate  # type: ignore[misc]
        try:
            source = PandaSource(config, directory / "work", NODE, fetch_deadline=120.0, close_deadline=60.0)
            try:
                return _report(server, source, n, report, per_update)
            finally:
                source.close()
        finally:
            senders_module.RangeChecks = saved  # type: ignore[misc]


def _report(server: Server, source: PandaSource, n: int, report: int, per_update: int) -> Run:
    sizes: list[int] = []
    call = source.client._call

    def counting(method: str, fields: Any, deadline: float | None, repeatable: bool) -> Any:
        reply = call(method, fields, deadline, repeatable)
        if method == wire.GET_EVENTS_STATUS:
            sizes.append(len(reply.content))
        return reply

    source.client._call = counting  # type: ignore[method-assign]
    jobs = source.fetch_jobs(1)
    if not jobs.leased:
        raise SystemExit(f"bench_range_lookups: no job from the server ({jobs.error})")
    spec = JobSpec.from_wire(jobs.leased[0])
    ids: list[str] = []
    while len(ids) < report:  # the lease (not measured); the server may give fewer than asked
        got = source.fetch_event_ranges(spec, min(LEASE_CHUNK, report - len(ids)))
        if not got.leased:
            raise SystemExit(f"bench_range_lookups: {len(ids)} of {report} ranges leased, then none "
                             f"({got.error or 'no more ranges'})")
        ids += [str(r["eventRangeID"]) for r in got.leased]
    record = JobRecord(panda_id=spec.panda_id, state=JobState.FINISHED, attempt_nr=spec.attempt_nr, n_events=report,
                       start_time="2026-12-07 10:00:00", end_time="2026-12-07 11:00:00")
    server_before = server.cpu()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    queued = 0
    for first in range(0, report, per_update):
        source.update_event_ranges(spec, [EventRangeUpdate(rid, EventRangeStatus.FINISHED)
                                          for rid in ids[first:first + per_update]])
        queued += 1
    source.update_job(record, final=True)
    if not source.flush(FLUSH_TIMEOUT):
        raise SystemExit(f"bench_range_lookups: N={n}: the sender did not deliver within {FLUSH_TIMEOUT:.0f} s "
                         f"({source.pending()} update(s) pending)")
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    server_cpu = server.cpu() - server_before
    delivery = source.delivery()
    updates = len(server.requests(wire.UPDATE_EVENT_RANGES))
    lookups = len(server.requests(wire.GET_EVENTS_STATUS))
    whole = server.lookup(spec.task_id or 0)
    problems = _problems(json.loads(whole)["data"][str(PANDA_ID)], ids, delivery, spec.panda_id)
    if lookups != len(sizes):
        problems.append(f"{lookups} look-ups at the server, {len(sizes)} answers at the client")
    if problems:
        raise SystemExit(f"bench_range_lookups: N={n}: " + "; ".join(problems))
    return Run(n, report, updates, queued, lookups, sum(sizes), len(whole), cpu, server_cpu, wall)


def _problems(statuses: dict[str, Any], ids: Sequence[str], delivery: Delivery, panda_id: int) -> list[str]:
    """What is wrong with a run: a reported range not finished at the server, something owed, no final."""
    finished = Counter(statuses[rid]["status"] for rid in ids)
    problems = []
    if finished != {"finished": len(ids)}:
        problems.append(f"reported ranges at the server: {dict(finished)}")
    if delivery.owed or delivery.ranges.get(panda_id, {}).get("finished") != len(ids):
        problems.append(f"delivery: owed {delivery.owed}, ranges {delivery.ranges.get(panda_id)}")
    if delivery.jobs.get(panda_id) != "acknowledged":
        problems.append(f"final update: {delivery.jobs.get(panda_id)}")
    return problems


def measure(tmp: Path, sizes: Sequence[int], per_update: int, cap: int) -> list[tuple[Run, Run]]:
    """(new, baseline) for each N; the baseline first, on its own server and job."""
    out = []
    for n in sizes:
        base = run_job(tmp / f"base-{n}", n, min(n, cap), per_update, baseline=True)
        print(f"  N={n:,}: baseline {base.reported:,} ranges in {base.wall:.1f} s, {base.lookups} look-ups",
              flush=True)
        new = run_job(tmp / f"new-{n}", n, n, per_update, baseline=False)
        print(f"  N={n:,}: new      {new.reported:,} ranges in {new.wall:.1f} s, {new.lookups} look-ups", flush=True)
        out.append((new, base))
    return out


def tables(results: Sequence[tuple[Run, Run]], per_update: int) -> None:
    first_new = results[0][0]
    calls, costs = [], []
    for new, base in results:
        new_mb, base_mb = new.per_k(new.lookup_bytes) / 1e6, base.per_k(base.lookup_bytes) / 1e6
        resent = (new.updates - new.queued, base.updates - base.queued)
        calls.append([new.n, f"{new.reported:,} / {base.reported:,}", new.per_k(new.updates), base.per_k(base.updates),
                      new.per_k(new.lookups), base.per_k(base.lookups), new_mb, base_mb, base_mb / new_mb,
                      new_mb / (first_new.per_k(first_new.lookup_bytes) / 1e6), f"{resent[0]} / {resent[1]}"])
        new_us, base_us = new.cpu / new.reported * 1e6, base.cpu / base.reported * 1e6
        new_rate, base_rate = new.reported / new.wall, base.reported / base.wall
        costs.append([new.n, new_us, base_us, base_us / new_us, new_us / (first_new.cpu / first_new.reported * 1e6),
                      new.server_cpu / new.reported * 1e6, base.server_cpu / base.reported * 1e6,
                      new_rate, base_rate, new_rate / base_rate])
    notes = [f"one ES job of N ranges on hpcpilot serve --release 1.0 (own process, loopback); {per_update} ranges "
             f"per update_event_ranges; LOOKUP_RATIO {LOOKUP_RATIO}",
             "baseline: the same PandaSource with RangeChecks.is_due always true for a parked job "
             "(one look-up per update), on the first ranges of its own N-range job as the 'ranges' column says"]
    print_table("(a, b) server calls and look-up bytes per 1,000 ranges reported (new vs baseline)",
                [*notes, "look-up MB: the look-up answers' bodies as the client received them, summed; one whole-job "
                 "answer at the end: " + ", ".join(f"N={new.n:,} {new.whole_lookup / 1e6:.3g} MB "
                                                   f"({new.whole_lookup / new.n:.0f} B/range)" for new, _ in results),
                 "resent: update calls at the server beyond the updates queued (new / baseline)"],
                ["N", "ranges (new / base)", "updates/1k new", "base", "look-ups/1k new", "base",
                 "look-up MB/1k new", "base", "base/new", f"new /N={first_new.n}", "resent"], calls)
    print_table("(c, d) rank-0 CPU per range reported and ranges/s end to end (new vs baseline)",
                ["CPU: time.process_time of the bench process (main thread + PanDA sender threads) from the first "
                 "update queued to flush returning; server: psutil CPU of the hpcpilot serve process, same span",
                 "ranges/s: ranges reported / (first update queued to flush returning)"],
                ["N", "CPU µs/range new", "base", "base/new", f"new /N={first_new.n}", "server µs/range new", "base",
                 "ranges/s new", "base", "new/base"], costs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 1,000 and 10,000 only")
    parser.add_argument("--sizes", type=int, nargs="+", help="ranges per job (default 1000 10000 100000)")
    parser.add_argument("--per-update", type=int, default=100, help="ranges per update_event_ranges (default 100)")
    parser.add_argument("--baseline-cap", type=int, default=10_000,
                        help="the baseline reports at most this many ranges of its job (default 10,000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # the per-call INFO lines are formatted only if shown
    sizes = sorted(args.sizes or ([1000, 10_000] if args.quick else [1000, 10_000, 100_000]))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-range-lookups-") as tmp:
        results = measure(Path(tmp), sizes, max(1, args.per_update), max(1, args.baseline_cap))
    tables(results, max(1, args.per_update))
    print(f"\n  total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
