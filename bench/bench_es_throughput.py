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
  range(N), chunksize=1)`` timed around the map after ``bootup`` (7 workers).
* bare mpi4py, the ceiling: rank 0 answers blocking ``comm.recv`` requests from 7 workers
  with ``comm.send`` of one small range dict each, timed from a barrier to the last answer.

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

Not a test: nothing is asserted.  ``--profile`` adds one hpcpilot run with py-spy (if it is
installed in the venv; it is not a dependency) recording rank 0, and prints where it spends
its time, idle included.

    .venv/bin/python -m bench.bench_es_throughput [--quick] [--ranges N] [--per-request 8 32 128] [--profile]
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


def pool_main(n: int) -> None:
    """Rank 0 of the MPIPoolExecutor run: boot the workers, then time map(noop) alone."""
    from mpi4py.futures import MPIPoolExecutor

    from bench.bench_es_throughput import noop as named_noop  # pickled by module name, not __main__

    with MPIPoolExecutor() as executor:
        executor.bootup(wait=True)
        begin = time.perf_counter()
        done = sum(1 for _ in executor.map(named_noop, range(n), chunksize=1))
        elapsed = time.perf_counter() - begin
    if done != n:
        raise SystemExit(f"pool: {done} of {n} results")
    print(f"{POOL_MARK}{elapsed:.6f}", flush=True)


def bare_main(n: int) -> None:
    """Every rank of the bare mpi4py run: rank 0 serves one range per request, the others ask."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    comm.Barrier()
    if comm.Get_rank() == 0:
        begin = time.perf_counter()
        done = bare_serve(comm, n, MPI.ANY_SOURCE, MPI.Status())
        elapsed = time.perf_counter() - begin
        if done != n:
            raise SystemExit(f"bare: {done} of {n} items came back")
        print(f"{BARE_MARK}{elapsed:.6f}", flush=True)
    else:
        bare_work(comm)


def bare_serve(comm: Any, n: int, any_source: int, status: Any) -> int:
    """Answer requests (blocking receives) until every worker got its stop; returns the items done."""
    dealt = done = stopped = 0
    while stopped < comm.Get_size() - 1:
        request = comm.recv(source=any_source, tag=REQUEST_TAG, status=status)
        done += request["done"] is not None
        if dealt < n:
            dealt += 1
            comm.send(range_dict(dealt), dest=status.Get_source(), tag=ITEM_TAG)
        else:
            comm.send(None, dest=status.Get_source(), tag=ITEM_TAG)
            stopped += 1
    return done


def bare_work(comm: Any) -> None:
    """Ask for a range, do nothing with it, report it with the next request."""
    done = None
    while True:
        comm.send({"rank": comm.Get_rank(), "done": done}, dest=0, tag=REQUEST_TAG)
        item = comm.recv(source=0, tag=ITEM_TAG)
        if item is None:
            return
        done = noop(item)["eventRangeID"]


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


def run_pool(tmp: Path, n: int, env: dict[str, str]) -> Timed:
    argv = [sys.executable, "-m", "mpi4py.futures", str(Path(__file__).resolve()), "--pool", str(n)]
    return run_baseline(tmp, "MPIPoolExecutor", argv, POOL_MARK, n, env)


def run_bare(tmp: Path, n: int, env: dict[str, str]) -> Timed:
    argv = [sys.executable, "-m", "bench.bench_es_throughput", "--bare", str(n)]
    return run_baseline(tmp, "bare mpi4py", argv, BARE_MARK, n, env)


# ---- CPU of the launch over time ---------------------------------------------------------------------


class LaunchCpu:
    """Polls every process of a launch: the last CPU reading of each (so ranks that already exited
    still count) and rank 0's CPU over time (to tell how busy it was inside the job window).

    Why not CpuTracker: it keeps only the last reading, and a window inside the run needs two.
    """

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.last: dict[int, ProcCpu] = {}
        self.rank0: list[tuple[float, float]] = []
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
                self.rank0.append((time.time(), zero[0]))
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


def rank_pid(root: int, rank: int, timeout: float = 30.0) -> int | None:
    """The pid of ``rank`` under our own launcher (found through its process tree, never a stranger's)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = psutil.Process(root).children(recursive=True)
        except psutil.Error:
            return None
        for child in children:
            try:
                if child.environ().get("PMI_RANK") == str(rank) and "hpcpilot" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.02)
    return None


