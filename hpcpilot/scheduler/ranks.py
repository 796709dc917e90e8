"""``RankRegistry``: every worker rank's state, and the three orders rank 0 needs them in, each O(1).

Rank 0 must never walk its ranks per event: at 100,000 ranks one walk costs more than the event.  So
the registry keeps, beside each rank's slot, what the decisions ask for directly:

* ``counts``: ranks per state, changed only by ``set_state`` (the status line reads it);
* ``idle``: idle ranks, first come first served (an OrderedDict, so a lost one leaves in O(1));
* ``alive``: ranks believed alive, least recently heard first, so finding the silent ones costs O(1)
  per message and O(lost) per pass;
* ``answered``: ranks that answered their start-up check (or were given up);
* ``idle_in``: the idle ranks of each group (their GPUs' architecture, ``set_group``), same order as ``idle``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass

from hpcpilot.states import RankState

GONE = (RankState.STOPPED, RankState.LOST)
"""States a rank never leaves: it sends nothing more that counts."""


@dataclass
class RankSlot:
    """One worker rank: its state and the PandaID it works on (None when it has none)."""

    state: RankState = RankState.STARTING
    panda_id: int | None = None


class RankRegistry:
    """The worker ranks, with per-state counts and the idle and liveness orders kept as they change."""

    def __init__(self, numbers: Iterable[int]) -> None:
        self.slots: dict[int, RankSlot] = {number: RankSlot() for number in numbers}
        self.counts: Counter[RankState] = Counter({RankState.STARTING: len(self.slots)})
        self.idle: OrderedDict[int, None] = OrderedDict()
        self.alive: OrderedDict[int, float] = OrderedDict()
        self.answered: set[int] = set()
        self.group_of: dict[int, Hashable] = {}
        self.idle_in: dict[Hashable, OrderedDict[int, None]] = {}

    # -- a mapping of rank number -> slot, for readers --------------------------------

    def __getitem__(self, number: int) -> RankSlot:
        return self.slots[number]

    def __contains__(self, number: object) -> bool:
        return number in self.slots

    def __iter__(self) -> Iterator[int]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def items(self) -> Iterable[tuple[int, RankSlot]]:
        return self.slots.items()

    def values(self) -> Iterable[RankSlot]:
        return self.slots.values()

    # -- changes ----------------------------------------------------------------------

    def set_state(self, number: int, state: RankState) -> None:
        """The one place a rank's state changes, so ``counts`` stays right without a scan."""
        slot = self.slots[number]
        self.counts[slot.state] -= 1
        self.counts[state] += 1
        slot.state = state

    def heard_from(self, number: int, now: float) -> None:
        """Any message from a rank is its sign of life; a rank already stopped or lost stays so."""
        if self.slots[number].state in GONE:
            return
        self.alive[number] = now
        self.alive.move_to_end(number)

    def gone(self, number: int, state: RankState) -> None:
        """The rank will send nothing more that counts (stopped) or is given up (lost)."""
        self.set_state(number, state)
        self.alive.pop(number, None)
        self.take_idle(number)

    def make_idle(self, number: int) -> None:
        """The rank asks for work (a stopped or lost one is not taken back)."""
        slot = self.slots[number]
        if slot.state in GONE:
            return
        self.set_state(number, RankState.IDLE)
        slot.panda_id = None
        self.idle.setdefault(number, None)
        self.idle_in.setdefault(self.group_of.get(number), OrderedDict()).setdefault(number, None)

    def set_group(self, number: int, group: Hashable) -> None:
        """The rank's group (the architecture of its GPUs): set at its Ready, before it is ever idle."""
        self.group_of[number] = group

    def next_idle(self) -> int:
        number = self.idle.popitem(last=False)[0]
        self.idle_in[self.group_of.get(number)].pop(number, None)
        return number

    def next_idle_in(self, group: Hashable) -> int:
        """The longest idle rank of a group (which must have one)."""
        number = self.idle_in[group].popitem(last=False)[0]
        self.idle.pop(number, None)
        return number

    def take_idle(self, number: int) -> None:
        """The rank is no longer idle (given work, told to leave, or gone)."""
        self.idle.pop(number, None)
        group = self.idle_in.get(self.group_of.get(number))
        if group is not None:
            group.pop(number, None)

    def bind(self, number: int, panda_id: int) -> None:
        """The rank works on this job now."""
        self.set_state(number, RankState.BUSY)
        self.slots[number].panda_id = panda_id

    def release(self, number: int, panda_id: int, stopping: bool) -> None:
        """The rank's part of this job ended: it is idle again (stopping, while the pilot winds down)
        unless it moved on or was lost meanwhile."""
        slot = self.slots[number]
        if slot.panda_id != panda_id:
            return
        slot.panda_id = None
        if slot.state == RankState.BUSY:
            self.set_state(number, RankState.STOPPING if stopping else RankState.IDLE)

    # -- questions --------------------------------------------------------------------

    def silent_longer_than(self, limit: float, now: float) -> list[tuple[int, float]]:
        """The ranks believed alive but silent for more than ``limit`` seconds, with how long, oldest first:
        O(silent), since ``alive`` is ordered by when each rank was last heard from."""
        silent: list[tuple[int, float]] = []
        if not self.alive or now - next(iter(self.alive.values())) <= limit:
            return silent  # the usual pass: the least recently heard rank is recent enough
        for number, seen in self.alive.items():
            if now - seen <= limit:
                break
            silent.append((number, now - seen))
        return silent

    def give_up_unanswered(self) -> list[int]:
        """Ranks that have not answered their start-up check are lost (a walk over every rank, but only
        until every rank has answered: once, at the start-up timeout)."""
        if self.startup_complete():
            return []
        numbers = [number for number in self.slots if number not in self.answered]
        for number in numbers:
            self.answered.add(number)
            self.gone(number, RankState.LOST)
        return numbers

    def startup_complete(self) -> bool:
        """Every rank answered its start-up check (or was given up)."""
        return len(self.answered) >= len(self.slots)

