"""The monitoring record of one pilot run: one HDF5 file, written by rank 0 only.

Layout (all times epoch seconds, memory kB, CPU seconds, I/O bytes)::

    /                                   attrs: format, format_version, created, hpcpilot_version
    /jobs                               JSON strings, one per finished job (PanDA field names + rank,
                                        cpuSeconds: CPU s unrounded, memoryLimitKB: the job's limit)
    /ranks/<rank>/node                  attrs: one per node-info key (JSON for non-scalars), info (all, JSON)
    /ranks/<rank>/jobs/<panda_id>/samples        compound rows, one per TreeSample
    /ranks/<rank>/jobs/<panda_id>/gpu_samples    compound rows, one per GpuSample (payloads with GPUs only)
    /ranks/<rank>/jobs/<panda_id>/event_ranges   JSON strings, one per event-range update

``samples`` is one compound dataset rather than one dataset per column so that a row is
always complete: a kill can never leave ``pss`` one row longer than ``time``.  Its units are
attributes: ``units`` (a JSON object field -> unit) and ``units.<field>`` per field.

Every dataset is chunked and resizable and is grown by the appended rows; every append
ends with ``File.flush()``, so a pilot killed with SIGKILL leaves a file that opens and
holds everything appended before the last completed flush.  Datasets are not compressed:
an uncompressed chunk is rewritten in place, so a flush after an append only updates the
dataset's extent and the chunk itself, which keeps the window in which a kill could catch
HDF5 halfway through its metadata as small as possible.  (HDF5 has no journal; a kill in
the middle of ``flush`` itself can still damage the file.)

Each event-range update is stored with ``recordedAt`` (epoch s, when rank 0 recorded it)
unless it carries one already; the report uses it for events per second.

The recorder is thread-safe (one lock around each append).  Writes are batched by the
caller: each call is one resize and one write per dataset touched, and one flush.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcpilot import __version__
from hpcpilot.monitor.gpu import GpuSample
from hpcpilot.monitor.samples import TreeSample
from hpcpilot.records import EventRangeUpdate, RangeOutcomes
from hpcpilot.states import EventRangeStatus

FORMAT = "hpcpilot-run"
FORMAT_VERSION = 1

# (field, numpy type, unit) in TreeSample order
SAMPLE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("time", "<f8", "epoch s"),
    ("pss", "<i8", "kB"),
    ("rss", "<i8", "kB"),
    ("swap", "<i8", "kB"),
    ("vmem", "<i8", "kB"),
    ("utime", "<f8", "s"),
    ("stime", "<f8", "s"),
    ("nprocs", "<i8", "count"),
    ("nthreads", "<i8", "count"),
    ("rchar", "<i8", "bytes"),
    ("wchar", "<i8", "bytes"),
    ("read_bytes", "<i8", "bytes"),
    ("write_bytes", "<i8", "bytes"),
)
SAMPLE_DTYPE = np.dtype([(name, kind) for name, kind, _ in SAMPLE_FIELDS])
SAMPLE_UNITS: dict[str, str] = {name: unit for name, _, unit in SAMPLE_FIELDS}
# a payload's GPU use (hpcpilot.monitor.gpu, prmon's GPU columns), only for payloads with GPUs
GPU_SAMPLE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("time", "<f8", "epoch s"),
    ("ngpus", "<i8", "count"),
    ("gpusmpct", "<i8", "%"),
    ("gpumempct", "<i8", "%"),
    ("gpufbmem", "<i8", "kB"),
    ("max_gpu_kb", "<i8", "kB"),
)
GPU_SAMPLE_DTYPE = np.dtype([(name, kind) for name, kind, _ in GPU_SAMPLE_FIELDS])
# key of a job's row in /jobs beyond the record's own (records.CPU_SECONDS_KEY is the other): the memory limit
# the job ran under, kB, as limits_for_job gives it
MEMORY_LIMIT_KEY = "memoryLimitKB"
SAMPLES_CHUNK_ROWS = 512
STRINGS_CHUNK_ROWS = 64
_STR = h5py.string_dtype(encoding="utf-8")


_ENCODER = json.JSONEncoder(sort_keys=True, default=str)
"""One encoder for every row: ``json.dumps`` with options builds a new one per call, which at one row per
event range was a fifth of rank 0's loop."""


