"""When a job's unconfirmed event-range updates are checked with the server: one look-up per job per batch.

v1 ``update_event_ranges`` answers HTTP 500 on every panda-server release, also after committing
(panda-wire A.5, A.7), so on a v1 server no range update is acknowledged by its own answer: the
status look-up (``get_event_range_statuses``) is the normal path of every report.  That look-up has
no filter: it answers the status of *every* range of the job, so one look-up per update would cost
rank 0 (and the server) in proportion to the job's size for every report -- 100,000 statuses parsed
to confirm 100 ranges.

``RangeChecks`` (one per sender thread; a job's updates all belong to one sender) parks a job's
unconfirmed updates and says when the job's one look-up is due:

* at once for a job whose size is not known yet (the first look-up learns it);
* when the parked ranges reach ``1/LOOKUP_RATIO`` of the ranges the server listed last time, so a
  look-up reads at most about ``LOOKUP_RATIO`` statuses per range it confirms, whatever the job's size;
* when the oldest parked update has waited ``max_wait`` -- which grows with the job (``AGE_BASE`` s
  plus ``AGE_BASE`` per 1,000 listed ranges, at most ``AGE_CAP``), so a slow trickle into a huge job
  costs one look-up per ``AGE_CAP`` at most;
* before anything must follow the ranges: the job's final update (the server takes range updates only
  while the job is active) and a flush (the end of the run, ``hpcpilot deliver``).

A look-up that fails un-parks the job: its updates stay uncertain in the journal and the sender's
back-off paces the next try, so a server that keeps failing never turns into a loop of look-ups.
What a look-up proves -- which ranges of an update the server holds final, which it lacks, and when an
update that never shows up is refused -- is the delivery verdict's (``hpcpilot.panda.verdict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

LOOKUP_RATIO = 10
"""A look-up is due once the parked ranges reach 1/LOOKUP_RATIO of the job's ranges the server lists."""
AGE_BASE = 2.0
"""Seconds a parked update of a small job waits at most; AGE_BASE more per 1,000 ranges the job has."""
AGE_CAP = 120.0
"""The longest a parked update waits for its job's look-up (s)."""


@dataclass
class _Parked:
    seqs: set[int] = field(default_factory=set)
    ranges: int = 0
    since: float = 0.0


class RangeChecks:
    """Jobs whose range updates wait for their one status look-up (not thread-safe: one per sender)."""

    def __init__(self, ratio: int = LOOKUP_RATIO, age_base: float = AGE_BASE, age_cap: float = AGE_CAP) -> None:
        self.ratio = max(1, ratio)
        self.age_base = age_base
        self.age_cap = age_cap
        self._parked: dict[int, _Parked] = {}
        self._listed: dict[int, int] = {}  # PandaID -> ranges its last look-up listed
        self._sends: dict[int, int] = {}  # outbox seq -> times sent without its answer confirming it
        self.failing = 0
        """Look-ups failed in a row (the first is worth a warning, the rest are the same outage)."""

    def park(self, panda_id: int, seq: int, n_ranges: int, now: float) -> None:
        """An update of ``n_ranges`` ranges was sent and not confirmed by its answer."""
        parked = self._parked.setdefault(panda_id, _Parked(since=now))
        self._sends[seq] = self._sends.get(seq, 0) + 1
        if seq not in parked.seqs:
            parked.seqs.add(seq)
            parked.ranges += n_ranges

    def sends(self, seq: int) -> int:
        """How often this update was sent without its answer confirming it (this run)."""
        return self._sends.get(seq, 0)

    def done(self, seq: int) -> None:
        """An update left the outbox (confirmed or refused)."""
        self._sends.pop(seq, None)

    def parked_seqs(self) -> frozenset[int]:
        """Outbox entries the sender leaves alone until their job's look-up."""
        return frozenset(seq for parked in self._parked.values() for seq in parked.seqs)

    def is_parked(self, panda_id: int) -> bool:
        return panda_id in self._parked

    def max_wait(self, panda_id: int) -> float:
        """How long a parked update of this job waits at most for the look-up (s)."""
        listed = self._listed.get(panda_id, 0)
        return min(self.age_cap, self.age_base * (1.0 + listed / 1000.0))

    def is_due(self, panda_id: int, now: float) -> bool:
        parked = self._parked.get(panda_id)
        if parked is None:
            return False
        threshold = max(1, self._listed.get(panda_id, 0) // self.ratio)
        return parked.ranges >= threshold or now - parked.since >= self.max_wait(panda_id)

    def due_job(self, now: float, flushing: bool = False) -> int | None:
        """A parked job whose look-up is due (any parked job while flushing), oldest first; None if none."""
        for panda_id in sorted(self._parked, key=lambda pid: self._parked[pid].since):
            if flushing or self.is_due(panda_id, now):
                return panda_id
        return None

    def wait_time(self, now: float) -> float | None:
        """Seconds until the next look-up falls due by age (None: nothing parked)."""
        if not self._parked:
            return None
        return max(0.0, min(p.since + self.max_wait(pid) - now for pid, p in self._parked.items()))

    def settled(self, panda_id: int, listed: int | None) -> None:
        """The job's look-up was answered (``listed`` ranges; None: no look-up was needed): its updates are
        no longer parked -- confirmed, or narrowed to be sent again."""
        self._parked.pop(panda_id, None)
        if listed is not None:
            self._listed[panda_id] = listed
            self.failing = 0

    def lookup_failed(self, panda_id: int) -> None:
        """The job's look-up failed: its updates stay uncertain in the journal, for the sender's next try."""
        self._parked.pop(panda_id, None)
        self.failing += 1

    def forget(self, panda_id: int) -> None:
        """The job's final update was delivered: nothing of it is parked or checked any more."""
        self._parked.pop(panda_id, None)
        self._listed.pop(panda_id, None)
