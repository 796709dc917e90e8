"""Ranks waiting for ranges at rank 0, and when a pass over them is worth making.

Both keep a busy rank 0 O(1) per event: the line keeps the total its ranks want and an index by
how many ranges each holds (no walk over the waiting ranks to size a lease or to refuse those the
walltime guard leaves no room for), and the gate skips the pass altogether when nothing that
decides it changed since the last one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


class Waiting:
    """Ranks with a parked request for ranges, oldest first, with the total they want and an index
    by how many ranges each holds.

    Why the index: as the time left before the walltime guard shrinks, the ranks to refuse are those
    whose held ranges already fill it, i.e. those holding the most; the index finds them without a
    walk over every waiting rank.  Held counts take few distinct values (a rank holds at most about
    one request's worth more than it asks for), so walking the index's keys is constant work."""

    def __init__(self) -> None:
        self._wants: OrderedDict[int, int] = OrderedDict()  # O(1) at the front, unlike a dict
        self._held: dict[int, int] = {}
        self._by_held: dict[int, dict[int, None]] = {}
        self.total = 0

    def __len__(self) -> int:
        return len(self._wants)

    def __contains__(self, rank: object) -> bool:
        return rank in self._wants

    def __iter__(self) -> Iterator[int]:
        return iter(self._wants)

    def park(self, rank: int, want: int, held: int) -> None:
        """The rank wants ``want`` ranges; a new request replaces its old one in its place in line."""
        self.total += want - self._wants.get(rank, 0)
        self._wants[rank] = want
        self.held_changed(rank, held)

    def take(self, rank: int) -> int | None:
        """Remove the rank's request; its want, or None if it had none."""
        want = self._wants.pop(rank, None)
        if want is not None:
            self.total -= want
            self._unindex(rank)
        return want

    def oldest(self) -> tuple[int, int]:
        rank, want = self._wants.popitem(last=False)
        self.total -= want
        self._unindex(rank)
        return rank, want

    def held_changed(self, rank: int, held: int) -> None:
        if rank in self._wants:
            self._unindex(rank)
            self._held[rank] = held
            self._by_held.setdefault(held, {})[rank] = None

    def holding_at_least(self, n: int) -> list[int]:
        return [rank for held, ranks in self._by_held.items() if held >= n for rank in ranks]

    def any_holding(self, n: int) -> bool:
        return bool(self._by_held.get(n))

    def _unindex(self, rank: int) -> None:
        held = self._held.pop(rank, None)
        if held is None:
            return
        bucket = self._by_held[held]
        del bucket[rank]
        if not bucket:
            del self._by_held[held]



class PassGate:
    """Whether a pass over the waiting ranks can answer anything the last pass did not.

    The scheduler offers the book a pass on every loop; one with no new request, range or stop
    since the last (``touch``), and with the walltime guard still allowing as many ranges per rank
    (``fits``), would deal and refuse exactly what the last one did: nothing.  So it is skipped in
    O(1), whatever the number of ranks waiting."""

    def __init__(self) -> None:
        self.dirty = False
        self.fits_seen: int | None = None

    def touch(self) -> None:
        """Something that decides a pass changed: a request, a lease, a stop."""
        self.dirty = True

    def open(self, fits: int | None) -> bool:
        """True if a pass with ``fits`` ranges per rank may answer differently; it then counts as made."""
        if not self.dirty and fits == self.fits_seen:
            return False
        self.dirty, self.fits_seen = False, fits
        return True