def _to_json(value: Mapping[str, Any]) -> str:
    return _ENCODER.encode(dict(value))


RangeBatch = tuple[float, Sequence[EventRangeUpdate], Sequence[int | None]]
"""One range report as rank 0 recorded it: when, its outcomes, and each outcome's events (None: unknown)."""


def range_row(outcome: EventRangeUpdate, n_events: int | None, stamp: float) -> str:
    """The ``event_ranges`` row of one outcome: its updateEventRanges fields (``to_wire``), ``nEvents`` when
    known and ``recordedAt``, as JSON with sorted keys.

    Why two paths: this runs once per event range on rank 0's loop.  A finished range without an error
    (nearly every row) is formatted directly, 1.3 us against 3.7 us for ``to_wire`` plus the encoder;
    every other row takes the general path.  test_runrecord checks that both give the same text."""
    cpu = outcome.cpu_time
    if (outcome.status is EventRangeStatus.FINISHED and n_events is not None and type(cpu) is float
            and math.isfinite(cpu) and type(outcome.event_range_id) is str):
        cpu_field = f'"cpuConsumptionTime": {round(cpu, 3)!r}, ' if cpu else ""
        return (f'{{{cpu_field}"eventRangeID": {encode_basestring_ascii(outcome.event_range_id)}, '
                f'"eventStatus": "finished", "nEvents": {int(n_events)}, "recordedAt": {float(stamp)!r}}}')
    row = outcome.to_wire()
    if n_events is not None:
        row["nEvents"] = n_events
    row["recordedAt"] = stamp
    return _ENCODER.encode(row)


def batch_rows(outcomes: Sequence[EventRangeUpdate], sizes: Sequence[int | None], stamp: float) -> list[str]:
    """The ``event_ranges`` rows of one range report, the text ``range_row`` gives for each outcome.

    Why: one report's outcomes arrive as columns (``RangeOutcomes``); a finished range's row is formatted
    from its id, CPU and events read off the columns, without building its ``EventRangeUpdate`` or a call
    per row; any other row goes through ``range_row``."""
    batch = RangeOutcomes.of(outcomes)
    finished, isfinite, encode = EventRangeStatus.FINISHED, math.isfinite, encode_basestring_ascii
    tail = f', "recordedAt": {float(stamp)!r}}}'
    whole = _whole_batch_rows(batch, sizes, tail)
    if whole is not None:
        return whole
    rows: list[str] = []
    for i, (range_id, status, cpu, n_events) in enumerate(zip(batch.ids, batch.statuses, batch.cpu_times, sizes,
                                                              strict=True)):
        if status is finished and n_events is not None and type(cpu) is float and isfinite(cpu) \
                and type(range_id) is str:
            rows.append(f'{{"cpuConsumptionTime": {round(cpu, 3)!r}, "eventRangeID": {encode(range_id)}, '
                        f'"eventStatus": "finished", "nEvents": {int(n_events)}{tail}' if cpu else
                        f'{{"eventRangeID": {encode(range_id)}, "eventStatus": "finished", '
                        f'"nEvents": {int(n_events)}{tail}')
        else:
            rows.append(range_row(batch[i], n_events, stamp))
    return rows


