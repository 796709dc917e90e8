"""``RangeOutcomes``: the outcomes of a batch of event ranges as columns, one tuple per field of
``EventRangeUpdate``.

Why columns: a busy event-service job sends rank 0 one report per batch of ranges, and rank 0 handled
each range as a Python object at every step (unpickle, ledger, run-record row).  As columns a report
is nine tuples: pickled and loaded without a Python call per range, and the ledger takes its ids in
C-level passes (``map`` over a column) where every range is what it expects.  It still reads as a
sequence of ``EventRangeUpdate`` (built on demand) for the paths that handle one outcome at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from itertools import chain, starmap
from operator import attrgetter
from typing import Any, overload

from hpcpilot.records.eventrange import EventRangeUpdate
from hpcpilot.states import EventRangeStatus

_values = attrgetter(*(f.name for f in fields(EventRangeUpdate)))
"""An outcome as the tuple of its fields, in their order (C speed)."""

N_COLUMNS = len(fields(EventRangeUpdate))


class RangeOutcomes(Sequence[EventRangeUpdate]):
    """Outcomes as columns, in ``EventRangeUpdate``'s field order: ``ids``, ``statuses``, ``error_codes``,
    ``error_diags``, ``cpu_times``, ``wall_times``, ``outputs``, ``fsizes``, ``adler32s``; all of one length.

    Equal to any sequence of the same outcomes (a tuple of ``EventRangeUpdate`` included)."""

    __slots__ = ("adler32s", "cpu_times", "error_codes", "error_diags", "fsizes", "ids", "outputs", "statuses",
                 "wall_times")

    def __init__(self, ids: tuple[str, ...] = (), statuses: tuple[EventRangeStatus, ...] = (),
                 error_codes: tuple[int, ...] = (), error_diags: tuple[str, ...] = (),
                 cpu_times: tuple[float, ...] = (), wall_times: tuple[float, ...] = (),
                 outputs: tuple[str, ...] = (), fsizes: tuple[int, ...] = (), adler32s: tuple[str, ...] = ()) -> None:
        self.ids, self.statuses, self.error_codes, self.error_diags = ids, statuses, error_codes, error_diags
        self.cpu_times, self.wall_times, self.outputs, self.fsizes, self.adler32s = (
            cpu_times, wall_times, outputs, fsizes, adler32s)

    @classmethod
    def of(cls, outcomes: Iterable[EventRangeUpdate]) -> RangeOutcomes:
        """These outcomes as columns (the same object if they already are)."""
        if isinstance(outcomes, RangeOutcomes):
            return outcomes
        return cls.from_columns(tuple(zip(*map(_values, outcomes), strict=True)))

    @classmethod
    def from_columns(cls, columns: Sequence[tuple[Any, ...]]) -> RangeOutcomes:
        """From ``columns()`` (an empty sequence: no outcome)."""
        return cls(*columns) if columns else cls()

    def columns(self) -> tuple[tuple[Any, ...], ...]:
        """The nine columns in field order; () when empty (so an empty batch pickles as nothing)."""
        if not self.ids:
            return ()
        return (self.ids, self.statuses, self.error_codes, self.error_diags, self.cpu_times, self.wall_times,
                self.outputs, self.fsizes, self.adler32s)

    def all_plain_finished(self) -> bool:
        """Every outcome FINISHED with no output file (a bundle-less job, or a null payload): the ledger's
        fast case, decided by two C-level passes."""
        finished = EventRangeStatus.FINISHED
        return self.statuses.count(finished) == len(self.statuses) and not any(self.outputs)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[EventRangeUpdate]:
        return starmap(EventRangeUpdate, zip(*self.columns(), strict=True))

    @overload
    def __getitem__(self, index: int) -> EventRangeUpdate: ...

    @overload
    def __getitem__(self, index: slice) -> RangeOutcomes: ...

    def __getitem__(self, index: int | slice) -> EventRangeUpdate | RangeOutcomes:
        if isinstance(index, slice):
            return RangeOutcomes(*(column[index] for column in self.columns()))
        return EventRangeUpdate(*(column[index] for column in (
            self.ids, self.statuses, self.error_codes, self.error_diags, self.cpu_times, self.wall_times,
            self.outputs, self.fsizes, self.adler32s)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RangeOutcomes):
            return self.columns() == other.columns()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return RangeOutcomes.from_columns, (self.columns(),)

    def __repr__(self) -> str:
        return f"RangeOutcomes({list(self)!r})"


class OutcomeQueue:
    """Outcomes waiting to go out together, in the order they came: whole reports kept as their columns,
    single outcomes (a failure, a range given up) as they are; ``take`` hands them all out as one
    ``RangeOutcomes``, the columns joined in C.  Why: a busy job's statuses wait a ``report_interval`` at
    rank 0 and are then written for the source; as columns none of them becomes an object on the way.

    Iterates as the ``EventRangeUpdate``s and equals a list of them (what the tests and the live view read)."""

    __slots__ = ("_chunks", "_count")

    def __init__(self) -> None:
        self._chunks: list[RangeOutcomes | list[EventRangeUpdate]] = []
        self._count = 0

    def append(self, update: EventRangeUpdate) -> None:
        last = self._chunks[-1] if self._chunks else None
        if isinstance(last, list):
            last.append(update)
        else:
            self._chunks.append([update])
        self._count += 1

    def add_batch(self, batch: RangeOutcomes) -> None:
        """A whole report's outcomes, kept as columns."""
        if batch:
            self._chunks.append(batch)
            self._count += len(batch)

    def take(self) -> RangeOutcomes:
        """Everything queued, as one batch; the queue is empty after."""
        chunks = [chunk if isinstance(chunk, RangeOutcomes) else RangeOutcomes.of(chunk) for chunk in self._chunks]
        self._chunks, self._count = [], 0
        if len(chunks) == 1:
            return chunks[0]
        return RangeOutcomes.from_columns([tuple(chain.from_iterable(column)) for column in
                                           zip(*(chunk.columns() for chunk in chunks if chunk), strict=True)])

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[EventRangeUpdate]:
        return chain.from_iterable(self._chunks)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OutcomeQueue | Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OutcomeQueue({list(self)!r})"
