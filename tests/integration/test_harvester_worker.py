"""Harvester as production runs it, for real: `hpcpilot run` (one rank, or `mpiexec -n 3`) on an
access point that a Harvester-side driver (tests/fixtures/harvester_driver.py) feeds and consumes
while the pilot runs, with Harvester doing the stage-in and stage-out.

Each run checks the issue's promises from Harvester's side of the files: every job fed, at start
or on request, ran; every per-job file is where Harvester reads it for the worker's mapping;
every output, log and range appears exactly once across all the event_status files Harvester
took; outputs are declared in place (never copied), inputs are Harvester's; no request is left
open, kill_worker.json ends the worker; and no secret reached any file, archive, log or run.h5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.stageio import checksum
from tests.fixtures.harvester_driver import HarvesterDriver, files_holding
from tests.pilotrun import BIN, FAST, LAPTOP, REPO, make_job

SECRET = "pilot-secret-7Qx93kZ"
SECOND_SECRET = "job-secret-Ld81vW0p"
TOKEN = "eyJoYXJ2ZXN0ZXItdG9rZW4.c2VjcmV0LXBheWxvYWQ.sig4711"
ES_PAYLOAD = REPO / "examples" / "es_payload.py"


def _adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def _job(tmp: Path, panda_id: int, corrupt: bool = False) -> dict[str, Any]:
    """A job with one input that Harvester will place (written to its storage here) and one output."""
    name, data = f"EVNT.{panda_id}.pool.root", f"events of {panda_id}\n".encode() * 20
    storage = tmp / "storage"
    storage.mkdir(exist_ok=True)
    (storage / name).write_bytes(data.replace(b"events", b"EVENTS", 1) if corrupt else data)
    return make_job(panda_id, f"wc -l < {name} > out.{panda_id}.txt", [f"out.{panda_id}.txt"],
                    [(name, len(data), f"ad:{_adler(data)}")], pilotSecrets=json.dumps({"KEY": SECRET}),
                    secrets=json.dumps({"DB": SECOND_SECRET}))


def _env(tmp: Path) -> dict[str, str]:
    """An OIDC token in the environment, as a site might set it: the pilot must not spread it either."""
    auth = tmp / "auth"
    auth.mkdir(exist_ok=True)
    (auth / "token").write_text(TOKEN)
    return {**os.environ, "OIDC_AUTH_TOKEN": "token", "OIDC_AUTH_DIR": str(auth), "OIDC_AUTH_ORIGIN": "atlas"}


def _run(tmp: Path, driver: HarvesterDriver, ranks: int, settings: list[str], timeout: float = 150) -> Any:
    argv = [sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--harvester-dir", str(driver.ap),
            "--workdir", str(tmp / "work"), "--log-dir", str(tmp / "logs")]
    for setting in [*FAST, "stage.input_dir=", f"stage.output_dir={tmp / 'outputs'}", "harvester.stage=harvester",
                    "harvester.feed_timeout=3", "harvester.poll_interval=0.25", *driver.settings(), *settings]:
        argv += ["--set", setting]
    if ranks > 1:
        argv = [str(BIN / "mpiexec"), "-n", str(ranks), *argv]
    driver.start()
    try:
        result = subprocess.run(argv, cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=timeout)
    finally:
        driver.stop()
    assert result.returncode == 0, result.stderr[-4000:]
    assert not driver.errors, driver.errors
    (tmp / "logs" / "pilot.stdout").write_text(result.stdout + result.stderr)
    return result


def _summary(tmp: Path) -> dict[int, dict[str, Any]]:
    return {int(j["jobId"]): j for j in json.loads((tmp / "work" / "summary.json").read_text())["jobs"]}


def _entries(driver: HarvesterDriver) -> list[tuple[Path, int, dict[str, Any]]]:
    """(directory, PandaID, entry) for every entry of every event_status file Harvester took."""
    return [(directory, int(key), entry) for directory, content in driver.consumed()
            for key, items in content.items() for entry in items]


def _check_declared_in_place(entry: dict[str, Any], tmp: Path) -> None:
    path = Path(entry["path"])
    assert path.is_file() and path.is_relative_to(tmp / "work"), entry
    assert path.stat().st_size == entry["fsize"] and checksum.adler32(path) == entry["chksum"], entry
    assert len(entry["guid"]) == 36, entry


def _check_no_secrets(tmp: Path, driver: HarvesterDriver) -> None:
    """Nothing the pilot wrote holds a secret: Harvester's own job-spec files are the only ones allowed to."""
    spec_files = [d / driver.names["job_spec_file"] for d in driver.directories()]
    hits = files_holding([tmp / "work", driver.ap, tmp / "logs"], [SECRET, SECOND_SECRET, TOKEN], skip=spec_files)
    assert not hits, hits
    assert any(SECRET in p.read_text() for p in spec_files if p.exists())  # the scan would have seen it


