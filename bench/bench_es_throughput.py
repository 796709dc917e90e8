"""Event-range throughput through rank 0 with a null payload, at 8 ranks (issue 5).

Why: with short event ranges, what a node gets through is set by rank 0 (lease, deal, collect,
report each range) and by the round trip between it and the worker ranks, not by the payload.
A null payload (``eventservice.payload_mode=noop``: the worker finishes every range at once,
in-process) leaves only that.  Three runners, in the same run, over the same number of items:

* hpcpilot: ``mpiexec -n 8 python -m hpcpilot run`` (site_configs/laptop.toml, --log-dir) over a
  Harvester access point holding ONE event-service job and N ranges in JobsEventRanges.json,
  once per ``eventservice.ranges_per_request`` value.  The rate is N' / T where T runs from the
  moment rank 0 recorded the first range outcome to the moment it wrote the job's final report
  (``jobReport.json``'s mtime), and N' is N less the ranges of that first report (they were
  processed before T began).  Both ends are rank 0's own clock: ``recordedAt`` of every
  outcome in ``run.h5`` (time.time() when rank 0 received the report) and the file's mtime.
  So T holds all of the job's dealing, collecting and its tail (status reports, the log
  tarball, the final report) but no start-up; the wall time from launch to exit is printed as
  well.  Not the log: its timestamps have 1 s resolution.  Not "wall time minus a run with
  0 ranges": on 2 noisy cores the start-up of 8 ranks varies by about a second, more than the
  whole --quick job.  Also shown: the steady rate (first to last outcome) and the mean gap
  between two reports of one rank, which with a null payload is one request's round trip.
  Every range must end reported exactly once: event_status.dump.json is counted per
  eventRangeID (and the statuses must all be 'finished').
* MPIPoolExecutor: ``mpiexec -n 8 python -m mpi4py.futures`` this script, ``map(noop,
  range(N), chunksize=k)`` timed around the map after ``bootup`` (7 workers).
* bare mpi4py, the ceiling: rank 0 answers blocking ``comm.recv`` requests from 7 workers with
  ``comm.send`` of a list of k range dicts (built before the barrier), and the next request of a
  worker carries the k IDs it did; timed from a barrier to the last answer.

Equal batching (issue 14): every runner moves k ranges per message, k = each ``--per-request``
value, and the table prints hpcpilot / bare mpi4py at the same k; the target is a ratio of at
least 0.5 for the steady rate (first to last outcome: the dispatch path), and the ratio of the
job window (with the job's tail) is printed beside it.  k = 1 (one range per message, which
hpcpilot never uses) is shown apart for the pool and bare mpi4py.  Beside the rates, rank 0's and
the worker ranks' CPU per range inside the job window: on a node shared with other work those
move less than the rates do.

Idle ranks: with a Harvester access point a rank never waits for ranges (an empty answer means
the job is over, and idle ranks are sent away), so the idle measurement uses the situation in
which an event-service rank really waits: a server outage.  ``hpcpilot serve`` holds one ES job;
once all ranks have joined it, the server answers every request with HTTP 503 (``POST
/admin/fault``).  Rank 0's queue runs dry in well under a second, after which every worker
rank holds an outstanding request and waits.  From ``settle`` s after the fault, the CPU time
of every process of the launch is taken over a window (scheduler ns runtime per thread, as
bench_idle does) and divided by it.  run.h5 proves the ranks were starved: no outcome was
recorded inside the window.  Then the fault is cleared and the job must finish normally.
Target: every idle worker rank under 1 % of a core.

Not a test: nothing is asserted.  ``--profile`` adds one hpcpilot run (k=32) with rank 0's loop
under cProfile, timed by the CPU time of its main thread, and prints the loop's steps and the
functions with the most own time as shares of the loop's CPU.

    .venv/bin/python -m bench.bench_es_throughput [--quick] [--ranges N] [--per-request 8 32 128] [--profile]
        [--ranks 8]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    LAPTOP,
    Launched,
    ProcCpu,
    bench_env,
    bytecode_note,
    check_pilot_run,
    cpu_delta,
    launch,
    make_access_point,
    make_job,
    mpi_argv,
    pilot_argv,
    print_table,
    snapshot,
)

RANKS = 8
PANDA_ID = 5005
TASK_ID = 7  # make_job's taskID: range ids are <task>-<PandaID>-1-<i>-1
TARGET_RATE = 5000.0
TARGET_IDLE_PERCENT = 1.0
TARGET_BARE_RATIO = 0.5  # hpcpilot / bare mpi4py at the same ranges per message (issue 14 item 6)
PROFILE_PER_REQUEST = 32
POOL_MARK = "pool-seconds:"
BARE_MARK = "bare-seconds:"
REQUEST_TAG, ITEM_TAG = 1, 2


@dataclass(frozen=True)
class Timed:
    """One runner's result: items, the timed window (s), launch-to-exit wall (s)."""

    label: str
    items: int
    seconds: float
    wall: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


