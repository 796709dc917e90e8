"""2,000 fuzzed job definitions through the PanDA test server, the real client, the journaled source and
the job-definition parser, on both APIs; and a restart on a journal full of bad definitions (issue 12).

Rank 0's part of the job flow, without payloads: lease (journaled), parse, report each job exactly
once (refused ones with the parser's code).  The whole pilot under mpiexec runs a smaller set
(tests/mpi/test_mpi_jobdef_fuzz.py): payloads make it ~10x slower per job.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.panda.source import PandaSource
from hpcpilot.records import JobRecord, JobSpec, panda_id_of
from hpcpilot.states import JobState
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import NODE, panda_config, release_for
from tests.jobfuzz import FINAL, final_updates, mutated_jobs, refusal

N_JOBS = 2000
SEED = 2000
CODES = {int(code) for code in ErrorCode}


def _source(url: str, workdir: Path, api: str) -> PandaSource:
    config = panda_config(url, api, jobs_per_fetch=200, read_timeout=10.0, call_deadline=30.0)
    return PandaSource(config, workdir, NODE, fetch_deadline=30.0, close_deadline=60.0)


def _record(wire: Any) -> JobRecord:
    """What rank 0 reports for a leased definition (``Controller.fetch``): refused, or here 'finished'."""
    try:
        spec = JobSpec.from_wire(wire)
    except PilotError as exc:
        record = JobRecord(panda_id_of(wire))
        record.fail(exc.code, exc.diag)
        return record
    return JobRecord(spec.panda_id, state=JobState.FINISHED, attempt_nr=spec.attempt_nr)


def _drain(source: PandaSource) -> list[Any]:
    """Lease until the server has nothing left, reporting every job at once; the definitions leased."""
    leased: list[Any] = []
    for _ in range(200):
        batch = source.fetch_jobs(200)
        if not batch.leased and batch.status >= 0 and leased:
            break
        for wire in batch.leased:
            leased.append(wire)
            source.update_job(_record(wire), final=True)
    assert source.flush(120), "every update acknowledged"
    return leased


def _server(tmp_path: Path, jobs: list[dict[str, Any]], release: str = "1.0") -> PandaTestServer:
    server = PandaTestServer(tmp_path / "state.sqlite", release=release).start()
    server.load_jobs(jobs)
    return server


def _assert_reported_once(server: PandaTestServer, expected: dict[int, int | None]) -> Counter[str]:
    state = {job["PandaID"]: job for job in server.dump()["jobs"]}
    assert sorted(state) == sorted(expected)
    finals = final_updates(server)
    outcomes: Counter[str] = Counter()
    for panda_id, code in expected.items():
        job = state[panda_id]
        assert sum(s in FINAL for s in job["states"]) == 1 and finals[panda_id] == 1, job
        if code is None:
            assert job["status"] == "finished", job
        else:
            assert (job["status"], job["pilotErrorCode"]) == ("failed", code), job
            assert int(code) in CODES and len(job["pilotErrorDiag"].splitlines()) == 1, job
        outcomes[job["status"] if code is None else str(code)] += 1
    return outcomes


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, bad[0].getMessage()[:2000]


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_two_thousand_fuzzed_definitions_each_reported_once(tmp_path: Path, api: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    jobs = mutated_jobs(N_JOBS, SEED + (api == "legacy"))
    expected = {int(str(job["PandaID"]).strip()): refusal(job) for job in jobs}
    server = _server(tmp_path, jobs, release_for(api))
    try:
        source = _source(server.url, tmp_path / "work", api)
        try:
            leased = _drain(source)
        finally:
            source.close()
        assert len(leased) == N_JOBS
        outcomes = _assert_reported_once(server, expected)
    finally:
        server.close()
    assert outcomes["finished"] >= N_JOBS // 10 and len(outcomes) >= 4, outcomes  # the fuzz bites, and not always
    _no_tracebacks(caplog)


def test_restart_on_a_journal_of_bad_definitions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pilot that died with fuzzed definitions leased: the next one on the workdir reports them failed
    (1200, pilot restarted) once each, and leases and reports the rest as usual."""
    caplog.set_level(logging.INFO)
    jobs = mutated_jobs(300, SEED + 7, clean_share=0.0)
    for i, job in enumerate(jobs[:40]):  # the definitions that crashed the recovery
        job["attemptNr"] = [{"nested": 0}, [], "\u0661", "1_000", "x\0"][i % 5]
    expected = {int(str(job["PandaID"]).strip()): refusal(job) for job in jobs}
    server = _server(tmp_path, jobs)
    try:
        dead = _source(server.url, tmp_path / "work", "v1")
        in_flight = dead.fetch_jobs(100).leased  # leased and journaled; then the pilot "dies" without a word
        dead.close()
        assert len(in_flight) == 100
        for wire in in_flight:
            expected[panda_id_of(wire)] = int(ErrorCode.KILLSIGNAL)
        source = _source(server.url, tmp_path / "work", "v1")
        try:
            leased = _drain(source)
        finally:
            source.close()
        assert len(leased) == len(jobs) - len(in_flight)
        _assert_reported_once(server, expected)
        dead_ids = {panda_id_of(wire) for wire in in_flight}
        assert all("pilot restarted" in j["pilotErrorDiag"] for j in server.dump()["jobs"] if j["PandaID"] in dead_ids)
    finally:
        server.close()
    _no_tracebacks(caplog)
