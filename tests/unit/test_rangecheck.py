"""When a job's unconfirmed range updates are looked up (issue 21); what a look-up proves is in
test_delivery_verdict.py."""

from __future__ import annotations

import pytest

from hpcpilot.panda.rangecheck import AGE_BASE, AGE_CAP, LOOKUP_RATIO, RangeChecks


def test_a_job_of_unknown_size_is_looked_up_at_once():
    checks = RangeChecks()
    checks.park(7, seq=1, n_ranges=1, now=0.0)
    assert checks.due_job(0.0) == 7 and checks.parked_seqs() == {1}


def test_a_known_job_waits_for_a_tenth_of_its_ranges_so_a_look_up_reads_at_most_ratio_per_range():
    checks = RangeChecks()
    checks.settled(7, 100_000)
    for seq in range(1, 10):
        checks.park(7, seq=seq, n_ranges=1000, now=0.0)
        assert checks.due_job(0.0) is None
    checks.park(7, seq=10, n_ranges=1000, now=0.0)
    assert checks.due_job(0.0) == 7


@pytest.mark.parametrize(("listed", "wait"), [(0, AGE_BASE), (1000, 2 * AGE_BASE), (10_000, 11 * AGE_BASE),
                                              (1_000_000, AGE_CAP)])
def test_the_longest_wait_grows_with_the_job_and_is_capped(listed, wait):
    checks = RangeChecks()
    checks.settled(7, listed)
    checks.park(7, seq=1, n_ranges=1, now=100.0)
    assert checks.max_wait(7) == pytest.approx(min(wait, AGE_CAP))
    assert checks.wait_time(100.0) == pytest.approx(checks.max_wait(7))
    assert (checks.due_job(100.0 + checks.max_wait(7) - 0.01) is None) == (listed >= LOOKUP_RATIO)
    assert checks.due_job(100.0 + checks.max_wait(7)) == 7


def test_flushing_makes_every_parked_job_due_oldest_first():
    checks = RangeChecks()
    for job, since in ((8, 5.0), (7, 1.0)):
        checks.settled(job, 10_000)
        checks.park(job, seq=job, n_ranges=1, now=since)
    assert checks.due_job(6.0) is None
    assert checks.due_job(6.0, flushing=True) == 7


def test_a_failed_look_up_unparks_and_counts_the_outage_a_success_resets_it():
    checks = RangeChecks()
    checks.park(7, seq=1, n_ranges=1, now=0.0)
    checks.lookup_failed(7)
    checks.lookup_failed(7)
    assert checks.failing == 2 and not checks.is_parked(7) and checks.wait_time(0.0) is None
    checks.settled(7, 5)
    assert checks.failing == 0


def test_sends_are_counted_per_update_until_it_leaves():
    checks = RangeChecks()
    for _ in range(3):
        checks.park(7, seq=4, n_ranges=2, now=0.0)
    assert checks.sends(4) == 3
    checks.done(4)
    assert checks.sends(4) == 0
    checks.park(7, seq=5, n_ranges=2, now=0.0)
    checks.forget(7)
    assert not checks.is_parked(7)
