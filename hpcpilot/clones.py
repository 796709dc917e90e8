"""Clone jobs (``cloneJob`` = runonce | storeonce; seeds 004 steps 10a and 16, panda-wire C.5).

The server may send several clones of one job (one jobset) to different pilots and let only one of
them do the work.  The clones share one event range: the clone the server hands it to is the one
that goes on.  A ``runonce`` clone asks before its payload (the loser runs nothing); a ``storeonce``
clone runs its payload and asks before its stage-out (the loser stores nothing).  A loser ends
failed with EXECUTEDCLONEJOB (1234), as the old pilot reported it ("already executed clone job");
the pilot itself goes on with its next job.

Only rank 0 talks to the job source, so the job thread sends ``CloneClaim`` and sleeps on a
``CloneGate`` until the worker loop hands it rank 0's ``CloneVerdict`` -- or until a kill (rank 0,
the server, a signal) wakes it, which then wins.  Rank 0's side (asking the source, retrying an
outage) is ``Controller.ask_clone``; the pure decision of what a source answer means is
``verdict_of`` here, so the rule lives in one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from hpcpilot.errors import ErrorCode
from hpcpilot.protocol import CloneClaim, CloneVerdict, Message

CLONE_TRIES = 3
"""Source outages in a row before rank 0 gives a clone up (each try is bounded by the source's fetch deadline,
with the scheduler's getJob retry pause between two)."""
LOST_DIAG = {"runonce": "another clone of this runonce job already ran (no event range left for it)",
             "storeonce": "another clone of this storeonce job already stored its outputs (no event range left "
                          "for it)"}
OUTAGE_DIAG = "cannot ask the job source whether this clone may go on: {why}"


class CloneGate:
    """Where a clone's job thread waits for rank 0's verdict, without polling."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._verdict: CloneVerdict | None = None
        self._interrupted = False

    def deliver(self, verdict: CloneVerdict) -> None:
        with self._cond:
            self._verdict = verdict
            self._cond.notify_all()

    def interrupt(self) -> None:
        """A kill: the waiting job gives up at once (the kill's code is the job's)."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def wait(self) -> CloneVerdict | None:
        """Rank 0's verdict, or None when a kill came first (or while waiting)."""
        with self._cond:
            self._cond.wait_for(lambda: self._verdict is not None or self._interrupted)
            return None if self._interrupted else self._verdict


def claim(rank: int, panda_id: int, phase: str, gate: CloneGate,
          emit: Callable[[Message], None]) -> CloneVerdict | None:
    """Ask rank 0 whether the clone may go on past ``phase``; None = a kill interrupted the wait."""
    emit(CloneClaim(rank, panda_id, phase))
    return gate.wait()


def verdict_of(panda_id: int, phase: str, ranges: list[object] | None, outage: str = "") -> CloneVerdict:
    """Rank 0's verdict from the source's answer to a one-range request.

    A range -> go.  No range -> another clone took it: EXECUTEDCLONEJOB, as pilot3 reads "no range
    downloaded".  ``ranges`` None -> the source could not answer ``CLONE_TRIES`` times (``outage`` says
    why): an outage is not "no range", so the clone is failed with COMMUNICATIONFAILURE, which PanDA
    retries, rather than run twice or dropped as if another clone had won.
    """
    if ranges:
        return CloneVerdict(panda_id, True)
    if ranges is None:
        return CloneVerdict(panda_id, False, int(ErrorCode.COMMUNICATIONFAILURE), OUTAGE_DIAG.format(why=outage)[:300])
    return CloneVerdict(panda_id, False, int(ErrorCode.EXECUTEDCLONEJOB), LOST_DIAG.get(phase, LOST_DIAG["runonce"]))
