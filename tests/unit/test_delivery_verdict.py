"""The delivery verdict (``hpcpilot.panda.verdict``): every outcome class the senders act on, as a table."""

from __future__ import annotations

from typing import Any

import pytest

from hpcpilot.journal import JOB, OutboxEntry
from hpcpilot.panda.failures import (
    Ambiguous,
    PandaError,
    RequestRejected,
    ServerUnavailable,
    ServerUnusable,
    UnconfirmedRangeUpdate,
)
from hpcpilot.panda.verdict import (
    MAX_UNCONFIRMED_SENDS,
    SERVER_FINAL_JOB_STATES,
    SERVER_FINAL_RANGE_STATES,
    Fate,
    after_job_lookup,
    after_range_lookup,
    after_range_reply,
    after_reply,
    job_ended,
    needs_job_state,
)

ES_STATUS_NAMES = ("ready", "sent", "running", "finished", "cancelled", "discarded", "done", "failed", "fatal",
                   "merged", "corrupted", "reserved_fail", "reserved_get")
"""Every name of the server's EventServiceUtils.ES_status_map (panda-wire A.5)."""


def _job_update(state: str, final: bool) -> OutboxEntry:
    return OutboxEntry(seq=1, rev=0, kind=JOB, panda_id=7, final=final, body={"jobId": "7", "state": state},
                       run=1, attempts=0)


# ---- what a send brought back --------------------------------------------------------------------

REPLY_CASES: list[tuple[str, Exception | None, Fate, bool]] = [
    ("acknowledged", None, Fate.DELIVERED, False),
    ("refused by the server (StatusCode, HTTP 4xx)", RequestRejected("updateJob 7: StatusCode 1: no"),
     Fate.REFUSED, False),
    ("HTTP 5xx after sending", Ambiguous("HTTP 503 from /api/v1/job/update_job", 503), Fate.ASK, False),
    ("v1 updateJob HTTP 500", Ambiguous("HTTP 500 from /api/v1/job/update_job", 500), Fate.ASK, False),
    ("a timeout after sending", Ambiguous("no answer within 5.0s"), Fate.ASK, False),
    ("a reply that proves nothing", Ambiguous("updateJob: not acknowledged: garbage"), Fate.ASK, False),
    ("v1 range update HTTP 500 (its normal answer)", UnconfirmedRangeUpdate("HTTP 500", 500), Fate.ASK, True),
    ("server down, nothing sent", ServerUnavailable("cannot reach the server"), Fate.OWED, False),
    ("server unusable", ServerUnusable("certificate does not verify"), Fate.OWED, False),
    ("any other failed call", PandaError("panda.server is empty"), Fate.OWED, False),
    ("a bug of ours", KeyError("payload"), Fate.OWED, False),
]


@pytest.mark.parametrize(("error", "fate", "batched"), [case[1:] for case in REPLY_CASES],
                         ids=[case[0] for case in REPLY_CASES])
def test_what_a_send_brought_back(error: Exception | None, fate: Fate, batched: bool) -> None:
    verdict = after_reply(error)
    assert verdict.fate is fate and verdict.batched == batched
    if error is not None:
        assert str(error) in verdict.why


def test_a_bug_of_ours_is_owed_and_said_to_be_ours() -> None:
    verdict = after_reply(KeyError("payload"))
    assert verdict.internal and verdict.why.startswith("KeyError: ")
    assert not after_reply(ServerUnavailable("down")).internal


def test_a_range_reply_is_judged_range_by_range() -> None:
    reply = after_range_reply(["a", "b", "c", "d"], [True, False, None, "yes"])
    assert reply.taken == ["a"] and reply.refused == ["b"] and reply.open == {"c", "d"}
    assert reply.fate is Fate.ASK  # the open ones are asked about: null for a final status proves nothing
    answered = after_range_reply(["a", "b"], [True, False])
    assert answered.fate is Fate.DELIVERED and not answered.open  # the update leaves; b is counted refused


# ---- what a job look-up shows ----------------------------------------------------------------------