@dataclass(frozen=True)
class PilotRun:
    """One hpcpilot run: the job window, the steady window, round trips, CPU and the exactly-once check."""

    per_request: int
    timed: Timed
    steady_rate: float
    tail: float
    gap_ms: float
    rank0_busy: float
    rank0_us: float
    workers_us: float
    rank0_cpu: float
    worker_cpu: float
    check: str
    settings: dict[str, str]


# ---- the null work of the baselines -----------------------------------------------------------


def noop(item: Any) -> Any:
    """The pool's task: nothing (a module-level function, so that pool workers unpickle it by name)."""
    return item


def range_dict(i: int, panda_id: int = PANDA_ID) -> dict[str, Any]:
    """Event range ``i`` (1-based) as getEventRanges hands it out."""
    return {"eventRangeID": f"{TASK_ID}-{panda_id}-1-{i}-1", "startEvent": i, "lastEvent": i,
            "LFN": "EVNT.01234._000001.pool.root.1", "GUID": "8E3D9C54-0000-4000-8000-000000000001",
            "scope": "mc23_13p6TeV"}


def pool_main(n: int, chunksize: int) -> None:
    """Rank 0 of the MPIPoolExecutor run: boot the workers, then time map(noop, chunksize) alone."""
    from mpi4py.futures import MPIPoolExecutor

    from bench.bench_es_throughput import noop as named_noop  # pickled by module name, not __main__

    with MPIPoolExecutor() as executor:
        executor.bootup(wait=True)
        begin = time.perf_counter()
        done = sum(1 for _ in executor.map(named_noop, range(n), chunksize=chunksize))
        elapsed = time.perf_counter() - begin
    if done != n:
        raise SystemExit(f"pool: {done} of {n} results")
    print(f"{POOL_MARK}{elapsed:.6f}", flush=True)


