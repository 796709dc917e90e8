"""``RunSummary``: W/summary.json, the closing line and the exit status of a pilot run (rank 0).

summary.json lists every job this pilot ran with PanDA's field names, whether the source acknowledged
its final update, and event ranges by the status acknowledged.  It is rewritten whole, so it is
rewritten at most every ``monitor.status_interval`` and never sooner than ``1 / SUMMARY_MAX_SHARE``
times its own last rewrite time; at once on a signal and at the end.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hpcpilot import __version__
from hpcpilot.errors import cutting_signal, pilot_exit_status
from hpcpilot.scheduler import Scheduler
from hpcpilot.signals import SignalFlag
from hpcpilot.slurm import warning_signum
from hpcpilot.sourcecalls import SourceCalls
from hpcpilot.sources import Delivery
from hpcpilot.states import JobState

SUMMARY_FILE = "summary.json"
SUMMARY_MAX_SHARE = 0.02
"""summary.json is rewritten whole (every job), so between rewrites rank 0 waits at least the rewrite's
cost / this share as well as monitor.status_interval: its share of rank 0's time stays under 2 % and its
cost per final report stays flat however many jobs the file lists."""


class RunSummary:
    """What rank 0 says about the run as a whole: in summary.json, in its last line, in its exit status."""

    def __init__(self, workdir: Path, scheduler: Scheduler, calls: SourceCalls, n_ranks: int,
                 clock: Callable[[], float]) -> None:
        self.workdir, self.scheduler, self.calls, self.n_ranks, self.clock = workdir, scheduler, calls, n_ranks, clock
        self.started = clock()
        self.stop_signal: int | None = None
        self.due, self.stale = 0.0, False  # next rewrite allowed at; a job ended since the last one

    def delivery(self) -> Delivery:
        """What the source acknowledged and what is owed.  A source without acknowledgements (a Harvester
        access point: a report is delivered once its file is written) counts what was reported."""
        report = self.calls.source.delivery()
        if report is not None:
            return report
        return Delivery({pid: dict(counts) for pid, counts in self.calls.range_counts.items()},
                        {r.panda_id: "acknowledged" for r in self.scheduler.done})

    def write_if_due(self) -> None:
        """Rewrite summary.json if a job ended since the last rewrite and the next one is allowed
        (``SUMMARY_MAX_SHARE``); ``run`` writes it at its end and ``check_signals`` on a signal."""
        if self.stale and self.clock() >= self.due:
            self.write()

    def write(self) -> None:
        """summary.json: every job this pilot ran, with PanDA field names, the rank and whether the
        source has acknowledged its final update; event ranges as acknowledged, rejected and owed."""
        began = time.perf_counter()
        done = self.scheduler.done
        delivery = self.delivery()
        summary = {
            "pilot": {"version": __version__, "site": self.scheduler.config.site.name,
                      "ranks": self.n_ranks, "start": self.started, "end": self.clock(),
                      "signal": signal.Signals(self.stop_signal).name if self.stop_signal else None,
                      "owed": delivery.owed, "journal": delivery.journal or None,
                      "gave_up": self.scheduler.gave_up or None},
            "jobs": [{**record.to_summary(), "delivery": delivery.jobs.get(record.panda_id, "owed")}
                     for record in done],
            "event_ranges": {str(panda_id): counts for panda_id, counts in delivery.ranges.items()},
        }
        tmp = self.workdir / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str))
        os.replace(tmp, self.workdir / SUMMARY_FILE)
        cost = time.perf_counter() - began
        self.stale = False
        self.due = self.clock() + max(self.scheduler.config.monitor.status_interval, cost / SUMMARY_MAX_SHARE)

    def human(self) -> str:
        """The closing line(s): jobs by outcome, what is still owed and where, why the pilot gave up."""
        done = self.scheduler.done
        failed = [r for r in done if r.state == JobState.FAILED]
        codes = Counter(r.pilot_error_code for r in failed)
        by_code = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
        elapsed = self.clock() - self.started
        line = (f"hpcpilot: {len(done)} job(s), {len(done) - len(failed)} finished, {len(failed)} failed"
                f"{f' ({by_code})' if by_code else ''} in {elapsed:.0f} s on {self.n_ranks} rank(s); "
                f"summary: {self.workdir / SUMMARY_FILE}")
        delivery = self.delivery()
        if delivery.owed:
            line += (f"\nhpcpilot: {delivery.owed} update(s) NOT acknowledged by the server, kept in "
                     f"{delivery.journal}; deliver them with `hpcpilot deliver --workdir {self.workdir}` "
                     "(or start the next pilot on this work directory)")
        if self.scheduler.gave_up:
            line += f"\nhpcpilot: {self.scheduler.gave_up}"
        return line

    def exit_status(self, signals: SignalFlag) -> int:
        """The process exit status (hpcpilot.errors: owed 3, a signal that cut the run short 128+n, gave up 4,
        else 0 - also after the warning signal's orderly wind-down)."""
        cut = cutting_signal(signals.received, warning_signum(self.scheduler.config))
        return pilot_exit_status(cut, self.delivery().owed, bool(self.scheduler.gave_up))
