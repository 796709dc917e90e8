"""A worker rank's side of liveness, over in-process queues with a real worker loop: it sends its
alive signal while it waits for work, and after a signal that rank 0 never answers it leaves."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from hpcpilot.config import load_config
from hpcpilot.protocol import Alive, NoMoreWork, Ready, Release, Signalled, Stopped, WorkRequest
from hpcpilot.transport import QueueHub
from hpcpilot.worker import Worker

SETTINGS = {"monitor": {"report_interval": 0.1, "lost_rank_intervals": 3, "free_space_start_mb": 1}}


class _Flag:
    signum: int | None = None


def _worker(tmp_path: Path, signals: _Flag | None = None) -> tuple[QueueHub, threading.Thread]:
    hub = QueueHub(2)
    config = load_config(None, SETTINGS, environ={})
    worker = Worker(hub.transport(1), config, tmp_path / "jobs", tmp_path, signals=signals)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return hub, thread


def _drain(hub: QueueHub) -> list[object]:
    out = []
    while (item := hub.transport(0).receive()) is not None:
        out.append(item[1])
    return out


def test_an_idle_rank_sends_its_alive_signal_every_report_interval(tmp_path: Path) -> None:
    hub, thread = _worker(tmp_path)
    time.sleep(1.0)  # ten report intervals with no work
    messages = _drain(hub)
    assert [type(m) for m in messages[:2]] == [Ready, WorkRequest]
    assert 5 <= sum(isinstance(m, Alive) for m in messages) <= 12
    hub.transport(0).send(1, NoMoreWork())
    # A retired rank stays (asleep) until rank 0 releases it: under Hydra an exited rank turns a later
    # SIGTERM into SIGKILL of every rank (tests/mpi/test_mpi_signals.py).
    assert wait_until_stopped(hub)
    thread.join(timeout=0.5)
    assert thread.is_alive()
    hub.transport(0).send(1, Release())
    thread.join(timeout=15)
    assert not thread.is_alive()


def wait_until_stopped(hub: QueueHub, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(isinstance(m, Stopped) for m in _drain(hub)):
            return True
        time.sleep(0.05)
    return False


def test_a_signalled_rank_that_rank_0_never_answers_leaves_on_its_own(tmp_path: Path) -> None:
    flag = _Flag()
    hub, thread = _worker(tmp_path, flag)
    time.sleep(0.2)
    flag.signum = signal.SIGTERM
    signalled = time.monotonic()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert 0.3 <= time.monotonic() - signalled < 5  # 3 report intervals of silence, then it goes
    kinds = [type(m) for m in _drain(hub)]
    assert Signalled in kinds and kinds[-1] is Stopped