def bare_main(n: int, per_message: int) -> None:
    """Every rank of the bare mpi4py run: rank 0 serves ``per_message`` ranges per request, the others ask.

    The ranges are built before the barrier (hpcpilot's are parsed by its fetch thread before they are
    dealt), so the timed part is the messaging alone: the ceiling for that batching.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    items = [range_dict(i) for i in range(1, n + 1)] if comm.Get_rank() == 0 else []
    comm.Barrier()
    if comm.Get_rank() == 0:
        begin = time.perf_counter()
        done = bare_serve(comm, items, per_message, MPI.ANY_SOURCE, MPI.Status())
        elapsed = time.perf_counter() - begin
        if done != n:
            raise SystemExit(f"bare: {done} of {n} items came back")
        print(f"{BARE_MARK}{elapsed:.6f}", flush=True)
    else:
        bare_work(comm)


def bare_serve(comm: Any, items: list[dict[str, Any]], per_message: int, any_source: int, status: Any) -> int:
    """Answer requests (blocking receives) with a list of up to ``per_message`` ranges each, until every
    worker got its stop (None); returns how many range IDs came back done."""
    dealt = done = stopped = 0
    while stopped < comm.Get_size() - 1:
        request = comm.recv(source=any_source, tag=REQUEST_TAG, status=status)
        done += len(request["done"])
        if dealt < len(items):
            comm.send(items[dealt:dealt + per_message], dest=status.Get_source(), tag=ITEM_TAG)
            dealt += per_message
        else:
            comm.send(None, dest=status.Get_source(), tag=ITEM_TAG)
            stopped += 1
    return done


def bare_work(comm: Any) -> None:
    """Ask for ranges, do nothing with them, report their IDs with the next request (as hpcpilot does)."""
    done: list[str] = []
    while True:
        comm.send({"rank": comm.Get_rank(), "done": done}, dest=0, tag=REQUEST_TAG)
        batch = comm.recv(source=0, tag=ITEM_TAG)
        if batch is None:
            return
        done = [noop(item)["eventRangeID"] for item in batch]


# ---- running the baselines --------------------------------------------------------------------------


def marked_seconds(run: Launched, code: int, mark: str) -> float:
    lines = [line for line in run.output("stdout").splitlines() if line.startswith(mark)]
    if code != 0 or not lines:
        raise RuntimeError(f"{run.run_dir}: exit status {code}: {run.output()[-600:]}")
    return float(lines[-1][len(mark):])


def run_baseline(tmp: Path, name: str, argv: list[str], mark: str, n: int, env: dict[str, str]) -> Timed:
    with launch(mpi_argv(RANKS, argv), tmp / name, env) as run:
        code = run.wait(timeout=60 + n / 200)
    assert run.wall is not None
    return Timed(name, n, marked_seconds(run, code, mark), run.wall)


def run_pool(tmp: Path, n: int, chunksize: int, env: dict[str, str]) -> Timed:
    argv = [sys.executable, "-m", "mpi4py.futures", str(Path(__file__).resolve()), "--pool", str(n), str(chunksize)]
    return run_baseline(tmp, f"MPIPoolExecutor chunksize={chunksize}", argv, POOL_MARK, n, env)


def run_bare(tmp: Path, n: int, per_message: int, env: dict[str, str]) -> Timed:
    argv = [sys.executable, "-m", "bench.bench_es_throughput", "--bare", str(n), str(per_message)]
    return run_baseline(tmp, f"bare mpi4py {per_message}/message", argv, BARE_MARK, n, env)


@dataclass(frozen=True)
class Batched:
    """The three runners at one batching: ``per_message`` ranges in each message of every runner."""

    per_message: int
    bare: Timed
    pool: Timed
    pilot: PilotRun


def run_batched(tmp: Path, n: int, per_message: int, env: dict[str, str]) -> Batched:
    return Batched(per_message, run_bare(tmp, n, per_message, env), run_pool(tmp, n, per_message, env),
                   run_hpcpilot(tmp, n, per_message, env))


# ---- CPU of the launch over time ---------------------------------------------------------------------


class LaunchCpu:
    """Polls every process of a launch: the last CPU reading of each (so ranks that already exited
    still count) and rank 0's CPU over time (to tell how busy it was inside the job window).

    Why not CpuTracker: it keeps only the last reading, and a window inside the run needs two.
    """

    def __init__(self, root_pid: int, interval: float = 0.1) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.last: dict[int, ProcCpu] = {}
        self.rank0: list[tuple[float, float]] = []
        self.workers: list[tuple[float, float]] = []  # the worker ranks' CPU, summed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="launch-cpu", daemon=True)

    def __enter__(self) -> LaunchCpu:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            current = snapshot(self.root_pid)
            zero = [info.cpu for info in current.values() if info.role == "rank" and info.rank == 0]
            if zero:
                stamp = time.time()
                self.rank0.append((stamp, zero[0]))
                self.workers.append((stamp, sum(info.cpu for info in current.values()
                                                if info.role == "rank" and info.rank != 0)))
            for pid, info in current.items():
                known = self.last.get(pid)
                if known is not None and known.rank is not None and info.rank is None:
                    # an exiting rank's environment can no longer be read: keep what it was
                    info = ProcCpu(known.role, known.rank, max(known.cpu, info.cpu))
                self.last[pid] = info
            self._stop.wait(self.interval)

    def total(self, role: str, rank: int | None = None) -> float:
        return sum(info.cpu for info in self.last.values() if info.role == role and (rank is None or info.rank == rank))

    def rank0_between(self, begin: float, end: float) -> float:
        """Rank 0's CPU seconds between two epoch times (linear between the readings around them)."""
        return _cpu_at(self.rank0, end) - _cpu_at(self.rank0, begin)

    def workers_between(self, begin: float, end: float) -> float:
        """The worker ranks' CPU seconds between two epoch times (the same way)."""
        return _cpu_at(self.workers, end) - _cpu_at(self.workers, begin)


def _cpu_at(samples: Sequence[tuple[float, float]], when: float) -> float:
    if not samples:
        return float("nan")
    times = [stamp for stamp, _ in samples]
    index = bisect.bisect_left(times, when)
    if index == 0:
        return samples[0][1]
    if index == len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[index - 1], samples[index]
    return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1


# ---- hpcpilot over a Harvester access point -----------------------------------------------------------


def es_access_point(path: Path, n: int) -> Path:
    """One event-service job and its ``n`` ranges, as Harvester leaves them."""
    make_access_point(path, [make_job(PANDA_ID, "true", eventService="True")])
    ranges = [range_dict(i) for i in range(1, n + 1)]
    (path / "JobsEventRanges.json").write_text(json.dumps({str(PANDA_ID): ranges}))
    return path


def recorded_reports(run_h5: Path, panda_id: int) -> dict[int, Counter[float]]:
    """Per worker rank: how many outcomes rank 0 recorded at each ``recordedAt`` (one stamp per report)."""
    import h5py

    out: dict[int, Counter[float]] = defaultdict(Counter)
    with h5py.File(run_h5, "r") as record:
        for rank, group in record["ranks"].items():
            dataset = group.get(f"jobs/{panda_id}/event_ranges")
            if dataset is None:
                continue
            for row in dataset.asstr()[:]:
                out[int(rank)][json.loads(row)["recordedAt"]] += 1
    return out


def mean_gap_ms(reports: dict[int, Counter[float]]) -> float:
    """Mean time between two consecutive reports of one rank: with a null payload, one request's round trip."""
    gaps = []
    for stamps in reports.values():
        ordered = sorted(stamps)
        gaps += [b - a for a, b in pairwise(ordered)]
    return 1000.0 * statistics.fmean(gaps) if gaps else float("nan")


