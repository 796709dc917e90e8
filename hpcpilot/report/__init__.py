"""``hpcpilot report RUN.h5``: what happened in a pilot run, from its HDF5 run record.

The summary lists jobs finished and failed, failures by pilot error code, events, CPU
efficiency per rank and overall, memory peaks per job, and the jobs flagged as leaking.
With matplotlib installed (``pip install 'hpcpilot[plots]'``) it also writes PNG plots:
memory (PSS+swap) per rank over time with the leak fits, CPU efficiency per rank, events
per second over time, and which rank ran which job when.  Units are the same everywhere:
memory MiB, memory rates kB/s, times s (seconds since the run's start), events/s.

One module per job:

* ``read``: the run record's HDF5 layout, read into a ``RunData``;
* ``defaults``: the default leak thresholds and units (all the command line needs at every start);
* ``stats``: the numbers (per-job statistics, CPU efficiency, leak flags, events; their definitions);
* ``summary``: the text summary;
* ``plots``: the PNG plots, the only module that needs matplotlib;
* ``command``: the ``hpcpilot report`` options, output and exit status (``python -m hpcpilot.report``).

Start-up: the command line imports this package on every rank of every run (for ``add_report_parser``),
so none of these modules imports numpy, h5py or hpcpilot.runrecord (which imports both) at module level:
the functions that need them import them, because ~130 ms of numpy + h5py per worker rank tripled the
pilot's start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

# Which module each public name lives in; imported on first use (PEP 562, ``__getattr__`` below).
# Start-up: ``hpcpilot.cli`` builds its parser on every rank of every run and needs only
# ``add_report_parser``; importing the plots, the reader and the summary eagerly cost every worker rank
# their import too.  None of these modules imports this package's names, so this hides no import cycle.
_WHERE = {
    "add_report_parser": "command", "main": "command", "report_main": "command",
    "TIME_LABEL": "plots", "memory_figure": "plots", "plots_available": "plots", "write_plots": "plots",
    "JobSeries": "read", "RunData": "read", "RunFileError": "read", "load_run": "read",
    "DEFAULT_LEAK_GROWTH_PERCENT": "defaults", "DEFAULT_LEAK_MIB_PER_MIN": "defaults", "KIB_PER_MIB": "defaults",
    "FINAL_STATES": "stats", "JobStats": "stats", "LeakPolicy": "stats", "cpu_efficiency": "stats",
    "event_times": "stats", "job_cpu_seconds": "stats", "job_stats": "stats", "memory_series": "stats",
    "rank_timeline": "stats",
    "summarize": "summary",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "DEFAULT_LEAK_GROWTH_PERCENT",
    "DEFAULT_LEAK_MIB_PER_MIN",
    "FINAL_STATES",
    "KIB_PER_MIB",
    "TIME_LABEL",
    "JobSeries",
    "JobStats",
    "LeakPolicy",
    "RunData",
    "RunFileError",
    "add_report_parser",
    "cpu_efficiency",
    "event_times",
    "job_cpu_seconds",
    "job_stats",
    "load_run",
    "main",
    "memory_figure",
    "memory_series",
    "plots_available",
    "rank_timeline",
    "report_main",
    "summarize",
    "write_plots",
]
