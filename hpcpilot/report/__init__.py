"""``hpcpilot report RUN.h5``: what happened in a pilot run, from its HDF5 run record.

The summary lists jobs finished and failed, failures by pilot error code, events, CPU
efficiency per rank and overall, memory peaks per job, and the jobs flagged as leaking.
With matplotlib installed (``pip install 'hpcpilot[plots]'``) it also writes PNG plots:
memory (PSS+swap) per rank over time with the leak fits, CPU efficiency per rank, events
per second over time, and which rank ran which job when.  Units are the same everywhere:
memory MiB, memory rates kB/s, times s (seconds since the run's start), events/s.

One module per job:

* ``read``: the run record's HDF5 layout, read into a ``RunData``;
* ``stats``: the numbers (per-job statistics, CPU efficiency, leak flags, events; their definitions);
* ``summary``: the text summary;
* ``plots``: the PNG plots, the only module that needs matplotlib;
* ``command``: the ``hpcpilot report`` options, output and exit status (``python -m hpcpilot.report``).

Start-up: the command line imports this package on every rank of every run (for ``add_report_parser``),
so none of these modules imports numpy, h5py or hpcpilot.runrecord (which imports both) at module level:
the functions that need them import them, because ~130 ms of numpy + h5py per worker rank tripled the
pilot's start-up.
"""

from hpcpilot.report.command import add_report_parser, main, report_main
from hpcpilot.report.plots import TIME_LABEL, memory_figure, plots_available, write_plots
from hpcpilot.report.read import JobSeries, RunData, RunFileError, load_run
from hpcpilot.report.stats import (
    DEFAULT_LEAK_GROWTH_PERCENT,
    DEFAULT_LEAK_MIB_PER_MIN,
    FINAL_STATES,
    KIB_PER_MIB,
    JobStats,
    LeakPolicy,
    cpu_efficiency,
    event_times,
    job_cpu_seconds,
    job_stats,
    memory_series,
    rank_timeline,
)
from hpcpilot.report.summary import summarize

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