def check_reported_once(access_point: Path, n: int, panda_id: int = PANDA_ID) -> str:
    """'' when event_status.dump.json reports each of the ``n`` ranges exactly once, finished."""
    entries = json.loads((access_point / "event_status.dump.json").read_text()).get(str(panda_id), [])
    ranged = [entry for entry in entries if "eventRangeID" in entry]
    counts = Counter(entry["eventRangeID"] for entry in ranged)
    expected = {range_dict(i, panda_id)["eventRangeID"] for i in range(1, n + 1)}
    twice = sum(1 for count in counts.values() if count > 1)
    missing, unknown = len(expected - counts.keys()), len(counts.keys() - expected)
    statuses = dict(Counter(entry["eventStatus"] for entry in ranged))
    if twice or missing or unknown or statuses != {"finished": n}:
        return f"{twice} reported more than once, {missing} missing, {unknown} unknown, statuses {statuses}"
    return ""


def effective_settings(log: Path) -> dict[str, str]:
    """The eventservice.* values rank 0 logged at start (its config.describe())."""
    found = {}
    for line in log.read_text(errors="replace").splitlines():
        key, _, value = line.strip().partition(" = ")
        if key.startswith("eventservice.") and value:
            found[key] = value
    return found


def pilot_settings(per_request: int) -> list[str]:
    return ["eventservice.payload_mode=noop", f"eventservice.ranges_per_request={per_request}"]


def run_hpcpilot(tmp: Path, n: int, per_request: int, env: dict[str, str]) -> PilotRun:
    """One pilot run over ``n`` ranges; raises unless it exited 0 with the job finished."""
    run_dir = tmp / f"hpcpilot-{per_request}"
    access_point = es_access_point(run_dir / "access_point", n)
    with launch(pilot_argv(RANKS, access_point, run_dir, pilot_settings(per_request)), run_dir, env) as run, \
            LaunchCpu(run.pid) as cpu:
        code = run.wait(timeout=90 + n / 100)
    problem = check_pilot_run(run, code, jobs=1)
    if problem:
        raise RuntimeError(f"{run_dir}: {problem}")
    assert run.wall is not None
    reports = recorded_reports(run_dir / "work" / "run.h5", PANDA_ID)
    stamps = sorted((stamp, count) for per_rank in reports.values() for stamp, count in per_rank.items())
    (first, first_count), last = stamps[0], stamps[-1][0]
    job_end = (access_point / "jobReport.json").stat().st_mtime
    counted = n - first_count
    return PilotRun(per_request, Timed(f"hpcpilot rpr={per_request}", counted, job_end - first, run.wall),
                    steady_rate=counted / (last - first), tail=job_end - last, gap_ms=mean_gap_ms(reports),
                    rank0_busy=100.0 * cpu.rank0_between(first, job_end) / (job_end - first),
                    rank0_us=1e6 * cpu.rank0_between(first, job_end) / counted,
                    workers_us=1e6 * cpu.workers_between(first, job_end) / counted,
                    rank0_cpu=cpu.total("rank", 0), worker_cpu=cpu.total("rank") - cpu.total("rank", 0),
                    check=check_reported_once(access_point, n),
                    settings=effective_settings(run_dir / "logs" / "pilot.rank0.log"))


# ---- idle ranks during a server outage -----------------------------------------------------------------


@dataclass(frozen=True)
class IdleShare:
    """Per cent of one core over the window, and what proves the ranks were starved."""

    workers: dict[int, float]
    rank0: float
    launcher: float
    window: float
    outcomes_in_window: int
    finished_after: str


