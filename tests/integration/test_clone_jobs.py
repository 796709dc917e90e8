"""Clone jobs (issue 16 item 3; seeds 004 steps 10a and 16, panda-wire C.5) end to end: real single-rank
pilots (`hpcpilot run --server`, one job each) against one PanDA test server on loopback, real payload
scripts, and assertions on what the server received.

Two clones of one jobset share one event range: the clone the server hands it to goes on, the other ends
failed with EXECUTEDCLONEJOB 1234 -- without running its payload (runonce) or without staging anything
out (storeonce).  A malformed ``cloneJob`` is refused with its code while the next job runs; a server
that cannot answer the claim fails the clone with a retryable code instead of guessing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.panda import wire
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import release_for
from tests.pilotrun import FAST, LAPTOP, make_job, run_pilot

OUTPUT = "clone.out.txt"
PILOT_TIMEOUT = 120


def clone_job(panda_id: int, mode: str, marks: Path, jobset: int, output: str = OUTPUT) -> dict[str, Any]:
    """A clone whose payload leaves ``marks/ran.<PandaID>`` behind and writes ``output``."""
    return make_job(panda_id, f"echo {panda_id} > {output}; touch {marks}/ran.{panda_id}", [output],
                    jobsetID=jobset, cloneJob=mode)


def pilot_argv(url: str, home: Path, api: str = "v1", max_jobs: int | None = 1,
               settings: Sequence[str] = (), launcher: Sequence[str] = ()) -> list[str]:
    """`hpcpilot run --server` in ``home`` (its own workdir and output directory)."""
    argv = [*launcher, sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--server", url,
            "--queue", "TESTQ", "--workdir", str(home / "work")]
    if max_jobs is not None:
        argv += ["--max-jobs", str(max_jobs)]
    for setting in [*FAST, f"stage.output_dir={home / 'out'}", f"panda.api={api}", *settings]:
        argv += ["--set", setting]
    return argv


def run_pilots(argvs: list[tuple[list[str], Path]]) -> None:
    """Start every pilot at once (so the clones race for the range), then wait for all of them."""
    procs = []
    for argv, home in argvs:
        home.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(argv, cwd=home, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        _out, err = proc.communicate(timeout=PILOT_TIMEOUT)
        assert proc.returncode == 0, err[-3000:]


def server_state(server: PandaTestServer) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    dump = server.dump()
    return {job["PandaID"]: job for job in dump["jobs"]}, dump["event_ranges"]


def ran(marks: Path) -> set[int]:
    return {int(path.name.split(".")[1]) for path in marks.glob("ran.*")}


def staged(home: Path) -> set[str]:
    out = home / "out"
    return {path.name for path in out.iterdir()} if out.is_dir() else set()


def assert_lost(job: dict[str, Any], mode: str) -> None:
    """The losing clone: failed with 1234 and a one-line diagnostic, nothing reported as staged out."""
    assert (job["status"], job["pilotErrorCode"]) == ("failed", 1234), job
    assert f"another clone of this {mode} job" in job["pilotErrorDiag"]
    assert len(job["pilotErrorDiag"].splitlines()) == 1
    assert "output_report" not in job, job


def assert_one_range_to(ranges: list[dict[str, Any]], winner: int) -> None:
    """The jobset's one range went to the winner (its ID names it) and ended with it."""
    assert len(ranges) == 1, ranges
    assert ranges[0]["PandaID"] == winner and ranges[0]["eventRangeID"].split("-")[1] == str(winner), ranges
    assert ranges[0]["status"] == "finished", ranges


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_two_pilots_runonce_clones_only_one_runs(tmp_path: Path, api: str) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with PandaTestServer(tmp_path / "state.sqlite", release=release_for(api)).start() as server:
        server.load_jobs([clone_job(1701, "runonce", marks, 1700), clone_job(1702, "runonce", marks, 1700)])
        homes = [tmp_path / "pilotA", tmp_path / "pilotB"]
        run_pilots([(pilot_argv(server.url, home, api), home) for home in homes])
        jobs, ranges = server_state(server)
    assert len(ran(marks)) == 1, "exactly one clone ran its payload"
    winner = ran(marks).pop()
    loser = ({1701, 1702} - {winner}).pop()
    assert jobs[winner]["status"] == "finished", jobs[winner]
    assert set(jobs[winner]["output_report"]) == {OUTPUT, f"log.{winner}.tgz"}
    assert_lost(jobs[loser], "runonce")
    assert_one_range_to(ranges, winner)
    outputs = [staged(home) for home in homes]
    assert sorted(outputs, key=len) == [set(), {OUTPUT, f"log.{winner}.tgz"}]  # the loser staged nothing


