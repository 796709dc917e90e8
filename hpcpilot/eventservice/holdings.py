"""What each rank holds at rank 0: every range dealt and not yet back, and the same ids by rank.

``dealt`` answers "is this outcome from the rank the range is dealt to" in O(1); ``by_rank``
answers "what does this rank hold" in O(what it holds), so a lost rank's ranges are failed and a
rank's request is sized without a walk over every range dealt to every rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter

from hpcpilot.records import EventRange, EventRangeUpdate

_second = itemgetter(1)


class Holdings:
    """Ranges dealt to ranks: ``dealt`` (range id -> (rank, range)) and its index ``by_rank``
    (rank -> the ids of the ranges dealt to it; a rank that holds none has no entry).

    Both change together, only here, so the index always says what a scan of ``dealt`` would."""

    def __init__(self) -> None:
        self.dealt: dict[str, tuple[int, EventRange]] = {}
        self.by_rank: dict[int, dict[str, None]] = {}

    def held_by(self, rank: int) -> int:
        return len(self.by_rank.get(rank, ()))

    def deal(self, rank: int, batch: Iterable[EventRange]) -> None:
        """These ranges are now the rank's."""
        dealt, held = self.dealt, self.by_rank.setdefault(rank, {})
        for item in batch:
            dealt[item.event_range_id] = (rank, item)
            held[item.event_range_id] = None
        if not held:
            del self.by_rank[rank]

    def release(self, rank: int) -> list[str]:
        """Everything the rank holds, taken back (the rank is out): O(held), not a scan of ``dealt``."""
        range_ids = list(self.by_rank.pop(rank, ()))
        dealt = self.dealt
        for range_id in range_ids:
            del dealt[range_id]
        return range_ids

    def take_back(self, rank: int, outcomes: Iterable[EventRangeUpdate],
                  ) -> tuple[list[tuple[EventRangeUpdate, EventRange]], list[str]]:
        """The outcomes for ranges dealt to ``rank``, each with its range, taken back; and the ids of the
        others (dealt to another rank, already back, or never dealt): such an outcome must not count.

        One pass over a report (the hot path of a busy job); a range leaves as its outcome counts, so a
        second outcome for it, in this report or a later one, is among the others."""
        dealt, held = self.dealt, self.by_rank.get(rank, {})
        taken: list[tuple[EventRangeUpdate, EventRange]] = []
        strays: list[str] = []
        for outcome in outcomes:
            range_id = outcome.event_range_id
            entry = dealt.get(range_id)
            if entry is None or entry[0] != rank:
                strays.append(range_id)
                continue
            del dealt[range_id]
            del held[range_id]
            taken.append((outcome, entry[1]))
        if not held:
            self.by_rank.pop(rank, None)
        return taken, strays

    def take_back_all(self, rank: int, range_ids: Sequence[str]) -> list[EventRange] | None:
        """The ranges of a whole report, taken back at once, if every id is dealt to ``rank`` and none
        repeats (a rank's usual report): C-level passes over the ids, no Python step per range.  None,
        and nothing taken, otherwise: ``take_back`` sorts that report out one outcome at a time."""
        held = self.by_rank.get(rank)
        if held is None or len(range_ids) > len(held) or not all(map(held.__contains__, range_ids)):
            return None  # (an id in ``by_rank[rank]`` is dealt to this rank: both change together)
        if len(set(range_ids)) != len(range_ids):
            return None
        for _ in map(held.__delitem__, range_ids):
            pass
        if not held:
            del self.by_rank[rank]
        return list(map(_second, map(self.dealt.pop, range_ids)))