class PandaServer:
    """``hpcpilot serve`` on a free port of 127.0.0.1; faults through its admin endpoint."""

    def __init__(self, run_dir: Path, jobs: list[dict[str, Any]], ranges: int, env: dict[str, str]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "jobs.json").write_text(json.dumps(jobs))
        argv = [sys.executable, "-m", "hpcpilot", "serve", "--port", "0", "--state", str(run_dir / "state.db"),
                "--jobs", str(run_dir / "jobs.json"), "--ranges-per-job", str(ranges)]
        self.proc = subprocess.Popen(argv, cwd=run_dir, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving" not in line:
            self.stop()
            raise RuntimeError(f"hpcpilot serve did not start: {line!r}")
        self.url = line.split(" on ", 1)[1].strip().rstrip("/")

    def admin(self, name: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(f"{self.url}/admin/{name}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def panda_server(run_dir: Path, jobs: list[dict[str, Any]], ranges: int, env: dict[str, str]) -> Iterator[PandaServer]:
    server = PandaServer(run_dir, jobs, ranges, env)
    try:
        yield server
    finally:
        server.stop()


def idle_pilot_argv(run_dir: Path, url: str) -> list[str]:
    """The pilot against the server: quick retries, so it recovers within a second once the fault is cleared."""
    settings = ["eventservice.payload_mode=noop", "eventservice.ranges_per_request=32",
                "eventservice.prefetch_seconds=1", "panda.retry_initial=0.2", "panda.retry_max=1"]
    argv = [sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--server", url, "--queue",
            "BENCH", "--workdir", str(run_dir / "work"), "--log-dir", str(run_dir / "logs"),
            "--set", f"stage.output_dir={run_dir / 'outputs'}"]
    for setting in settings:
        argv += ["--set", setting]
    return mpi_argv(RANKS, argv)


def wait_for_members(job_dir: Path, count: int, run: Launched, timeout: float = 90.0) -> None:
    """Until ``count`` ranks made their directory in the ES job (they joined and take ranges)."""
    deadline = time.monotonic() + timeout
    while len(list(job_dir.glob("rank*"))) < count:
        if run.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{job_dir}: not all {count} ranks joined the job: {run.output()[-600:]}")
        time.sleep(0.05)


def window_cpu(run: Launched, settle: float, window: float) -> tuple[dict[int, ProcCpu], float, float]:
    """CPU per process over ``window`` s starting ``settle`` s from now; also the window's epoch start."""
    time.sleep(settle)
    before = snapshot(run.pid, precise=True)
    begin, epoch = time.perf_counter(), time.time()
    time.sleep(window)
    after = snapshot(run.pid, precise=True)
    return cpu_delta(before, after), epoch, time.perf_counter() - begin


def run_idle(tmp: Path, settle: float, window: float, env: dict[str, str]) -> IdleShare:
    """One ES job through ``hpcpilot serve``; a 503 outage starves the ranks; their CPU over a window."""
    run_dir, panda_id, ranges = tmp / "idle", PANDA_ID + 1, 4000
    with panda_server(run_dir, [make_job(panda_id, "true", eventService="True")], ranges, env) as server, \
            launch(idle_pilot_argv(run_dir, server.url), run_dir, env) as run:
        wait_for_members(run_dir / "work" / "jobs" / f"PandaJob_{panda_id}", RANKS - 1, run)
        server.admin("fault", {"kind": "5xx"})
        delta, begin, elapsed = window_cpu(run, settle, window)
        server.admin("fault", {})
        code = run.wait(timeout=120)
        finished = sum(1 for r in server.admin("dump", {})["event_ranges"] if r["status"] == "finished")
    if code != 0:
        raise RuntimeError(f"{run_dir}: exit status {code}: {run.output()[-600:]}")
    reports = recorded_reports(run_dir / "work" / "run.h5", panda_id)
    inside = sum(count for per_rank in reports.values() for stamp, count in per_rank.items()
                 if begin <= stamp <= begin + elapsed)
    return idle_share(delta, elapsed, inside, f"{finished} of {ranges} ranges finished after the outage")


def idle_share(delta: dict[int, ProcCpu], window: float, inside: int, finished: str) -> IdleShare:
    def percent(cpu: float) -> float:
        return 100.0 * cpu / window

    workers = {info.rank: percent(info.cpu) for info in delta.values()
               if info.role == "rank" and info.rank not in (None, 0)}
    rank0 = sum(percent(info.cpu) for info in delta.values() if info.role == "rank" and info.rank == 0)
    launcher = sum(percent(info.cpu) for info in delta.values() if info.role == "launcher")
    return IdleShare(dict(sorted(workers.items())), rank0, launcher, window, inside, finished)


# ---- profiling rank 0 ---------------------------------------------------------------------------------


PROFILE_FLAG = "--rank0-cprofile"
"""argv[1] of a pilot run whose rank 0 runs under cProfile: ``PROFILE_FLAG <stats file> <hpcpilot args>``."""
PROFILE_FUNCTIONS = ("Controller.run", "Backoff.wait", "Controller.receive_all", "MpiTransport.receive",
                     "Controller.to_events", "Controller.on_range_report", "Scheduler.handle", "Scheduler._tick",
                     "Scheduler._tick_es", "EsBook.on_report", "EsBook.serve_waiting", "Controller.execute",
                     "Controller.execute_es", "MpiTransport.send", "Controller.write_range_rows",
                     "Controller.report_ranges", "Controller.write_status")
"""Cumulative times printed for these, so the loop's time splits into its steps."""


def profiled_pilot(stats_file: str, argv: list[str]) -> int:
    """Every rank of a profiled pilot run: rank 0 under cProfile (its main thread: the controller loop),
    the others as usual (or, for a THREAD_CPU_SUFFIX file, rank 0's CPU by thread).  Why cProfile and not a
    sampler: py-spy is no dependency of the project."""
    from hpcpilot.cli import main as pilot_main

    if os.environ.get("PMI_RANK") != "0":
        return pilot_main(argv)
    if stats_file.endswith(THREAD_CPU_SUFFIX):
        return thread_cpu_pilot(stats_file, argv)
    import cProfile

    from hpcpilot.controller import Controller

    # CPU time of the main thread, not wall time: on 2 shared cores a wall clock charges to whatever call
    # was running when the kernel let another rank run.
    profiler, loop = cProfile.Profile(time.thread_time), Controller.run

    def profiled_loop(self: Controller) -> Any:  # the loop alone: start-up and shutdown are not dispatch
        profiler.enable()
        try:
            return loop(self)
        finally:
            profiler.disable()
            profiler.dump_stats(stats_file)

    Controller.run = profiled_loop  # type: ignore[method-assign]
    return pilot_main(argv)


THREAD_CPU_SUFFIX = ".cpu.json"
"""A stats file with this suffix asks for rank 0's CPU split by thread instead of a cProfile run."""


def thread_cpu_pilot(out_file: str, argv: list[str]) -> int:
    """Rank 0 without a profiler: the CPU of its loop thread and of its other threads (fetch, stage-out,
    the source's sender) from the loop's start to its end, written as JSON.  Why: the run's CPU per range
    mixes the loop with the fetch thread, which parses and checks every leased range."""
    from hpcpilot.cli import main as pilot_main
    from hpcpilot.controller import Controller

    loop = Controller.run

    def timed_loop(self: Controller) -> Any:
        thread0, process0 = time.thread_time(), time.process_time()
        try:
            return loop(self)
        finally:
            main = time.thread_time() - thread0
            Path(out_file).write_text(json.dumps({"loop": main, "others": time.process_time() - process0 - main}))

    Controller.run = timed_loop  # type: ignore[method-assign]
    return pilot_main(argv)


def rank0_threads(tmp: Path, n: int, per_request: int, env: dict[str, str]) -> None:
    """One more pilot run (no profiler): rank 0's CPU per range in its loop thread and in its other threads."""
    run_dir = tmp / f"threads-{per_request}"
    out_file = run_dir / f"rank0{THREAD_CPU_SUFFIX}"
    run_profiled_pilot(run_dir, n, per_request, env, out_file)
    cpu = json.loads(out_file.read_text())
    print(f"\nrank 0 by thread (no profiler), {n} ranges, ranges_per_request={per_request}, from the loop's start "
          f"to its end: loop thread {1e6 * cpu['loop'] / n:.1f} us CPU/range, other threads (fetch: parse and "
          f"check each leased range; stage-out; the source's sender) {1e6 * cpu['others'] / n:.1f} us/range")


def run_profiled_pilot(run_dir: Path, n: int, per_request: int, env: dict[str, str], out_file: Path) -> None:
    access_point = es_access_point(run_dir / "access_point", n)
    argv = pilot_argv(RANKS, access_point, run_dir, pilot_settings(per_request))
    module = argv.index("hpcpilot")  # ... python -m hpcpilot run ...
    argv[module:module + 1] = ["bench.bench_es_throughput", PROFILE_FLAG, str(out_file)]
    with launch(argv, run_dir, env) as run:
        code = run.wait(timeout=90 + n / 50)
    problem = check_pilot_run(run, code, jobs=1)
    if problem:
        raise RuntimeError(f"{run_dir}: {problem}")


def profile_rank0(tmp: Path, n: int, per_request: int, env: dict[str, str]) -> None:
    """One more pilot run with rank 0 under cProfile; prints where its loop spends its time."""
    run_dir = tmp / f"profile-{per_request}"
    stats_file = run_dir / "rank0.pstats"
    run_profiled_pilot(run_dir, n, per_request, env, stats_file)
    print_profile(stats_file, per_request, n)
    rank0_threads(tmp, n, per_request, env)


def print_profile(stats_file: Path, per_request: int, n: int) -> None:
    """The loop's steps (cumulative) and the functions with the most own time, as shares of the loop's
    busy time (Controller.run less Backoff.wait)."""
    import pstats

    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for (path, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        label = f"{Path(path).name}:{line} {name}" if path != "~" else name
        own[label] += tottime
        cumulative[_qualified(path, name)] += cumtime
        calls[_qualified(path, name)] += ncalls
    loop, idle = max(cumulative["Controller.run"], 1e-9), cumulative["Backoff.wait"]
    print(f"\nrank 0 under cProfile (CPU time of its main thread, the loop only), {n} ranges, "
          f"ranges_per_request={per_request}: Controller.run {loop:.2f} s CPU, {idle:.2f} s of it in Backoff.wait; "
          "cProfile slows calls down: read the shares, not the seconds")
    print(f"  loop passes (Scheduler.handle calls) {calls['Scheduler.handle']}, range reports received "
          f"{calls['Controller.on_range_report']}, range deals sent {calls['MpiTransport.send']}")
    for name in PROFILE_FUNCTIONS[1:]:
        print(f"  {100 * cumulative[name] / loop:5.1f} % cumulative  {name}")
    print("  functions with the most own CPU time, % of the loop's:")
    for label, seconds in own.most_common(18):
        print(f"  {100 * seconds / loop:5.1f} %  {label}")


def _qualified(path: str, name: str) -> str:
    """'Class.method' for the functions in PROFILE_FUNCTIONS (pstats keeps only the bare name and its file)."""
    owners = {"controller.py": "Controller", "transport.py": ("Backoff" if name == "wait" else "MpiTransport"),
              "scheduler.py": "Scheduler", "book.py": "EsBook"}
    owner = owners.get(Path(path).name)
    return f"{owner}.{name}" if owner else name


# ---- output -------------------------------------------------------------------------------------------


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}"


def batched_rows(batched: Sequence[Batched]) -> list[list[object]]:
    rows: list[list[object]] = []
    for b in batched:
        job, steady, bare = b.pilot.timed.rate, b.pilot.steady_rate, b.bare.rate
        rows.append([b.per_message, bare, b.pool.rate, job, steady, ratio(job, bare), ratio(steady, bare),
                     ratio(job, b.pool.rate), f">= {TARGET_BARE_RATIO:g}",
                     "yes" if steady / bare >= TARGET_BARE_RATIO else "NO"])
    return rows


def single_rows(singles: Sequence[Timed]) -> list[list[object]]:
    return [[t.label, t.items, t.seconds, t.rate, t.wall] for t in singles]


def detail_rows(pilots: Sequence[PilotRun]) -> list[list[object]]:
    return [[p.per_request, p.timed.wall, p.timed.seconds, p.timed.rate, p.steady_rate, p.tail, p.gap_ms,
             p.rank0_busy, p.rank0_us, p.workers_us, p.rank0_cpu, p.worker_cpu,
             p.check or "each exactly once, finished"] for p in pilots]


def print_results(n: int, batched: Sequence[Batched], singles: Sequence[Timed], bytecode: bool) -> None:
    print_table(
        f"Event-range throughput at equal batching: {n} ranges on mpiexec -n {RANKS} ({RANKS - 1} worker ranks), "
        f"{os.cpu_count()} cores",
        ["k = ranges per message in every runner: hpcpilot eventservice.ranges_per_request=k; bare mpi4py: rank 0",
         "  answers each blocking request with a list of k range dicts (prebuilt), the next request carries the k",
         "  IDs done; MPIPoolExecutor: map(noop, range(N), chunksize=k) after bootup. Rates in ranges/s.",
         "hpcpilot job/s: first outcome recorded by rank 0 -> job's final report written (status report, log",
         "  tarball and final update included); steady/s: first -> last outcome recorded (the dispatch path)",
         f"target: hpcpilot steady / bare >= {TARGET_BARE_RATIO:g} (the job ratio is shown too)",
         bytecode_note(bytecode)],
        ["k", "bare mpi4py", "pool", "hpcpilot job", "hpcpilot steady", "job/bare", "steady/bare", "job/pool",
         "target", "met"], batched_rows(batched))
    print_table("One range per message (shown apart: not the batching hpcpilot uses)",
                ["the same runners with k = 1; wall s = mpiexec launch to exit"],
                ["method", "items", "seconds", "items/s", "wall s"], single_rows(singles))
    pilots = [b.pilot for b in batched]
    print_table(
        "hpcpilot runs in detail",
        ["wall = mpiexec launch to exit (start-up of every rank included); steady = first to last outcome recorded;",
         "  tail = last outcome recorded -> final report written (status report, log tarball, final update)",
         "gap = mean time between two reports of one rank: with a null payload about one request's round trip",
         "rank 0 busy = its CPU inside the job window / the window; us/range = CPU inside the job window per",
         "  range (workers: all 7 together; 10 ms ticks read every 0.1 s); CPU s = utime+stime of the whole run"],
        ["rpr", "wall s", "job s", "job/s", "steady/s", "tail s", "gap ms", "rank 0 busy %", "rank 0 us/range",
         "workers us/range", "rank 0 CPU s", "workers CPU s", "every range reported"], detail_rows(pilots))
    settings = pilots[-1].settings
    if settings:
        print("\n  eventservice settings as rank 0 logged them (last run; ranges_per_request varied as above):")
        print("  " + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in settings.items()))
        print("  bundle_* and objstore/path settings do not apply: a null payload writes no outputs")


def print_idle(idle: IdleShare, settle: float) -> None:
    worst = max(idle.workers.values()) if idle.workers else float("nan")
    rows = [[f"rank {rank}", share, f"< {TARGET_IDLE_PERCENT:g}", "yes" if share < TARGET_IDLE_PERCENT else "NO"]
            for rank, share in idle.workers.items()]
    rows += [["rank 0 (controller)", idle.rank0, "", ""], ["launcher (mpiexec + proxy)", idle.launcher, "", ""]]
    print_table(
        f"Idle ranks: % of one core while every worker rank waits for ranges (server outage), "
        f"{idle.window:.1f} s window from {settle:g} s after the outage began",
        ["hpcpilot serve answers 503 to every call; ES job on all worker ranks, payload_mode=noop, rpr=32,",
         f"  prefetch_seconds=1; outcomes rank 0 recorded inside the window: {idle.outcomes_in_window} "
         "(0 = the ranks were starved)",
         f"after the fault was cleared: {idle.finished_after}; CPU = scheduler ns runtime per thread"],
        ["process", "% of a core", "target", "met"], rows)
    print(f"  worst worker rank: {worst:.2f} % (target < {TARGET_IDLE_PERCENT:g} %: "
          f"{'met' if worst < TARGET_IDLE_PERCENT else 'NOT met'})")


def print_targets(batched: Sequence[Batched]) -> None:
    best = max(batched, key=lambda b: b.pilot.timed.rate)
    rate = best.pilot.timed.rate
    print(f"\ntargets (best hpcpilot: ranges_per_request={best.per_message}, {rate:.0f} ranges/s job window):")
    print(f"  >= {TARGET_RATE:.0f} ranges/s: {'met' if rate >= TARGET_RATE else 'NOT met'}")
    print(f"  >= MPIPoolExecutor at the same chunksize ({best.pool.rate:.0f}/s): "
          f"{'met' if rate >= best.pool.rate else 'NOT met'} ({rate / best.pool.rate:.2f}x)")
    for b in batched:
        share = b.pilot.steady_rate / b.bare.rate
        print(f"  k={b.per_message}: steady / bare mpi4py = {share:.2f} (target >= {TARGET_BARE_RATIO:g}: "
              f"{'met' if share >= TARGET_BARE_RATIO else 'NOT met'}); job window / bare = "
              f"{b.pilot.timed.rate / b.bare.rate:.2f}")
    wrong = [b.per_message for b in batched if b.pilot.check]
    print(f"  every range reported exactly once: {'yes, in every run' if not wrong else f'NO for rpr {wrong}'}")


# ---- main -----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranges", type=int, default=50_000, help="event ranges (and pool/bare items)")
    parser.add_argument("--per-request", type=int, nargs="+", default=[8, 32, 128],
                        help="ranges per message (eventservice.ranges_per_request, pool chunksize, bare batch)")
    parser.add_argument("--quick", action="store_true", help="10,000 ranges, k 32 and 128, short idle window")
    parser.add_argument("--profile", action="store_true", help="one more run with rank 0 under cProfile (k=32)")
    parser.add_argument("--skip-idle", action="store_true", help="no server-outage idle measurement")
    parser.add_argument("--ranks", type=int, default=RANKS, help="mpiexec -n for every runner (default 8)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as set")
    parser.add_argument("--pool", type=int, nargs=2, metavar=("N", "K"), help=argparse.SUPPRESS)  # pool's rank 0
    parser.add_argument("--bare", type=int, nargs=2, metavar=("N", "K"), help=argparse.SUPPRESS)  # bare run
    args = parser.parse_args()
    if args.ranges < 1 or min(args.per_request) < 1:
        parser.error("--ranges and --per-request must be positive")
    return args


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == PROFILE_FLAG:  # one rank of a profiled pilot run
        raise SystemExit(profiled_pilot(sys.argv[2], sys.argv[3:]))
    args = parse_args()
    global RANKS  # one launch size for every runner of this run
    RANKS = args.ranks
    if args.pool is not None:
        pool_main(*args.pool)
        return
    if args.bare is not None:
        bare_main(*args.bare)
        return
    n = 10_000 if args.quick else args.ranges
    per_request = [32, 128] if args.quick else args.per_request
    settle, window = (2.0, 5.0) if args.quick else (3.0, 10.0)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    tmp = Path(tempfile.mkdtemp(prefix="hpcpilot-bench-es-"))
    try:
        env = bench_env(tmp, not args.no_bytecode_cache)
        batched = [run_batched(tmp, n, k, env) for k in per_request]
        singles = [run_bare(tmp, n, 1, env), run_pool(tmp, n, 1, env)]
        print_results(n, batched, singles, not args.no_bytecode_cache)
        print_targets(batched)
        if not args.skip_idle:
            print_idle(run_idle(tmp, settle, window, env), settle)
        if args.profile:
            profile_rank0(tmp, n, PROFILE_PER_REQUEST, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