def test_two_pilots_storeonce_clones_both_run_only_one_stores(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with PandaTestServer(tmp_path / "state.sqlite").start() as server:
        server.load_jobs([clone_job(1703, "storeonce", marks, 1702), clone_job(1704, "storeonce", marks, 1702)])
        homes = [tmp_path / "pilotA", tmp_path / "pilotB"]
        run_pilots([(pilot_argv(server.url, home), home) for home in homes])
        jobs, ranges = server_state(server)
    assert ran(marks) == {1703, 1704}, "both clones ran their payload"
    finished = [pid for pid, job in jobs.items() if job["status"] == "finished"]
    assert len(finished) == 1, jobs
    winner = finished[0]
    loser = ({1703, 1704} - {winner}).pop()
    assert_lost(jobs[loser], "storeonce")
    assert jobs[loser]["transExitCode"] == 0  # its payload ran and succeeded; only the stage-out was skipped
    assert_one_range_to(ranges, winner)
    outputs = [staged(home) for home in homes]
    assert sorted(outputs, key=len) == [set(), {OUTPUT, f"log.{winner}.tgz"}]


def test_a_malformed_clone_job_is_refused_and_the_next_job_runs(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with PandaTestServer(tmp_path / "state.sqlite").start() as server:
        server.load_jobs([clone_job(1705, "twice", marks, 1705), clone_job(1706, "", marks, 1706)])
        home = tmp_path / "pilot"
        run_pilots([(pilot_argv(server.url, home, max_jobs=None), home)])
        jobs, ranges = server_state(server)
        asked = server.requests(wire.GET_EVENT_RANGES)
    refused = jobs[1705]
    assert (refused["status"], refused["pilotErrorCode"]) == ("failed", 1302), refused
    assert refused["pilotErrorDiag"] == "field cloneJob is neither runonce nor storeonce: 'twice'"
    assert jobs[1706]["status"] == "finished", jobs[1706]
    assert ran(marks) == {1706}
    assert ranges == []  # neither is a clone: no range was made or asked for
    assert asked == []


def test_a_server_that_cannot_answer_the_claim_fails_the_clone_retryably(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with PandaTestServer(tmp_path / "state.sqlite").start() as server:
        server.load_jobs([clone_job(1707, "runonce", marks, 1707)])
        server.set_fault("500", None, method=wire.GET_EVENT_RANGES)
        home = tmp_path / "pilot"
        fast_panda = ["panda.call_deadline=1", "panda.retry_initial=0.05", "panda.retry_max=0.1",
                      "panda.read_timeout=0.5"]
        run_pilots([(pilot_argv(server.url, home, settings=fast_panda), home)])
        jobs, _ranges = server_state(server)
        asked = server.requests(wire.GET_EVENT_RANGES)
    job = jobs[1707]
    assert (job["status"], job["pilotErrorCode"]) == ("failed", 1318), job  # COMMUNICATIONFAILURE: PanDA retries
    assert job["pilotErrorDiag"].startswith("cannot ask the job source whether this clone may go on")
    assert ran(marks) == set(), "an unanswered claim does not run the payload"
    assert len(asked) >= 3, "the claim was retried"  # CLONE_TRIES tries (each may retry within its deadline)


def test_summary_of_a_lost_clone(tmp_path: Path) -> None:
    """The pilot itself ends normally after a lost clone, and its summary carries the code."""
    marks = tmp_path / "marks"
    marks.mkdir()
    with PandaTestServer(tmp_path / "state.sqlite").start() as server:
        server.load_jobs([clone_job(1708, "runonce", marks, 1708), clone_job(1709, "runonce", marks, 1708),
                          clone_job(1710, "", marks, 1710)])
        home = tmp_path / "pilot"
        run_pilots([(pilot_argv(server.url, home, max_jobs=None), home)])
        jobs, _ranges = server_state(server)
    summary = json.loads((home / "work" / "summary.json").read_text())
    codes = sorted(job.get("pilotErrorCode", 0) for job in summary["jobs"])
    assert codes == [0, 0, 1234], summary["jobs"]
    assert ran(marks) == {1708, 1710}  # one pilot, clones in turn: the first took the range
    assert jobs[1709]["pilotErrorCode"] == 1234 and jobs[1710]["status"] == "finished"


def test_under_harvester_every_clone_goes_on(tmp_path: Path) -> None:
    """An access point does not coordinate clones: both run and store (a duplicate costs CPU; a wrong
    'another clone won' would lose the job), and no range is asked of Harvester for them."""
    marks = tmp_path / "marks"
    marks.mkdir()
    jobs = [clone_job(1711, "runonce", marks, 1711, "a.txt"), clone_job(1712, "storeonce", marks, 1711, "b.txt")]
    run = run_pilot(tmp_path, jobs)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {pid: job["state"] for pid, job in run.jobs.items()} == {1711: "finished", 1712: "finished"}
    assert ran(marks) == {1711, 1712}
    assert {"a.txt", "b.txt"} <= {path.name for path in (tmp_path / "outputs").iterdir()}
    assert not list((tmp_path / "access_point").rglob("worker_requestevents.json"))
