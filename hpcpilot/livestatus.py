"""A running pilot seen from outside: ``W/status.json``, ``W/metrics.prom`` and ``hpcpilot status W``.

Rank 0 rewrites both files at most once per ``monitor.status_interval`` and once at the end, each to a
temporary name and renamed, so a reader never sees half a file.  A snapshot costs O(ranks + running jobs +
event-service jobs + new final records), never O(every job ever done): finished jobs are counted as they end.
``metrics.prom`` is Prometheus text exposition for node_exporter's textfile collector (copy or link it into
its ``--collector.textfile.directory``), so a site scrapes the pilot without a daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from hpcpilot.batchinfo import batch_job
from hpcpilot.states import JobState, RankState

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.prom"
LAST_ERRORS = 5
RANK_STATES = ("busy", "idle", "starting", "stopping", "stopped", "lost")
# where the deadline behind "time left" comes from: --walltime / walltime.limit, or the Slurm job's end time
WALLTIME, SLURM = "walltime", "slurm"


def deadline_source(walltime_limit: float, deadline: float | None, environ: Any = os.environ) -> dict[str, Any]:
    """Which clock "time left" counts down, as status.json holds it: ``{"source": "walltime"|"slurm"|None,
    "batch_job": id or None}``.  It follows cli._deadline's order (a configured walltime wins, else the Slurm
    allocation's end) so an operator can tell "the pilot's own --walltime" from "Slurm will kill the job"."""
    job = batch_job(environ)
    slurm_job = job[1] if job and job[0] == "SLURM" else None
    source = None if deadline is None else WALLTIME if walltime_limit else SLURM
    return {"source": source, "batch_job": slurm_job}


class LiveStatus:
    """Rank 0's view for operators: counts final records as they come, writes the two files."""

    def __init__(self, workdir: Path, site: str, n_ranks: int, started: float) -> None:
        self.workdir, self.site, self.n_ranks, self.started = workdir, site, n_ranks, started
        self.counted = 0
        self.done: Counter[str] = Counter()
        self.errors: deque[dict[str, Any]] = deque(maxlen=LAST_ERRORS)
        self.deadline_from: dict[str, Any] | None = None  # deadline_source(), taken at the first snapshot

    def _count_new(self, done: list[Any]) -> None:
        for record in done[self.counted:]:
            self.done[str(record.state)] += 1
            if record.state == JobState.FAILED:
                self.errors.append({"PandaID": record.panda_id, "code": record.pilot_error_code,
                                    "diag": record.pilot_error_diag[:200]})
        self.counted = len(done)

    def snapshot(self, scheduler: Any, now: float, ended: bool = False) -> dict[str, Any]:
        """The numbers of one moment, as status.json holds them."""
        self._count_new(scheduler.done)
        ranks = scheduler.ranks.counts  # kept by the registry as states change: no recount
        deadline = scheduler.policy.deadline
        if self.deadline_from is None:
            self.deadline_from = deadline_source(scheduler.config.walltime.limit, deadline)
        return {
            "site": self.site, "pid": os.getpid(), "state": "ended" if ended else "running",
            "started": self.started, "updated": now, "ranks_total": self.n_ranks, "worker_ranks": len(scheduler.ranks),
            "jobs": {"running": len(scheduler.jobs) + len(scheduler.es), "queued": len(scheduler.pending),
                     "finished": self.done[str(JobState.FINISHED)], "failed": self.done[str(JobState.FAILED)]},
            "ranks": {state: ranks.get(RankState(state), 0) for state in RANK_STATES},
            "time_left": None if deadline is None else max(0.0, deadline - now),
            "guard_in": None if deadline is None else max(0.0, deadline - scheduler.policy.margin - now),
            "time_left_source": self.deadline_from["source"], "slurm_job": self.deadline_from["batch_job"],
            "event_service": [_es_progress(book, now) for book in scheduler.es.values()],
            "last_errors": list(self.errors),
        }

    def write(self, snapshot: dict[str, Any]) -> None:
        """Both files, each atomically (temporary name, then rename in the same directory)."""
        _atomic_write(self.workdir / STATUS_FILE, json.dumps(snapshot, indent=1))
        _atomic_write(self.workdir / METRICS_FILE, metrics_text(snapshot))