def profile_rank0(tmp: Path, n: int, per_request: int, env: dict[str, str]) -> None:
    """One more pilot run with py-spy on rank 0 (idle included); prints the busiest hpcpilot lines."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print("\n--profile: py-spy is not installed in the venv (.venv/bin/pip install py-spy); skipped")
        return
    run_dir = tmp / f"profile-{per_request}"
    access_point = es_access_point(run_dir / "access_point", n)
    raw = run_dir / "rank0.txt"
    with launch(pilot_argv(RANKS, access_point, run_dir, pilot_settings(per_request)), run_dir, env) as run:
        pid = rank_pid(run.pid, 0)
        if pid is None:
            raise RuntimeError(f"{run_dir}: rank 0 not found")
        spy_argv = [str(spy), "record", "-p", str(pid), "-r", "200", "--idle", "-f", "raw", "-o", str(raw),
                    "--nonblocking"]
        with subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as recorder:
            run.wait(timeout=90 + n / 100)
            recorder.wait(timeout=60)
    print_profile(raw, per_request, n)


def print_profile(raw: Path, per_request: int, n: int) -> None:
    """Samples per thread state, and the deepest hpcpilot frame of the main thread's busy samples."""
    idle = busy = 0
    lines: Counter[str] = Counter()
    for row in raw.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        frames = stack.split(";")
        if "Controller.run" not in stack:
            continue  # start-up, shutdown and the fetch/stage-out threads
        if any(f.startswith(("Backoff.wait", "sleep")) for f in frames):
            idle += int(count)
            continue
        busy += int(count)
        own = [f for f in frames if "hpcpilot/" in f]
        lines[own[-1] if own else frames[-1]] += int(count)
    total = max(1, idle + busy)
    print(f"\nrank 0 under py-spy (200 Hz, idle included), {n} ranges, ranges_per_request={per_request}: "
          f"main loop {100 * idle / total:.0f} % asleep in Backoff.wait, {100 * busy / total:.0f} % busy")
    for frame, count in lines.most_common(12):
        print(f"  {100 * count / total:5.1f} %  {frame}")


# ---- output -------------------------------------------------------------------------------------------


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}"


def throughput_rows(bare: Timed, pool: Timed, pilots: Sequence[PilotRun]) -> list[list[object]]:
    rows: list[list[object]] = [[bare.label + " (ceiling)", bare.items, bare.seconds, bare.rate, bare.wall,
                                 ratio(bare.rate, pool.rate), "1.00", "", ""],
                                [pool.label, pool.items, pool.seconds, pool.rate, pool.wall, "1.00",
                                 ratio(pool.rate, bare.rate), "", ""]]
    for pilot in pilots:
        rate = pilot.timed.rate
        met = "yes" if rate >= TARGET_RATE and rate >= pool.rate else "NO"
        rows.append([pilot.timed.label, pilot.timed.items, pilot.timed.seconds, rate, pilot.timed.wall,
                     ratio(rate, pool.rate), ratio(rate, bare.rate), f">= {TARGET_RATE:.0f}/s and >= pool", met])
    return rows


def detail_rows(pilots: Sequence[PilotRun]) -> list[list[object]]:
    return [[p.per_request, p.timed.wall, p.timed.seconds, p.timed.rate, p.steady_rate, p.tail, p.gap_ms,
             p.rank0_busy, p.rank0_cpu, p.worker_cpu, p.check or "each exactly once, finished"] for p in pilots]


