"""The delivery verdict: is an update (an outbox entry) delivered, owed, to be asked about, or refused for good?

An update leaves the outbox only once the server proved it has it.  Every piece of evidence the senders
(``hpcpilot.panda.senders``) get is judged here, and only here, with no I/O:

* what a send brought back (``after_reply``): an acknowledging answer is *delivered*; ``RequestRejected``
  is *refused* for good; ``Ambiguous`` (HTTP 5xx, a timeout after sending, a reply that proves nothing)
  means *ask* the server before sending again, at once -- except v1's range-update 500
  (``UnconfirmedRangeUpdate``), its normal answer, which waits for the job's one batched look-up
  (``hpcpilot.panda.rangecheck``); any other failure (an outage, or a bug of ours) leaves it *owed*: sent
  again after the sender's back-off;
* what an answered range update said per range (``after_range_reply``): true is taken, false refused,
  anything else leaves that range's fate open (*ask*);
* what a look-up shows: a job update is delivered once the server's job state is at or past it, a final
  one once that state is final (``after_job_lookup``); a range update once every range of it is in a
  final state (``after_range_lookup``), otherwise the ranges the server lacks are *owed* -- unless the
  update was sent ``MAX_UNCONFIRMED_SENDS`` times without ever showing up and the server says the job
  ended (``job_ended``): then it is refused for good, since the server takes no range update of an ended
  job.  While the job is active such an update stays owed (a server failing before it commits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hpcpilot.journal import OutboxEntry
from hpcpilot.panda import wire
from hpcpilot.panda.failures import Ambiguous, PandaError, RequestRejected, UnconfirmedRangeUpdate

MAX_UNCONFIRMED_SENDS = 8
"""An update sent (and answered) this many times that the look-ups never show taken is refused for good once the
server says the job is no longer active (it then takes no range update of it): kept in the journal's ``rejected``
table.  While the job is active the update stays owed (a server failing before it commits).  Sends that never
reached the server (an outage) do not count."""

SERVER_FINAL_JOB_STATES = frozenset({"holding", "finished", "failed", "cancelled", "closed", "merging"})
"""Job states that prove the server has a final update (finished/failed are 'holding' until its Adder)."""

SERVER_UNKNOWN_JOB_STATES = frozenset({"not found", "notfound"})
"""What a job look-up answers for a job the server does not know (v1, legacy)."""

SERVER_FINAL_RANGE_STATES = {"finished": "finished", "done": "finished", "merged": "finished",
                             "failed": "failed", "fatal": "fatal", "cancelled": "failed",
                             "discarded": "failed", "corrupted": "failed"}
"""Event-range states that prove the server has a final status, and what it counts as."""

_PROGRESS = {"starting": 1, "running": 2, "transferring": 3}

INTERNAL_ERROR = "internal error"
"""What the journal notes for a send that failed by a bug of ours (the log has the details)."""


class Fate(StrEnum):
    """What becomes of an update."""

    DELIVERED = "delivered"
    """The server has it: it leaves the outbox."""
    OWED = "owed"
    """The server does not have it (yet): sent again -- after the back-off when the send failed."""
    ASK = "ask"
    """Its fate is open: the server is asked (a look-up) before anything is sent again."""
    REFUSED = "refused"
    """Refused for good: kept in the journal's ``rejected`` table, never sent again."""


@dataclass(frozen=True)
class Verdict:
    """The fate of one update after a send, and what to note with it."""

    fate: Fate
    why: str = ""
    batched: bool = False
    """ASK with the job's one batched look-up (v1's range-update 500), not at once."""
    internal: bool = False
    """OWED because of a bug of ours, not the server (logged as an error, noted as ``INTERNAL_ERROR``)."""


ACKNOWLEDGED = Verdict(Fate.DELIVERED)


def after_reply(error: Exception | None) -> Verdict:
    """The verdict on a send from what it raised (None: an acknowledging answer)."""
    if error is None:
        return ACKNOWLEDGED
    if isinstance(error, UnconfirmedRangeUpdate):
        return Verdict(Fate.ASK, str(error), batched=True)
    if isinstance(error, RequestRejected):
        return Verdict(Fate.REFUSED, str(error))
    if isinstance(error, Ambiguous):
        return Verdict(Fate.ASK, str(error))
    if isinstance(error, PandaError):
        return Verdict(Fate.OWED, str(error))
    return Verdict(Fate.OWED, f"{type(error).__name__}: {wire.snippet(str(error), 200)}", internal=True)


@dataclass(frozen=True)
class RangeReply:
    """What an answered range update says per range: taken, refused, and left open (to be asked about)."""

    taken: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    open: set[str] = field(default_factory=set)

    @property
    def fate(self) -> Fate:
        """DELIVERED once every range is answered true or false; ASK while any is open."""
        return Fate.ASK if self.open else Fate.DELIVERED


def after_range_reply(range_ids: Sequence[str], returns: Sequence[Any]) -> RangeReply:
    """Per-range answers: true taken, false refused, anything else (null for a final status: not stored,
    or not said) open."""
    taken = {rid for rid, ok in zip(range_ids, returns, strict=True) if ok is True}
    refused = [rid for rid, ok in zip(range_ids, returns, strict=True) if ok is False]
    return RangeReply([rid for rid in range_ids if rid in taken], refused, set(range_ids) - taken - set(refused))


def progress(state: Any) -> int:
    """How far a job's server state is along starting -> running -> transferring -> final (0 = before)."""
    if state in SERVER_FINAL_JOB_STATES:
        return 4
    return _PROGRESS.get(str(state), 0)


def after_job_lookup(entry: OutboxEntry, server_state: Any) -> Fate:
    """A job update whose fate was open, given the server's state of the job: a heartbeat is delivered
    once the server is at or past its state, a final update once the server's state is final."""
    if not entry.final:
        return Fate.DELIVERED if progress(server_state) >= progress(entry.body.get("state")) else Fate.OWED
    return Fate.DELIVERED if server_state in SERVER_FINAL_JOB_STATES else Fate.OWED


def job_ended(server_state: Any) -> bool:
    """The server no longer runs the job (final, or unknown): it takes no range update of it any more."""
    return server_state in SERVER_FINAL_JOB_STATES or server_state in SERVER_UNKNOWN_JOB_STATES


def needs_job_state(sends: int) -> bool:
    """An update sent this often without showing up is refused if the job ended: its state must be asked."""
    return sends >= MAX_UNCONFIRMED_SENDS


@dataclass(frozen=True)
class RangeVerdict:
    """What the server holds of one range update: final statuses it has (as counted), and ranges it lacks."""

    have: dict[str, str]
    missing: list[str]
    fate: Fate = Fate.OWED
    """DELIVERED (nothing missing), OWED (send ``missing`` again) or REFUSED (``missing`` never shows up)."""


def after_range_lookup(range_ids: Sequence[str], known: Mapping[str, str], sends: int = 0,
                       ended: bool = False) -> RangeVerdict:
    """The verdict on an update of ``range_ids`` given the server's statuses (``known``, from a look-up), how
    often it was sent without its answer confirming it, and whether the job ended at the server.  A range
    counts as delivered only in a final state; ready/sent/running mean it is still owed."""
    have = {rid: SERVER_FINAL_RANGE_STATES[known[rid]] for rid in range_ids
            if known.get(rid) in SERVER_FINAL_RANGE_STATES}
    missing = [rid for rid in range_ids if rid not in have]
    if not missing:
        fate = Fate.DELIVERED
    elif ended and needs_job_state(sends):
        fate = Fate.REFUSED
    else:
        fate = Fate.OWED
    return RangeVerdict(have, missing, fate)
