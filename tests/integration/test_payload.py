"""Payload start, exit codes, CPU accounting and complete kills, with real processes."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from hpcpilot.cgroups import PayloadCgroup, detect
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.payload import TOKEN_VAR, Payload, read_stat, start_payload

GRACE = 0.5


@pytest.fixture
def run(tmp_path: Path):
    """start_payload in tmp_path; every payload is terminated at the end whatever the test did."""
    started: list[Payload] = []

    def start(command: str | list[str], cgroup: PayloadCgroup | None = None, **env: str) -> Payload:
        payload = start_payload(command, tmp_path, {"PATH": os.environ["PATH"], **env},
                                tmp_path / "payload.stdout", tmp_path / "payload.stderr", cgroup)
        started.append(payload)
        return payload

    yield start
    for payload in started:
        payload.terminate(GRACE)


def _wait_for_line(path: Path, payload: Payload | None = None) -> list[str]:
    """Block (politely) until the payload has written a line to ``path``; fail if it died silently."""
    while not (lines := path.read_text().splitlines()):
        assert payload is None or payload.poll() is None, "payload exited without output"
        time.sleep(0.02)
    return lines


def _gone(identities: dict[int, int]) -> bool:
    """True if none of (pid, start time) still runs (zombies awaiting init count as gone)."""
    for pid, start in identities.items():
        info = read_stat(pid)
        if info is not None and info.start == start and info.state not in "ZX":
            return False
    return True


def _identities(pids: list[int]) -> dict[int, int]:
    return {pid: info.start for pid in pids if (info := read_stat(pid)) is not None}


@pytest.mark.parametrize(("command", "code"), [
    ("exit 0", 0),
    ("exit 3", 3),
    ("kill -TERM $$", -signal.SIGTERM),
    ("kill -KILL $$", -signal.SIGKILL),
    (["/bin/false"], 1),
])
def test_exit_codes(run, command: str | list[str], code: int) -> None:
    payload = run(command)
    assert payload.wait() == code
    assert payload.exit_code == code and payload.poll() == code
    assert payload.cpu_seconds is not None and payload.cpu_seconds >= 0


def test_output_cwd_env_and_token(run, tmp_path: Path) -> None:
    payload = run('echo "out $PWD $HPC_X"; echo err >&2; env', HPC_X="42")
    assert payload.wait() == 0
    stdout = (tmp_path / "payload.stdout").read_text()
    assert stdout.startswith(f"out {tmp_path} 42\n")
    assert f"{TOKEN_VAR}=" in stdout
    assert (tmp_path / "payload.stderr").read_text() == "err\n"


def test_missing_transform(run) -> None:
    with pytest.raises(PilotError) as info:
        run(["/no/such/transform"])
    assert info.value.code == ErrorCode.TRANSFORMNOTFOUND and "/no/such/transform" in info.value.diag
    with pytest.raises(PilotError):
        run("   ")


def test_poll_never_blocks_and_wait_times_out(run) -> None:
    payload = run("sleep 1000")
    assert payload.poll() is None
    assert payload.wait(timeout=0.1) is None
    payload.terminate(GRACE)
    assert payload.exit_code == -signal.SIGTERM
    assert payload.survivors() == []


def test_terminate_kills_children_that_ignore_sigterm(run, tmp_path: Path) -> None:
    payload = run("trap '' TERM; sleep 1000 & sleep 1001 & echo started; wait")
    _wait_for_line(tmp_path / "payload.stdout", payload)
    tree = _identities(payload.processes())
    assert len(tree) == 3
    payload.terminate(GRACE)
    assert payload.survivors() == []
    assert _gone(tree)
    assert payload.exit_code == -signal.SIGKILL  # the shell ignored SIGTERM too


def test_terminate_kills_setsid_and_double_forked_children(run, tmp_path: Path) -> None:
    command = ("setsid sleep 1002 & "                     # new session, still a child of the payload
               "(setsid sh -c 'trap \"\" TERM; sleep 1003' &) ; "  # orphaned to init, own session
               "echo started; exec sleep 1004")
    payload = run(command)
    _wait_for_line(tmp_path / "payload.stdout", payload)
    tree = _identities(payload.processes())
    assert len(tree) >= 4
    payload.terminate(GRACE)
    assert payload.survivors() == []
    assert _gone(tree)


def test_terminate_after_exit_hunts_orphans_and_is_idempotent(run, tmp_path: Path) -> None:
    payload = run("trap '' TERM; sleep 1005 & echo $!")
    assert payload.wait() == 0
    (orphan,) = (int(line) for line in _wait_for_line(tmp_path / "payload.stdout"))
    tree = _identities([orphan])
    assert payload.survivors() == [orphan]
    payload.terminate(GRACE)
    payload.terminate(GRACE)
    assert payload.survivors() == []
    assert _gone(tree)
    assert payload.exit_code == 0


def test_payload_is_reaped_no_zombie(run) -> None:
    payload = run("sleep 1000")
    payload.terminate(GRACE)
    assert read_stat(payload.pid) is None or read_stat(payload.pid).state != "Z"
    with pytest.raises(ChildProcessError):
        os.waitpid(payload.pid, os.WNOHANG)


_BURN = ("import os\n"
         "t = os.times()\n"
         "while os.times().user + os.times().system - t.user - t.system < 0.6: sum(range(1000))\n"
         "t = os.times()\n"
         "print(t.user + t.system, flush=True)\n")


def test_cpu_seconds_include_reaped_children(run, tmp_path: Path) -> None:
    """wait4's rusage against each burner's own os.times() just before it exits."""
    burn = f"{sys.executable} -c \"$BURN\""
    payload = run(f"{burn}; {burn}", BURN=_BURN)
    assert payload.wait() == 0
    own = sum(float(line) for line in (tmp_path / "payload.stdout").read_text().split())
    assert own >= 1.2
    assert payload.cpu_seconds == pytest.approx(own, rel=0.10)


def _real_cgroup(limit: int | None) -> PayloadCgroup:
    if os.geteuid() != 0:
        pytest.skip("payload cgroup needs root here")
    location = detect()
    if location is None or not location.memory:
        pytest.skip(f"no cgroup with a memory controller (detected: {location})")
    group = PayloadCgroup.create(f"hpcpilot-test-{uuid.uuid4().hex[:8]}", limit, location)
    if group is None:
        pytest.skip(f"cannot create a payload cgroup under {location.path}")
    return group


def test_payload_starts_inside_its_cgroup(run, tmp_path: Path) -> None:
    group = _real_cgroup(None)
    try:
        payload = run(["cat", "/proc/self/cgroup"], cgroup=group)
        assert payload.wait() == 0
        assert group.path.name in (tmp_path / "payload.stdout").read_text()
    finally:
        assert group.remove()


def test_memory_limit_oom_kills_payload(run) -> None:
    limit = 64 * 2**20
    group = _real_cgroup(limit)
    try:
        hog = "b = bytearray(256 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
        payload = run([sys.executable, "-c", hog], cgroup=group)
        assert payload.wait() == -signal.SIGKILL
        assert group.oom_killed()
        memory = group.memory()
        assert memory is not None and memory.peak_kb >= 0.8 * limit / 1024
        payload.terminate(GRACE)
        assert payload.survivors() == [] and group.pids() == []
    finally:
        assert group.remove()


def test_terminate_with_cgroup_kills_everything(run, tmp_path: Path) -> None:
    group = _real_cgroup(None)
    try:
        payload = run("(setsid sh -c 'trap \"\" TERM; sleep 1006' &); trap '' TERM; echo started; sleep 1007",
                      cgroup=group)
        _wait_for_line(tmp_path / "payload.stdout", payload)
        assert len(group.pids()) >= 2
        payload.terminate(GRACE)
        assert payload.survivors() == [] and group.pids() == []
    finally:
        assert group.remove()
