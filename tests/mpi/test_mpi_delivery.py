"""Nothing lost, nothing claimed (issue 11), for real: `hpcpilot serve` answering as panda-server 0.8.1
does (v1 update_event_ranges: HTTP 500 after committing) and with faults injected before or after it
commits, `mpiexec -n 4 hpcpilot run`, and a second pilot or `hpcpilot deliver` on the same workdir.

Every assertion about delivery is on the server's state (``updates`` counts the final updates the
server accepted per range, ``states`` every updateJob state it stored), not on the pilot's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.mpi.test_mpi_eventservice import ES_PAYLOAD, PANDA_ID, Server, assert_accounted, es_job, pilot_argv, run
from tests.pilotrun import wait_for

pytestmark = pytest.mark.mpi
EXIT_OWED = 3


def start_server(tmp: Path, ranges: int, *fault: str, jobs: list[dict[str, Any]] | None = None) -> Server:
    server = Server(tmp, jobs or [es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 5")], ranges)
    server.argv += list(fault)
    server.start()
    return server


def restart_without_faults(server: Server) -> None:
    server.stop()
    server.argv = server.argv[:server.argv.index("--events-per-range") + 2]
    server.start()


def summary(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "work" / "summary.json").read_text())


PROTOCOL = ["eventservice.payload_mode=protocol", "eventservice.ranges_per_request=4", "panda.api=v1",
            "panda.retry_initial=0.2", "panda.retry_max=1"]


def test_v1_500_after_commit_with_the_version_1_body_loses_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path, 200)  # the real 0.8.1 behaviour: every v1 range update answers 500
    try:
        result = run(pilot_argv(tmp_path, ["--server", server.url], PROTOCOL), tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        state = server.dump()
    finally:
        server.stop()
    assert assert_accounted(state) == {"finished": 200}
    assert state["jobs"][0]["status"] == "finished" and state["jobs"][0]["nEvents"] == 200
    report = summary(tmp_path)
    assert report["event_ranges"][str(PANDA_ID)] == {"finished": 200}
    assert report["jobs"][0]["delivery"] == "acknowledged" and report["pilot"]["owed"] == 0


def test_500_before_commit_for_the_first_updates_is_delivered_on_retry_once(tmp_path: Path) -> None:
    server = start_server(tmp_path, 200, "--fault", "500", "--fault-count", "4", "--fault-method",
                          "updateEventRanges", "--no-v1-bug")
    try:
        result = run(pilot_argv(tmp_path, ["--server", server.url], PROTOCOL), tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        state = server.dump()
    finally:
        server.stop()
    assert assert_accounted(state) == {"finished": 200}
    assert state["jobs"][0]["status"] == "finished"


def _rank0_pid(workdir: Path) -> int | None:
    """The pid of rank 0 of a pilot on ``workdir`` (MPICH sets PMI_RANK in each rank's environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(workdir).encode() in cmdline and b"run" in cmdline and b"PMI_RANK=0" in environ:
            return int(entry.name)
    return None


def test_rank0_sigkilled_during_an_update_then_a_second_pilot_reports_each_range_once(tmp_path: Path) -> None:
    """The server commits an update and holds its answer; rank 0 dies meanwhile.  The next pilot on the
    workdir must ask the server before replaying, so no range is reported twice."""
    server = start_server(tmp_path, 120, "--fault", "slow", "--fault-delay", "120", "--fault-after-commit",
                          "--fault-count", "1", "--fault-method", "updateEventRanges", "--no-v1-bug",
                          jobs=[es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 40")])
    proc = subprocess.Popen(pilot_argv(tmp_path, ["--server", server.url], PROTOCOL), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: any(r["updates"] for r in server.dump()["event_ranges"]), timeout=120)
        time.sleep(1.0)  # the committed update's answer is held by the server: rank 0 waits for it
        pid = _rank0_pid(tmp_path / "work")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        committed = {r["eventRangeID"] for r in server.dump()["event_ranges"] if r["updates"]}
        assert committed
        restart_without_faults(server)
        second = run(pilot_argv(tmp_path, ["--server", server.url], PROTOCOL), tmp_path)
        assert second.returncode == 0, second.stderr[-3000:]
        state = server.dump()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()
    counts = assert_accounted(state)  # nothing left 'sent', no range reported twice
    assert sum(counts.values()) == 120
    by_id = {r["eventRangeID"]: r for r in state["event_ranges"]}
    assert all(by_id[rid]["updates"] == 1 for rid in committed)
    # the job reached a final state: finished when the first pilot had run it all and only its reports
    # were owed (the second pilot delivered them), else failed 1200 by the second pilot
    assert state["jobs"][0]["status"] in ("finished", "failed"), state["jobs"][0]


def test_a_server_that_never_acknowledges_range_updates_ends_owed(tmp_path: Path) -> None:
    server = start_server(tmp_path, 400, "--fault", "500", "--fault-method", "updateEventRanges",
                          jobs=[es_job(PANDA_ID, f"{ES_PAYLOAD} --ms-per-event 30")])
    try:
        argv = [*pilot_argv(tmp_path, ["--server", server.url], [*PROTOCOL, "panda.call_deadline=4"]),
                "--walltime", "14"]
        result = run(argv, tmp_path, timeout=240)
        assert result.returncode == EXIT_OWED, (result.returncode, result.stderr[-3000:])
        assert "NOT acknowledged" in result.stdout and "panda-journal.sqlite" in result.stdout
        state = server.dump()
        report = summary(tmp_path)
        ranges = report["event_ranges"][str(PANDA_ID)]
        assert ranges.get("finished", 0) == 0 and ranges["owed"] > 0
        assert report["jobs"][0]["delivery"] == "owed" and report["pilot"]["owed"] > 0
        assert not [r for r in state["event_ranges"] if r["status"] in ("finished", "failed")]
        restart_without_faults(server)  # the operator's way out: deliver what the journal holds
        deliver = subprocess.run([sys.executable, "-m", "hpcpilot", "deliver", "--workdir", str(tmp_path / "work"),
                                  "--server", server.url, "--set", "panda.api=v1", "--deadline", "60"],
                                 capture_output=True, text=True, timeout=120)
        assert deliver.returncode == 0, deliver.stdout + deliver.stderr[-2000:]
        state = server.dump()
    finally:
        server.stop()
    counts = assert_accounted(state)
    assert counts.get("finished", 0) > 0 and state["jobs"][0]["status"] in ("failed", "finished")
