"""The report's default leak thresholds and units, in a module of their own.

Start-up: ``hpcpilot.cli`` builds the ``report`` sub-command's options on every rank of every run, and
their defaults and help text need only these numbers; ``hpcpilot.report.stats`` (the run-record reader,
the leak fits and the records with it) is imported when a report is made.
"""

DEFAULT_LEAK_MIB_PER_MIN = 1.0
DEFAULT_LEAK_GROWTH_PERCENT = 10.0
KIB_PER_MIB = 1024.0


def kb_per_s(mib_per_min: float) -> float:
    """A leak slope in the report's unit for memory rates (kB/s, jobMetrics' ``leak=``)."""
    return mib_per_min * KIB_PER_MIB / 60.0