def _es_progress(book: Any, now: float) -> dict[str, Any]:
    running_for = now - book.opened_at if book.opened_at is not None else 0.0

    def rate(n: int) -> float:
        return n / running_for if running_for > 0 else 0.0

    # processed: a rank is done with the range; finished: staged out in a bundle and reported finished
    return {"PandaID": book.panda_id, "ranks": len(book.members), "ranges_queued": len(book.queue),
            "ranges_in_hand": len(book.dealt), "ranges_processed": book.consumed,
            "events_processed": book.processed_events, "ranges_finished": book.finished_ranges,
            "ranges_reported": len(book.reported), "events_finished": book.finished_events,
            "ranges_per_second": rate(book.consumed), "events_per_second": rate(book.processed_events)}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- Prometheus text exposition --------------------------------------------------------------


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(snapshot: dict[str, Any]) -> str:
    """The snapshot as Prometheus text exposition (format 0.0.4), every name prefixed ``hpcpilot_``."""
    site = f'site="{_label(snapshot["site"])}"'
    out: list[str] = []

    def family(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.extend([f"# HELP hpcpilot_{name} {help_text}", f"# TYPE hpcpilot_{name} gauge"])
        out.extend(f"hpcpilot_{name}{{{site}{labels}}} {float(value)!r}" for labels, value in samples)

    family("jobs", "Jobs of this pilot by state.",
           [(f',state="{state}"', n) for state, n in snapshot["jobs"].items()])
    family("ranks", "Worker ranks by state.", [(f',state="{state}"', n) for state, n in snapshot["ranks"].items()])
    family("up", "1 while the pilot runs, 0 once it has ended.", [("", snapshot["state"] == "running")])
    family("start_time_seconds", "When the pilot started (Unix time).", [("", snapshot["started"])])
    family("last_update_seconds", "When these numbers were taken (Unix time).", [("", snapshot["updated"])])
    if snapshot["time_left"] is not None:
        source = f',source="{_label(snapshot.get("time_left_source") or "")}"'
        family("time_left_seconds", "Seconds until the allocation ends (source: walltime or slurm).",
               [(source, snapshot["time_left"])])
    es = snapshot["event_service"]
    for key, help_text in (("ranges_processed", "Event ranges a rank is done with (any outcome)."),
                           ("events_processed", "Events of ranges a rank finished."),
                           ("ranges_finished", "Event ranges staged out and reported finished."),
                           ("events_finished", "Events of ranges reported finished."),
                           ("events_per_second", "Events processed per second since the job opened."),
                           ("ranks", "Ranks working on the event-service job.")):
        if es:
            family(f"es_{key}", help_text, [(f',panda_id="{e["PandaID"]}"', e[key]) for e in es])
    return "\n".join(out) + "\n"


# ---- hpcpilot status ------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unlimited"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _time_left_source(snapshot: dict[str, Any]) -> str:
    """What "time left" counts down to; a status.json of an older pilot has no source and says nothing."""
    source, job = snapshot.get("time_left_source"), snapshot.get("slurm_job")
    if source == WALLTIME:
        return " (by --walltime)"
    if source == SLURM:
        return f" (Slurm job {job}'s end)" if job else " (Slurm job's end)"
    if "time_left_source" not in snapshot:
        return ""
    return f" (no --walltime; Slurm job {job}'s end unknown)" if job else " (no --walltime, not in a Slurm job)"


def format_status(snapshot: dict[str, Any], now: float) -> str:
    """status.json for a human: one screen."""
    jobs, ranks = snapshot["jobs"], snapshot["ranks"]
    age = now - snapshot["updated"]
    up = _duration(snapshot["updated"] - snapshot["started"])
    lines = [f"hpcpilot on {snapshot['site']}: {snapshot['state']}, up {up} (pid {snapshot['pid']}; numbers "
             f"{age:.0f} s old)",
             "jobs:  " + "  ".join(f"{state} {n}" for state, n in jobs.items()),
             f"worker ranks: {snapshot['worker_ranks']} of {snapshot['ranks_total']} ("
             + "  ".join(f"{state} {n}" for state, n in ranks.items() if n) + ")",
             f"time left: {_duration(snapshot['time_left'])}{_time_left_source(snapshot)}  "
             f"(walltime guard in {_duration(snapshot['guard_in'])})"]
    for es in snapshot["event_service"]:
        lines.append(f"ES job {es['PandaID']}: {es['ranks']} rank(s); ranges processed {es['ranges_processed']} at "
                     f"{es['ranges_per_second']:.2f}/s, in hand {es['ranges_in_hand']}, queued {es['ranges_queued']}, "
                     f"reported finished {es['ranges_finished']}; events processed {es['events_processed']} at "
                     f"{es['events_per_second']:.2f}/s")
    if snapshot["last_errors"]:
        lines.append("last errors:")
        lines += [f"  job {e['PandaID']}: {e['code']} {e['diag']}" for e in snapshot["last_errors"]]
    return "\n".join(lines) + "\n"


def add_status_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("status", help="show a running pilot's W/status.json for a human")
    parser.add_argument("workdir", type=Path, help="the pilot's work directory")
    parser.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    return parser


class NoStatus(Exception):
    """There is no status.json to show (yet), or it cannot be read."""


def _read(workdir: Path) -> dict[str, Any]:
    path = workdir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NoStatus(f"{path}: no status yet (is a pilot running on this work directory?)") from None
    except (OSError, ValueError) as exc:
        raise NoStatus(f"{path}: unreadable ({exc})") from None


def status_main(args: argparse.Namespace) -> int:
    """Print the status once, or redraw it until Ctrl-C (--watch); 2 with one line when there is none."""
    try:
        if args.watch is None:
            sys.stdout.write(format_status(_read(args.workdir), time.time()))
            return 0
        while True:
            sys.stdout.write("\x1b[H\x1b[2J" + format_status(_read(args.workdir), time.time()))
            sys.stdout.flush()
            time.sleep(max(0.2, args.watch))
    except NoStatus as exc:
        print(f"hpcpilot status: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the way out of --watch
        return 0
