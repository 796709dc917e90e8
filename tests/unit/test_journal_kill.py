"""Group commit keeps durability: a journal writer SIGKILLed at random instants loses nothing it told anyone.

A real process (tests/fixtures/journal_churn.py) runs rank 0's journal users as the pilot does -- the fetch
thread leasing then dealing, the loop thread reporting in groups, a sender sending then acknowledging -- and
prints each thing it tells the outside world.  The parent kills it with SIGKILL at a random instant, reads
what it was told, opens the journal as the next pilot run would, and checks:

* every range dealt to a rank is still leased, or owed in the outbox, or held by the server (sent);
* no range is both leased and owed (a report and the release of its leases are one write), nor both
  leased and at the server (an update is committed before it is sent: a restart reports a range still
  leased as failed);
* every update sent and not yet acknowledged by the server is still owed, with the same ranges.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcpilot.journal import RANGE, Journal

ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(path: Path, delay: float) -> list[str]:
    """Start the writer, SIGKILL it ``delay`` seconds after it is ready; every line it wrote before."""
    child = subprocess.Popen([sys.executable, "-m", "tests.fixtures.journal_churn", str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert child.stdout is not None
    out = b""
    deadline = None
    fd = child.stdout.fileno()
    while True:
        if deadline is None and b"ready\n" in out:
            deadline = time.monotonic() + delay
        if deadline is not None and time.monotonic() >= deadline:
            break
        ready, _, _ = select.select([fd], [], [], 0.01 if deadline is None else max(0.0, deadline - time.monotonic()))
        if ready:
            chunk = os.read(fd, 1 << 16)
            assert chunk, f"the writer ended by itself: {out[-500:]!r}"
            out += chunk
    child.send_signal(signal.SIGKILL)
    out += child.stdout.read()
    child.wait()
    assert child.returncode == -signal.SIGKILL
    return out.decode().splitlines()


def _told(lines: list[str]) -> tuple[set[str], dict[int, list[str]]]:
    """Ranges dealt, and updates sent (seq -> range ids), from the whole lines the writer printed."""
    dealt: set[str] = set()
    sent: dict[int, list[str]] = {}
    for line in lines:
        word, *rest = line.split()
        if word == "dealt":
            dealt.update(rest)
        elif word == "sent":
            sent[int(rest[0])] = rest[1:]
    return dealt, sent


def test_a_sigkill_at_any_instant_loses_nothing_that_was_dealt_or_sent(tmp_path):
    rng = random.Random(os.environ.get("HPCPILOT_TEST_SEED", "26"))
    for attempt in range(8):
        path = tmp_path / f"j{attempt}.sqlite"
        lines = _run_and_kill(path, rng.uniform(0.02, 0.5))
        dealt, sent = _told(lines)
        assert dealt, lines[:5]
        journal = Journal(path)  # the next run's opening, as after the kill
        leased = {lease.key for lease in journal.in_flight(RANGE, before_run=journal.run)}
        owed = {entry.seq: [r["eventRangeID"] for r in entry.body["payload"]]
                for entry in journal.pending(before_run=journal.run)}
        owed_ids = {rid for ids in owed.values() for rid in ids}
        server = {rid for ids in sent.values() for rid in ids}
        assert not leased & owed_ids, sorted(leased & owed_ids)[:5]
        # a range the server got is no longer leased: a restart would report it failed over its outcome
        assert not leased & server, sorted(leased & server)[:5]
        assert dealt <= leased | owed_ids | server, sorted(dealt - leased - owed_ids - server)[:5]
        assert owed_ids <= dealt  # the outbox invents nothing
        for seq, ids in owed.items():
            assert seq not in sent or sent[seq] == ids  # what the server got is what is still owed, whole
        journal.close()