JOB_LOOKUP_CASES: list[tuple[str, bool, Any, Fate]] = [
    ("running", False, "starting", Fate.OWED),  # the heartbeat did not arrive
    ("running", False, "activated", Fate.OWED),
    ("running", False, None, Fate.OWED),  # the look-up does not list the job
    ("running", False, "running", Fate.DELIVERED),
    ("running", False, "transferring", Fate.DELIVERED),  # at or past it
    ("starting", False, "holding", Fate.DELIVERED),
    ("finished", True, "running", Fate.OWED),  # final update sent again
    ("finished", True, "transferring", Fate.OWED),
    ("failed", True, "not found", Fate.OWED),
    *[("finished", True, state, Fate.DELIVERED) for state in sorted(SERVER_FINAL_JOB_STATES)],
]


@pytest.mark.parametrize(("sent", "final", "server_state", "fate"), JOB_LOOKUP_CASES)
def test_what_a_job_look_up_shows(sent: str, final: bool, server_state: Any, fate: Fate) -> None:
    assert after_job_lookup(_job_update(sent, final), server_state) is fate


@pytest.mark.parametrize(("state", "ended"), [*[(s, True) for s in sorted(SERVER_FINAL_JOB_STATES)],
                                              ("not found", True), ("notfound", True), ("running", False),
                                              ("activated", False), ("sent", False), (None, False)])
def test_a_job_ended_at_the_server_once_final_or_unknown(state: Any, ended: bool) -> None:
    assert job_ended(state) is ended


# ---- what a range look-up shows -------------------------------------------------------------------

@pytest.mark.parametrize("status", ES_STATUS_NAMES)
def test_only_a_final_status_counts_as_delivered(status):
    verdict = after_range_lookup(["a", "b"], {"a": status})
    if status in SERVER_FINAL_RANGE_STATES:
        assert verdict.have == {"a": SERVER_FINAL_RANGE_STATES[status]} and verdict.missing == ["b"]
    else:  # ready, sent, running, reserved_*: the server does not have our final status
        assert verdict.have == {} and verdict.missing == ["a", "b"]


def test_a_range_the_look_up_does_not_list_is_still_owed():
    assert after_range_lookup(["x-1"], {}).missing == ["x-1"]
    assert after_range_lookup(["x-1"], {"x-2": "finished"}).missing == ["x-1"]


MAX = MAX_UNCONFIRMED_SENDS
RANGE_LOOKUP_CASES: list[tuple[str, dict[str, str], int, bool, Fate]] = [
    ("all final", {"a": "finished", "b": "failed"}, 1, False, Fate.DELIVERED),
    ("all final, job ended", {"a": "done", "b": "fatal"}, MAX, True, Fate.DELIVERED),
    ("one not final", {"a": "finished", "b": "running"}, 1, False, Fate.OWED),
    ("none listed", {}, 1, False, Fate.OWED),
    ("sent too often, job still active", {"a": "finished"}, MAX, False, Fate.OWED),
    ("job ended, not sent often enough", {"a": "finished"}, MAX - 1, True, Fate.OWED),
    ("sent too often, job ended", {"a": "finished"}, MAX, True, Fate.REFUSED),
    ("sent more than that, job ended", {}, MAX + 3, True, Fate.REFUSED),
]


@pytest.mark.parametrize(("known", "sends", "ended", "fate"), [case[1:] for case in RANGE_LOOKUP_CASES],
                         ids=[case[0] for case in RANGE_LOOKUP_CASES])
def test_what_a_range_look_up_shows(known: dict[str, str], sends: int, ended: bool, fate: Fate) -> None:
    verdict = after_range_lookup(["a", "b"], known, sends, ended)
    assert verdict.fate is fate
    assert verdict.missing == [rid for rid in ("a", "b") if known.get(rid) not in SERVER_FINAL_RANGE_STATES]


def test_the_job_state_is_asked_only_for_an_update_sent_max_unconfirmed_sends_times() -> None:
    assert not needs_job_state(MAX_UNCONFIRMED_SENDS - 1)
    assert needs_job_state(MAX_UNCONFIRMED_SENDS) and needs_job_state(MAX_UNCONFIRMED_SENDS + 1)