def _whole_batch_rows(batch: RangeOutcomes, sizes: Sequence[int | None], tail: str) -> list[str] | None:
    """Every row of a report in C-level passes (``map`` of one ``str.format`` over the columns), when every
    outcome is a finished range with known events and a finite float CPU that is zero for all or for none
    (a busy job's usual report); None otherwise.  The same text as ``range_row``'s direct formatting."""
    cpus = batch.cpu_times
    if (batch.statuses.count(EventRangeStatus.FINISHED) != len(batch) or set(map(type, sizes)) != {int}
            or set(map(type, batch.ids)) != {str} or set(map(type, cpus)) != {float}
            or not all(map(math.isfinite, cpus))):
        return None
    ids = map(encode_basestring_ascii, batch.ids)
    if not any(cpus):
        return list(map(('{"eventRangeID": %s, "eventStatus": "finished", "nEvents": %d' + tail).__mod__,
                        zip(ids, sizes, strict=True)))
    if not all(cpus):
        return None
    return list(map(('{"cpuConsumptionTime": %r, "eventRangeID": %s, "eventStatus": "finished", "nEvents": %d'
                     + tail).__mod__, zip(map(round, cpus, repeat(3)), ids, sizes, strict=True)))


def _samples_template(tag: int) -> tuple[h5py.File, h5py.Dataset]:
    """An empty ``samples`` dataset with all its attributes, in a file that exists only in memory.

    Why: the dataset has 15 attributes, and h5py writes each one with its own create and write,
    about 2 ms per dataset; with short jobs rank 0 makes one dataset per job.  ``Group.copy`` of
    this template (HDF5's object copy, attributes included, in one C call) takes about 0.2 ms.
    """
    memory = h5py.File(f"hpcpilot-samples-template-{tag}", "w", driver="core", backing_store=False)
    dataset = memory.create_dataset("samples", shape=(0,), maxshape=(None,), dtype=SAMPLE_DTYPE,
                                    chunks=(SAMPLES_CHUNK_ROWS,))
    dataset.attrs["description"] = "payload process-tree samples of one job"
    dataset.attrs["units"] = json.dumps(SAMPLE_UNITS)
    for name, unit in SAMPLE_UNITS.items():
        dataset.attrs[f"units.{name}"] = unit
    return memory, dataset


