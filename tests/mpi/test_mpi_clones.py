"""Clone jobs through the MPI path: one pilot, two worker ranks under mpiexec, against the PanDA test server
on loopback.  The clones of a runonce and of a storeonce job set run on the worker ranks, each claim goes
through rank 0: one runonce clone runs its payload and the other ends 1234; both storeonce clones run and
only one stores; a malformed cloneJob is refused with its code while the other jobs run."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcpilot_serve.server import PandaTestServer
from tests.integration.test_clone_jobs import assert_lost, clone_job, pilot_argv, ran, run_pilots, staged
from tests.pilotrun import BIN

pytestmark = pytest.mark.mpi


def test_clones_on_two_worker_ranks(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    once, store = "once.out.txt", "store.out.txt"
    jobs = [clone_job(1720, "runonce", marks, 1720, once), clone_job(1721, "runonce", marks, 1720, once),
            clone_job(1722, "storeonce", marks, 1722, store), clone_job(1723, "storeonce", marks, 1722, store),
            clone_job(1724, "both", marks, 1724)]
    with PandaTestServer(tmp_path / "state.sqlite").start() as server:
        server.load_jobs(jobs)
        home = tmp_path / "pilot"
        run_pilots([(pilot_argv(server.url, home, max_jobs=None, launcher=[str(BIN / "mpiexec"), "-n", "3"]), home)])
        dump = server.dump()
    state = {job["PandaID"]: job for job in dump["jobs"]}
    assert len(ran(marks) & {1720, 1721}) == 1, "one runonce clone ran"
    assert ran(marks) >= {1722, 1723}, "both storeonce clones ran"
    once_winner = (ran(marks) & {1720, 1721}).pop()
    assert_lost(state[({1720, 1721} - {once_winner}).pop()], "runonce")
    store_finished = [pid for pid in (1722, 1723) if state[pid]["status"] == "finished"]
    assert len(store_finished) == 1, state
    assert_lost(state[({1722, 1723} - set(store_finished)).pop()], "storeonce")
    assert state[once_winner]["status"] == "finished"
    assert (state[1724]["status"], state[1724]["pilotErrorCode"]) == ("failed", 1302)
    assert staged(home) == {once, store, f"log.{once_winner}.tgz", f"log.{store_finished[0]}.tgz"}
    by_id = {r["eventRangeID"].split("-")[1]: r["status"] for r in dump["event_ranges"]}
    assert by_id == {str(once_winner): "finished", str(store_finished[0]): "finished"}
