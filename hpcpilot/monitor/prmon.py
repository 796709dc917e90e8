"""prmon-compatible output: the per-sample text table, the JSON summary, and a reader.

prmon is not installable here (no package), yet PanDA tools and the memory-leak fit read
its files, so hpcpilot writes the same formats itself.  The text file gets one flushed row
per sample, so a pilot killed with SIGKILL still leaves a readable table; the summary is
written to a temporary name and renamed, so a reader never sees half a JSON document.

The one deliberate difference from prmon: ``Time`` is written with the sample's full
precision (the shortest text that reads back as the same float, e.g. ``1700000012.5013``),
not truncated to whole seconds.  hpcpilot samples every ``monitor.report_interval``, which
may be well under a second; truncated times would make the leak fit of this file (pilot3
fits ``pss+swap`` against ``Time``, the same fit as the job's jobMetrics) differ from the
fit of the very same samples in jobMetrics and in the run record by about a percent on a
short job sampled every half second, and by more at shorter intervals.  PanDA's readers
convert every field with ``float()``, so they read it as is.

With GPUs (``hpcpilot.monitor.gpu``), rows end with prmon's GPU columns ``ngpus gpusmpct gpumempct gpufbmem``
and the summary has their Max and Avg and ``HW.gpu``, as prmon's nvidiamon writes them.

The reader finds columns by header name, so it reads any prmon version (network and GPU
columns are ignored) and the older ATLAS MemoryMonitor files with upper-case names.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcpilot.monitor.gpu import GPU_COLUMNS, GpuSample
from hpcpilot.monitor.metrics import SeriesStats
from hpcpilot.monitor.samples import TreeSample

PRMON_COLUMNS = ("Time", "nprocs", "nthreads", "wtime", "stime", "utime", "pss", "rss", "swap", "vmem",
                 "rchar", "read_bytes", "wchar", "write_bytes")

# Lower-cased header names of MemoryMonitor (and spelling variants) -> prmon's names.
_ALIASES = {"time": "Time", "rbytes": "read_bytes", "wbytes": "write_bytes", "readbytes": "read_bytes",
            "writebytes": "write_bytes"}
_KNOWN = {name.lower(): name for name in PRMON_COLUMNS}


def format_gpu(sample: GpuSample | None) -> str:
    """The GPU columns of a row (a tab first); zeros for a sample NVML could not take."""
    values = (0, 0, 0, 0) if sample is None else (sample.ngpus, sample.gpusmpct, sample.gpumempct, sample.gpufbmem)
    return "".join(f"\t{value}" for value in values)


def format_row(sample: TreeSample, start: float) -> str:
    """One text row in prmon's column order: integers, memory kB, I/O bytes, times in s.

    ``Time`` keeps the sample's exact epoch time (see the module docstring); the other
    columns are integers as prmon writes them.
    """
    values = (repr(float(sample.time)), sample.nprocs, sample.nthreads, int(max(sample.time - start, 0.0)),
              int(sample.stime), int(sample.utime), sample.pss, sample.rss, sample.swap, sample.vmem,
              sample.rchar, sample.read_bytes, sample.wchar, sample.write_bytes)
    return "\t".join(str(value) for value in values) + "\n"


class PrmonWriter:
    """Appends samples to a prmon text file, header first; with ``gpu``, prmon's GPU columns after the others
    (only for a payload that has GPUs, as prmon writes them only where nvidiamon runs).

    The file is opened per row: a row every few seconds makes that cost nothing, and no
    handle is left open when a job ends without closing its writer.
    """

    def __init__(self, path: str | os.PathLike[str], start: float, gpu: bool = False) -> None:
        self.path = Path(path)
        self.start = start
        self.gpu = gpu

    def append(self, sample: TreeSample, gpu: GpuSample | None = None) -> None:
        """Write one row (and the header if the file is new), flushed to the kernel."""
        with open(self.path, "a", encoding="ascii") as handle:
            if handle.tell() == 0:
                handle.write("\t".join(PRMON_COLUMNS + (GPU_COLUMNS if self.gpu else ())) + "\n")
            row = format_row(sample, self.start)
            handle.write(row[:-1] + format_gpu(gpu) + "\n" if self.gpu else row)
            handle.flush()


def write_summary(path: str | os.PathLike[str], stats: SeriesStats | Mapping[str, Any]) -> None:
    """Write the JSON summary atomically (temporary file in the same directory, then rename)."""
    summary = stats.to_prmon_summary() if isinstance(stats, SeriesStats) else dict(stats)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _column_names(header: list[str]) -> dict[int, str]:
    """Header position -> prmon name, for the columns this reader knows."""
    names: dict[int, str] = {}
    for index, raw in enumerate(header):
        lowered = raw.strip().lower()
        name = _KNOWN.get(lowered) or _ALIASES.get(lowered)
        if name is not None and name not in names.values():
            names[index] = name
    return names


def _parse_row(fields: list[str], columns: dict[int, str]) -> dict[str, float] | None:
    """The known values of one data row, or None when it is short or not numeric."""
    try:
        values = {name: float(fields[index]) for index, name in columns.items()}
    except (IndexError, ValueError):
        return None
    if any(math.isnan(value) for value in values.values()):
        return None
    return values


def read_prmon_text(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """Columns of a prmon or MemoryMonitor text file, by prmon name ('Time', 'pss', ...).

    Rows that are short or hold a non-numeric value (a repeated header, a row cut by a
    kill) are skipped whole, so all returned lists have the same length.
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line.split() for line in handle if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty prmon file, no header row")
    columns = _column_names(lines[0])
    if "Time" not in columns.values():
        raise ValueError(f"{path}: no Time column in the header row of a prmon file")
    out: dict[str, list[float]] = {name: [] for name in columns.values()}
    for fields in lines[1:]:
        row = _parse_row(fields, columns)
        if row is None:
            continue
        for name, value in row.items():
            out[name].append(value)
    return out