class RunRecorder:
    """Append-only writer of the run record (see the module docstring for the layout)."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"run record {self.path} exists already")
        self._lock = threading.Lock()
        self._file: h5py.File | None = h5py.File(self.path, "w")
        self._file.attrs["format"] = FORMAT
        self._file.attrs["format_version"] = FORMAT_VERSION
        self._file.attrs["created"] = time.time()
        self._file.attrs["hpcpilot_version"] = __version__
        self._file.create_group("ranks")
        self._strings(self._file, "jobs", "JSON of each finished job's record (PanDA field names, plus rank)")
        self._file.flush()
        self._template_file, self._samples_template = _samples_template(id(self))

    # -- helpers ------------------------------------------------------------------------

    def _open(self) -> h5py.File:
        if self._file is None:
            raise ValueError(f"run record {self.path} is closed")
        return self._file

    @staticmethod
    def _strings(group: h5py.Group, name: str, description: str) -> h5py.Dataset:
        if name in group:
            return group[name]
        dataset = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_STR,
                                       chunks=(STRINGS_CHUNK_ROWS,))
        dataset.attrs["description"] = description
        dataset.attrs["encoding"] = "json"
        return dataset

    def _job_group(self, rank: int, panda_id: int) -> h5py.Group:
        return self._open().require_group(f"ranks/{int(rank)}/jobs/{int(panda_id)}")

    def _samples(self, rank: int, panda_id: int) -> h5py.Dataset:
        group = self._job_group(rank, panda_id)
        if "samples" not in group:
            group.copy(self._samples_template, "samples")
        return group["samples"]

    @staticmethod
    def _append(dataset: h5py.Dataset, rows: np.ndarray | list[str]) -> None:
        start = dataset.shape[0]
        dataset.resize((start + len(rows),))
        dataset[start:] = rows

    # -- public API ---------------------------------------------------------------------

    def add_node(self, rank: int, info: Mapping[str, Any]) -> None:
        """Store (or replace) the node description of one rank."""
        with self._lock:
            group = self._open().require_group(f"ranks/{int(rank)}/node")
            for key, value in info.items():
                if isinstance(value, bool | int | float | str):
                    group.attrs[str(key)] = value
                else:
                    group.attrs[str(key)] = json.dumps(value, sort_keys=True, default=str)
            group.attrs["info"] = _to_json(info)
            self._open().flush()

    def add_samples(self, rank: int, panda_id: int, samples: Sequence[TreeSample]) -> None:
        """Append samples of one job's payload tree (a batch: one resize, one write, one flush)."""
        if not samples:
            return
        rows = np.array([tuple(getattr(s, name) for name, _, _ in SAMPLE_FIELDS) for s in samples],
                        dtype=SAMPLE_DTYPE)
        with self._lock:
            self._append(self._samples(rank, panda_id), rows)
            self._open().flush()

    def add_gpu_samples(self, rank: int, panda_id: int, samples: Sequence[tuple[float, GpuSample]]) -> None:
        """Append (time, GpuSample) rows of one job's payload (rare: only payloads with GPUs have them)."""
        if not samples:
            return
        rows = np.array([(when, *(getattr(s, name) for name, _, _ in GPU_SAMPLE_FIELDS[1:])) for when, s in samples],
                        dtype=GPU_SAMPLE_DTYPE)
        with self._lock:
            group = self._job_group(rank, panda_id)
            if "gpu_samples" not in group:
                dataset = group.create_dataset("gpu_samples", shape=(0,), maxshape=(None,), dtype=GPU_SAMPLE_DTYPE,
                                               chunks=(SAMPLES_CHUNK_ROWS,))
                dataset.attrs["description"] = "GPU use of one job's payload (prmon's GPU columns)"
                dataset.attrs["units"] = json.dumps({name: unit for name, _, unit in GPU_SAMPLE_FIELDS})
            self._append(group["gpu_samples"], rows)
            self._open().flush()

    def add_job(self, record: Mapping[str, Any], memory_limit_kb: int | None = None) -> None:
        """Append the summary record of a finished job (PanDA field names; must hold jobId and rank), with
        the job's memory limit (kB) when rank 0 knows it: the report draws it on the memory panel."""
        row = dict(record)
        if memory_limit_kb:
            row[MEMORY_LIMIT_KEY] = int(memory_limit_kb)
        with self._lock:
            self._append(self._open()["jobs"], [_to_json(row)])
            self._open().flush()

    def add_event_ranges(self, rank: int, panda_id: int, updates: Sequence[Mapping[str, Any]],
                         when: float | None = None) -> None:
        """Append event-range updates of one job; ``when`` (default now) becomes ``recordedAt``."""
        if not updates:
            return
        stamp = time.time() if when is None else float(when)
        self._append_range_rows({(rank, panda_id): [_to_json({"recordedAt": stamp, **update}) for update in updates]})

    def add_range_batches(self, by_job: Mapping[tuple[int, int], Iterable[RangeBatch]]) -> None:
        """Append the outcomes of these range reports, by (rank, panda_id), with one flush for all: rank 0's
        loop writes what every rank reported in the last second at once (see ``range_row``)."""
        rows = {key: [row for stamp, outcomes, sizes in batches for row in batch_rows(outcomes, sizes, stamp)]
                for key, batches in by_job.items()}
        self._append_range_rows({key: job_rows for key, job_rows in rows.items() if job_rows})

    def _append_range_rows(self, by_job: Mapping[tuple[int, int], list[str]]) -> None:
        if not by_job:
            return
        with self._lock:
            for (rank, panda_id), rows in by_job.items():
                dataset = self._strings(self._job_group(rank, panda_id), "event_ranges",
                                        "JSON of each event-range update of this job")
                self._append(dataset, rows)
            self._open().flush()

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
                self._template_file.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