CASES = [pytest.param(ranks, multi, fmt, id=f"{ranks}rank-{'multijobs' if multi else 'onejob'}-{fmt}",
                      marks=[pytest.mark.mpi] if ranks > 1 else [])
         for ranks in (1, 3) for multi in (False, True) for fmt in ("json", "cgi")]


@pytest.mark.parametrize(("ranks", "multi", "fmt"), CASES)
def test_worker_runs_what_harvester_feeds_and_hands_it_back_once(tmp_path: Path, ranks: int, multi: bool,
                                                                  fmt: str) -> None:
    # cgi workers use a queue's own file names and inFilePaths; json workers the defaults and the catalog
    names = {"job_spec_file": "pandaJobData.out", "event_status_file": "jobOutputs.json",
             "attributes_file": "attrs.json", "job_request_file": "requestJob.json"} if fmt == "cgi" else {}
    driver = HarvesterDriver(tmp_path / "ap", fmt=fmt, multi=multi, storage=tmp_path / "storage",
                             placement="inFilePaths" if fmt == "cgi" else "catalog", names=names, seed=ranks)
    first = [_job(tmp_path, 100 + n) for n in range(3 if multi else 1)]
    driver.late_jobs = [_job(tmp_path, 200 + n) for n in range(2 if multi else 1)]
    late_ids = [j["PandaID"] for j in driver.late_jobs]
    driver.feed_jobs(first)
    _run(tmp_path, driver, ranks, [])

    jobs = _summary(tmp_path)
    assert sorted(jobs) == sorted(driver.fed) == sorted([j["PandaID"] for j in first] + late_ids)
    assert {j["state"] for j in jobs.values()} == {"finished"}, jobs
    assert driver.job_requests and all(n >= 1 for n in driver.job_requests)
    assert driver.kill_requested()
    for request in (driver.names["job_request_file"], driver.names["events_request_file"]):
        assert not list(driver.ap.rglob(request)), request  # fed, or withdrawn when the pilot ended
    assert not (tmp_path / "outputs").exists()  # declared in place, never copied

    attributes_name = driver.names["attributes_file"]
    for panda_id in jobs:
        job_dir = driver.job_dir(panda_id)
        if multi:  # one directory per job: its attributes and report stay there
            attributes = json.loads((job_dir / attributes_name).read_text())
            assert attributes["jobStatus"] == "finished" and "xml" not in attributes
            assert (job_dir / driver.names["job_report_file"]).is_file()
        workdir = tmp_path / "work" / "jobs" / f"rank{jobs[panda_id]['rank']}" / f"PandaJob_{panda_id}"
        link = workdir / f"EVNT.{panda_id}.pool.root"  # the input Harvester placed, where it says it is
        placed = job_dir / link.name if fmt == "cgi" else tmp_path / "storage" / link.name
        assert link.is_symlink() and os.readlink(link) == str(placed)
    if multi:
        assert not (driver.ap / attributes_name).exists() and not (driver.ap / driver.names["job_spec_file"]).exists()
    else:
        assert json.loads((driver.ap / attributes_name).read_text())["jobStatus"] == "finished"

    seen: defaultdict[int, Counter[str]] = defaultdict(Counter)
    for directory, panda_id, entry in _entries(driver):
        assert directory == driver.job_dir(panda_id), (directory, panda_id)
        seen[panda_id][entry["type"]] += 1
        _check_declared_in_place(entry, tmp_path)
        if entry["type"] == "log":
            assert entry["guid"] == f"00000000-0000-4000-8000-{panda_id:012d}"
    assert seen == {panda_id: Counter({"output": 1, "log": 1}) for panda_id in jobs}
    _check_no_secrets(tmp_path, driver)