def print_results(n: int, bare: Timed, pool: Timed, pilots: Sequence[PilotRun], bytecode: bool) -> None:
    print_table(
        f"Event-range throughput: {n} items on mpiexec -n {RANKS} ({RANKS - 1} worker ranks), {os.cpu_count()} cores",
        ["hpcpilot: one ES job from a Harvester access point, payload_mode=noop; seconds = first outcome recorded",
         "  by rank 0 -> job's final report written (run.h5 recordedAt, jobReport.json mtime); items = ranges",
         "  after the first report",
         "MPIPoolExecutor: map(noop, range(N), chunksize=1), timed around map after bootup",
         "wall s = mpiexec launch to exit, start-up of the 8 ranks included",
         "bare mpi4py: blocking recv/send of one small range dict per request, timed from a barrier; a ceiling",
         "  for one item per message: hpcpilot deals ranges_per_request ranges per message, so it may pass it",
         bytecode_note(bytecode)],
        ["method", "items", "seconds", "items/s", "wall s", "vs pool", "vs bare", "target", "met"],
        throughput_rows(bare, pool, pilots))
    print_table(
        "hpcpilot runs in detail",
        ["wall = mpiexec launch to exit (start-up of 8 ranks included); steady = first to last outcome recorded;",
         "  tail = last outcome recorded -> final report written (status report, log tarball, final update)",
         "gap = mean time between two reports of one rank: with a null payload about one request's round trip",
         "rank 0 busy = its CPU inside the job window / the window; CPU s = utime+stime of the whole run"],
        ["rpr", "wall s", "job s", "job/s", "steady/s", "tail s", "gap ms", "rank 0 busy %", "rank 0 CPU s",
         "workers CPU s", "every range reported"], detail_rows(pilots))
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


def print_targets(pool: Timed, pilots: Sequence[PilotRun]) -> None:
    best = max(pilots, key=lambda p: p.timed.rate)
    rate = best.timed.rate
    print(f"\ntargets (best hpcpilot: ranges_per_request={best.per_request}, {rate:.0f} ranges/s):")
    print(f"  >= {TARGET_RATE:.0f} ranges/s: {'met' if rate >= TARGET_RATE else 'NOT met'}")
    print(f"  >= MPIPoolExecutor ({pool.rate:.0f}/s): {'met' if rate >= pool.rate else 'NOT met'} "
          f"({rate / pool.rate:.2f}x)")
    wrong = [p.per_request for p in pilots if p.check]
    print(f"  every range reported exactly once: {'yes, in every run' if not wrong else f'NO for rpr {wrong}'}")


# ---- main -----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranges", type=int, default=50_000, help="event ranges (and pool/bare items)")
    parser.add_argument("--per-request", type=int, nargs="+", default=[8, 32, 128],
                        help="eventservice.ranges_per_request values to run")
    parser.add_argument("--quick", action="store_true", help="10,000 ranges, rpr 32 and 128, short idle window")
    parser.add_argument("--profile", action="store_true", help="one more run with py-spy on rank 0")
    parser.add_argument("--skip-idle", action="store_true", help="no server-outage idle measurement")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as set")
    parser.add_argument("--pool", type=int, metavar="N", help=argparse.SUPPRESS)  # rank 0 of the pool run
    parser.add_argument("--bare", type=int, metavar="N", help=argparse.SUPPRESS)  # every rank of the bare run
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.pool is not None:
        pool_main(args.pool)
        return
    if args.bare is not None:
        bare_main(args.bare)
        return
    n = 10_000 if args.quick else args.ranges
    per_request = [32, 128] if args.quick else args.per_request
    settle, window = (2.0, 5.0) if args.quick else (3.0, 10.0)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    tmp = Path(tempfile.mkdtemp(prefix="hpcpilot-bench-es-"))
    try:
        env = bench_env(tmp, not args.no_bytecode_cache)
        bare = run_bare(tmp, n, env)
        pool = run_pool(tmp, n, env)
        pilots = [run_hpcpilot(tmp, n, rpr, env) for rpr in per_request]
        print_results(n, bare, pool, pilots, not args.no_bytecode_cache)
        print_targets(pool, pilots)
        if not args.skip_idle:
            print_idle(run_idle(tmp, settle, window, env), settle)
        if args.profile:
            profile_rank0(tmp, n, max(per_request), env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
