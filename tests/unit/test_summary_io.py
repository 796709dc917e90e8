"""Rank 0's summary.json and delivery counts cost O(1) per final report (issue 14), counted, not timed."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from hpcpilot import runsummary as runsummary_module
from hpcpilot.config import SiteConfig, replace
from hpcpilot.controller import Controller
from hpcpilot.panda.source import FETCH_REPLAYING, PandaSource
from hpcpilot.records import JobRecord
from hpcpilot.runsummary import SUMMARY_FILE, SUMMARY_MAX_SHARE
from hpcpilot.scheduler import Scheduler, SchedulerPolicy
from hpcpilot.signals import SignalFlag
from hpcpilot.states import JobState
from hpcpilot.transport import QueueHub
from tests.fixtures.panda.panda_helpers import NODE, panda_config
from tests.fixtures.sources import QuietSource

INTERVAL = 30.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class _Source(QuietSource):
    """A job source that takes every update (no acknowledgements: the controller counts them delivered)."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, bool]] = []

    def update_job(self, record: JobRecord, final: bool) -> None:
        self.updates.append((record.panda_id, final))


def _controller(tmp_path: Path, source: Any, clock: _Clock, config: SiteConfig | None = None) -> Controller:
    config = replace(config or SiteConfig(), "monitor", status_interval=INTERVAL)
    scheduler = Scheduler([1], config, SchedulerPolicy.from_config(config, None, None))
    controller = Controller(QueueHub(2).transport(0), source, scheduler, tmp_path, SignalFlag(), clock=clock)
    writes = []
    real = controller.summary.write
    controller.summary.write = lambda: (writes.append(clock()), real())[1]  # type: ignore[method-assign]
    controller.writes = writes  # type: ignore[attr-defined]
    return controller


def _finish(controller: Controller, panda_id: int) -> JobRecord:
    record = JobRecord(panda_id=panda_id, state=JobState.FINISHED)
    controller.scheduler.done.append(record)  # as the scheduler does before it asks for the final report
    controller.report(record, True)
    return record


def _summary(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / SUMMARY_FILE).read_text())


def test_summary_is_rewritten_once_per_interval_however_many_jobs_end(tmp_path: Path) -> None:
    clock = _Clock()
    controller = _controller(tmp_path, _Source(), clock)
    _finish(controller, 1)
    assert controller.writes == [clock.now]  # the first job's report is written at once
    for panda_id in range(2, 2002):  # 2,000 final reports within one interval: no rewrite
        _finish(controller, panda_id)
    assert len(controller.writes) == 1
    assert [j["jobId"] for j in _summary(tmp_path)["jobs"]] == [1]
    clock.now += INTERVAL
    controller.summary.write_if_due()  # what the loop does on every pass
    assert len(controller.writes) == 2
    summary = _summary(tmp_path)
    assert len(summary["jobs"]) == 2001 and {j["delivery"] for j in summary["jobs"]} == {"acknowledged"}
    controller.summary.write_if_due()
    clock.now += 10 * INTERVAL
    controller.summary.write_if_due()  # nothing ended since: nothing to rewrite
    assert len(controller.writes) == 2


def test_a_heartbeat_never_rewrites_the_summary(tmp_path: Path) -> None:
    clock = _Clock()
    controller = _controller(tmp_path, _Source(), clock)
    for _ in range(100):
        clock.now += INTERVAL
        controller.report(JobRecord(panda_id=5, state=JobState.RUNNING), False)
    assert controller.writes == []


def test_a_slow_rewrite_waits_until_it_is_a_small_share_of_rank_0s_time(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    controller = _controller(tmp_path, _Source(), clock)
    ticks = iter([0.0, 10.0])  # the rewrite "takes" 10 s: the next one is not due before 10 s / share
    monkeypatch.setattr(runsummary_module.time, "perf_counter", lambda: next(ticks))
    _finish(controller, 1)
    monkeypatch.undo()
    _finish(controller, 2)
    clock.now += 10.0 / SUMMARY_MAX_SHARE - 1.0
    controller.summary.write_if_due()
    assert len(controller.writes) == 1
    clock.now += 1.0
    controller.summary.write_if_due()
    assert len(controller.writes) == 2


def test_a_signal_writes_the_summary_at_once(tmp_path: Path) -> None:
    clock = _Clock()
    controller = _controller(tmp_path, _Source(), clock)
    _finish(controller, 1)
    _finish(controller, 2)
    controller.signals.handler(signal.SIGTERM, None)
    controller.check_signals()
    assert len(controller.writes) == 2
    summary = _summary(tmp_path)
    assert summary["pilot"]["signal"] == "SIGTERM" and [j["jobId"] for j in summary["jobs"]] == [1, 2]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_delivery_is_counted_without_reading_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PANDA_AUTH_TOKEN", "OIDC_AUTH_TOKEN", "PANDA_AUTH_DIR", "OIDC_AUTH_DIR", "X509_USER_PROXY"):
        monkeypatch.delenv(name, raising=False)
    config = panda_config(f"http://127.0.0.1:{_closed_port()}", retry_initial=5.0, retry_max=5.0)
    source = PandaSource(config, tmp_path, NODE, fetch_deadline=0.1, close_deadline=0.1)
    reads = []
    real_pending = source.journal.pending

    def pending(before_run: int | None = None, limit: int | None = None) -> Any:
        if limit is None:  # the sender's look at the head of the queue (limit 1) is not a read of the outbox
            reads.append(before_run)
        return real_pending(before_run, limit)

    monkeypatch.setattr(source.journal, "pending", pending)
    clock = _Clock()
    controller = _controller(tmp_path, source, clock)
    for panda_id in range(1, 201):  # the server is down: every final update stays owed
        _finish(controller, panda_id)
    delivery = controller.summary.delivery()
    assert delivery.owed == 200 and set(delivery.jobs.values()) == {"owed"} and len(delivery.jobs) == 200
    assert "NOT acknowledged" in controller.summary.human() and controller.summary.exit_status(controller.signals) == 3
    assert reads == []
    assert {j["delivery"] for j in _summary(tmp_path)["jobs"]} == {"owed"}
    source.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_pilot_starts_on_a_workdir_whose_journal_is_damaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              damage: str) -> None:
    for name in ("PANDA_AUTH_TOKEN", "OIDC_AUTH_TOKEN", "PANDA_AUTH_DIR", "OIDC_AUTH_DIR", "X509_USER_PROXY"):
        monkeypatch.delenv(name, raising=False)
    config = panda_config(f"http://127.0.0.1:{_closed_port()}", retry_initial=5.0, retry_max=5.0)
    first = PandaSource(config, tmp_path, NODE, fetch_deadline=0.1, close_deadline=0.1)
    for panda_id in range(200):
        first.journal.record_job_lease(panda_id, {"PandaID": panda_id, "jobPars": "x" * 400})
    first.close()
    path = first.journal.path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncated" else bytes(range(256)) * 64)
    second = PandaSource(config, tmp_path, NODE, fetch_deadline=0.1, close_deadline=0.1)
    assert second.journal.lost is not None and second.journal.run == 1
    assert second.delivery().owed == 0 and second.pending() == 0  # nothing to replay: leasing may start
    assert second.fetch_jobs(1).status != FETCH_REPLAYING
    second.close()