def test_placed_inputs_are_checked_and_a_corrupted_one_fails_the_job(tmp_path: Path) -> None:
    driver = HarvesterDriver(tmp_path / "ap", multi=True, storage=tmp_path / "storage")
    driver.feed_jobs([_job(tmp_path, 301), _job(tmp_path, 302, corrupt=True)])
    _run(tmp_path, driver, 1, ["harvester.feed_timeout=0"])
    jobs = _summary(tmp_path)
    assert jobs[301]["state"] == "finished"
    assert (tmp_path / "work" / "jobs" / "rank0" / "PandaJob_301" / "out.301.txt").read_text().strip() == "20"
    assert jobs[302]["state"] == "failed" and jobs[302]["pilotErrorCode"] == 1171, jobs[302]
    assert "EVNT.302.pool.root" in jobs[302]["pilotErrorDiag"]
    assert not driver.job_requests and not list(driver.ap.rglob(driver.names["job_request_file"]))
    assert driver.kill_requested()
    types = Counter((panda_id, entry["type"]) for _d, panda_id, entry in _entries(driver))
    assert types == {(301, "output"): 1, (301, "log"): 1}  # a job that failed its stage-in has nothing to hand over
    _check_no_secrets(tmp_path, driver)


@pytest.mark.mpi
def test_500_ranges_fed_on_request_and_consumed_at_random_moments(tmp_path: Path) -> None:
    panda_id, total = 9300, 500
    job = make_job(panda_id, "unused", eventService="True", pilotSecrets=json.dumps({"KEY": SECRET}))
    job["transformation"], job["jobPars"] = sys.executable, f"{ES_PAYLOAD} --ms-per-event 1 --output-bytes 64"
    ranges = [{"eventRangeID": f"1-{panda_id}-1-{i}-1", "startEvent": i, "lastEvent": i, "LFN": "EVNT.es.root",
               "GUID": "G-es", "scope": "test"} for i in range(1, total + 1)]
    driver = HarvesterDriver(tmp_path / "ap", seed=500)
    driver.feed_jobs([job])
    driver.feed_events(driver.ap, {str(panda_id): ranges[:60]})
    driver.ranges[panda_id] = ranges[60:]
    _run(tmp_path, driver, 3, ["eventservice.payload_mode=protocol", "eventservice.bundle_events=25",
                               "eventservice.report_interval=0.3", "eventservice.prefetch_seconds=2",
                               "eventservice.ranges_per_request=4"], timeout=240)

    job_record = _summary(tmp_path)[panda_id]
    assert job_record["state"] == "finished" and job_record["nEvents"] == total
    entries = [entry for _d, _p, entry in _entries(driver)]
    by_range = Counter(e["eventRangeID"] for e in entries if "eventRangeID" in e)
    assert by_range == Counter(r["eventRangeID"] for r in ranges)  # every range exactly once
    assert {e["eventStatus"] for e in entries} == {"finished"}
    zips: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["type"] == "zip_output":
            zips[entry["path"]].append(entry)
    assert sum(len(members) for members in zips.values()) == total
    for path, members in zips.items():
        assert len({m["guid"] for m in members}) == 1 and len(members[0]["guid"]) == 36  # one GUID per zip
        _check_declared_in_place(members[0], tmp_path)
        with zipfile.ZipFile(path) as archive:
            assert len(archive.namelist()) == len(members)
    assert [e["type"] for e in entries if "eventRangeID" not in e] == ["log"]  # the job's log, once

    assert len(driver.range_requests) >= 2 and driver.ranges[panda_id] == []  # fed on request, all of them
    taken = list(driver.ap.glob(driver.names["event_ranges_file"] + ".taken.*"))
    assert len(taken) == driver.range_feeds  # every feed moved aside once it was read, none left behind
    assert not (driver.ap / driver.names["event_ranges_file"]).exists()
    assert driver.kill_requested()
    _check_no_secrets(tmp_path, driver)
