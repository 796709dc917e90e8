"""No payload outlives its rank, with real processes: the kernel's parent-death signal, the rank's
guard, and a pilot that cleans up the cgroups a dead rank left in its workdir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpcpilot.cgroups import PayloadCgroup, detect
from hpcpilot.payload import (
    RANK_VAR,
    kill_marked,
    owner_alive,
    owner_id,
    payload_cgroup_name,
    read_stat,
    reap_stale_cgroups,
    start_payload,
    workdir_key,
)
from tests.pilotrun import make_job, processes_with, run_pilot, wait_for

# A stand-in for a worker rank: it starts one payload the way a job thread does, prints its pid and
# the rank's identity, and waits to be killed.
RANK = """
import os, sys, time
from pathlib import Path
from hpcpilot.payload import owner_id, start_payload
from hpcpilot.rankguard import RankGuard
tmp = Path(sys.argv[1])
guard = RankGuard.start(owner_id(), tmp) if sys.argv[3] == "guard" else None
payload = start_payload(sys.argv[2], tmp, dict(os.environ), tmp / "out", tmp / "err", None)
print(payload.pid, owner_id(), flush=True)
time.sleep(120)
"""


def _start_rank(tmp_path: Path, command: str, guard: bool) -> tuple[subprocess.Popen[str], int]:
    rank = subprocess.Popen([sys.executable, "-c", RANK, str(tmp_path), command, "guard" if guard else "-"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert rank.stdout is not None
    payload_pid = int(rank.stdout.readline().split()[0])
    return rank, payload_pid


def _kill(rank: subprocess.Popen[str]) -> None:
    os.killpg(rank.pid, signal.SIGKILL)
    rank.wait()


def _running(pid: int, start: int) -> bool:
    info = read_stat(pid)
    return info is not None and info.start == start and info.state not in "ZX"


def test_the_kernel_kills_a_payload_whose_rank_is_killed(tmp_path: Path) -> None:
    rank, pid = _start_rank(tmp_path, "exec sleep 300.61", guard=False)  # the payload's first process
    start = read_stat(pid).start  # type: ignore[union-attr]
    _kill(rank)
    assert wait_for(lambda: not _running(pid, start), timeout=5)


def test_the_guard_kills_the_payloads_children_when_its_rank_is_killed(tmp_path: Path) -> None:
    rank, _ = _start_rank(tmp_path, "sleep 300.62; true", guard=True)  # sh stays: sleep is a child
    assert wait_for(lambda: processes_with("300.62"), timeout=10)
    _kill(rank)  # the rank's process group only: the guard lives in a session of its own
    assert wait_for(lambda: not processes_with("300.62"), timeout=10)
    assert wait_for(lambda: not processes_with(str(tmp_path)), timeout=5)  # the guard is gone too


def test_without_a_guard_the_payloads_children_survive_their_rank(tmp_path: Path) -> None:
    """Why the guard exists: the parent-death signal does not reach a payload's children."""
    rank, _ = _start_rank(tmp_path, "sleep 300.63; true", guard=False)
    assert wait_for(lambda: processes_with("300.63"), timeout=10)
    _kill(rank)
    time.sleep(1)
    survivors = processes_with("300.63")
    assert survivors
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)


def test_the_death_signal_is_tied_to_the_thread_that_started_the_payload(tmp_path: Path) -> None:
    """A payload started from a thread that ends dies with it: the job thread must own its payload."""
    holder: list[int] = []

    def body() -> None:
        payload = start_payload(["sleep", "300.64"], tmp_path, dict(os.environ), tmp_path / "o", tmp_path / "e", None)
        holder.append(payload.pid)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    pid = holder[0]
    assert wait_for(lambda: (info := read_stat(pid)) is None or info.state in "ZX", timeout=5)
    os.waitpid(pid, 0)


def test_kill_marked_hits_exactly_the_rank_named_in_the_environment(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "300.65"], env={**os.environ, RANK_VAR: "999999-12"})
    bystander = subprocess.Popen(["sleep", "300.66"], env={**os.environ, RANK_VAR: "999999-123"})
    try:
        assert wait_for(lambda: processes_with("300.65") and processes_with("300.66"), timeout=5)  # exec'd
        assert kill_marked("999999-12") == 1
        assert victim.wait(timeout=5) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_owner_identity_survives_pid_reuse() -> None:
    assert owner_alive(owner_id())
    pid, _, start = owner_id().partition("-")
    assert not owner_alive(f"{pid}-{int(start) + 1}")  # the same pid, another process
    assert not owner_alive("not-a-pid")


def _stale_cgroup(workdir: Path, live: bool = False) -> PayloadCgroup:
    """A payload cgroup named as a rank of a pilot on ``workdir`` makes it: of a dead rank unless ``live``."""
    if os.geteuid() != 0:
        pytest.skip("payload cgroups need root here")
    location = detect()
    if location is None or not location.memory:
        pytest.skip(f"no cgroup with a memory controller (detected: {location})")
    owner = owner_id() if live else f"{os.getpid()}-1"  # start tick 1: not this process, long gone
    group = PayloadCgroup.create(f"hpcpilot_{workdir_key(workdir)}_{owner}_4711", None, location)
    if group is None:
        pytest.skip(f"cannot create a payload cgroup under {location.path}")
    return group


def test_cgroup_names_say_which_workdir_and_rank_made_them(tmp_path: Path) -> None:
    name = payload_cgroup_name(tmp_path, 4711)
    assert name == f"hpcpilot_{workdir_key(tmp_path)}_{owner_id()}_4711"
    assert workdir_key(tmp_path) != workdir_key(tmp_path / "other") and len(workdir_key(tmp_path)) == 12


def test_stale_cgroups_of_the_workdir_are_reaped_and_live_ones_kept(tmp_path: Path) -> None:
    stale, live = _stale_cgroup(tmp_path), _stale_cgroup(tmp_path, live=True)
    other = _stale_cgroup(tmp_path / "another-workdir")
    leftover = start_payload("sleep 300.67; true", tmp_path, dict(os.environ), tmp_path / "o", tmp_path / "e", stale)
    try:
        assert wait_for(lambda: len(stale.pids()) >= 2, timeout=5)
        assert reap_stale_cgroups(tmp_path) == 1
        assert not stale.path.exists() and live.path.exists() and other.path.exists()
        assert leftover.wait(5) == -signal.SIGKILL and not processes_with("300.67")
    finally:
        for group in (stale, live, other):
            group.remove()


def test_a_pilot_on_a_workdir_kills_what_a_dead_predecessor_left_in_its_cgroups(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    stale = _stale_cgroup(workdir)
    leftover = start_payload("sleep 300.68; true", tmp_path, dict(os.environ), tmp_path / "o", tmp_path / "e", stale)
    try:
        run = run_pilot(tmp_path, [make_job(4712, "echo ok > o.txt", ["o.txt"])])
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.jobs[4712]["state"] == "finished"
        assert leftover.wait(5) == -signal.SIGKILL and not processes_with("300.68")
        assert not stale.path.exists()
        assert "of dead rank" in run.stderr
    finally:
        stale.remove()
    assert json.loads((workdir / "summary.json").read_text())["jobs"]
