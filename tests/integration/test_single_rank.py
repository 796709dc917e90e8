"""The single-rank pilot end to end: real `hpcpilot run` processes, real payloads, real files.

Each test provokes its error code for real (a payload that allocates, loops, ignores
SIGTERM; a corrupted input; a pilot that is signalled) and checks the final record in
summary.json and the Harvester files.
"""

from __future__ import annotations

import json
import os
import signal
import zlib
from pathlib import Path

import pytest

from hpcpilot.cgroups import detect
from tests.pilotrun import (
    finish,
    make_access_point,
    make_job,
    processes_with,
    run_pilot,
    start_pilot,
    wait_for,
)


def _input(tmp: Path, name: str, text: str) -> tuple[str, int, str]:
    (tmp / "inputs").mkdir(exist_ok=True)
    data = text.encode()
    (tmp / "inputs" / name).write_bytes(data)
    return name, len(data), f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def test_jobs_finish_with_stage_out_and_harvester_files(tmp_path: Path) -> None:
    inp = _input(tmp_path, "EVNT.in.1", "event\n" * 100)
    jobs = [
        make_job(11, "wc -l < EVNT.in.1 > out.11.txt", ["out.11.txt"], [inp]),
        make_job(12, "echo twelve > out.12.txt", ["out.12.txt"]),
    ]
    run = run_pilot(tmp_path, jobs)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 finished, 0 failed" in run.stdout
    for panda_id, out in ((11, "out.11.txt"), (12, "out.12.txt")):
        record = run.jobs[panda_id]
        assert record["state"] == "finished" and record["pilotErrorCode"] == 0
        assert record["rank"] == 0 and record["transExitCode"] == 0
        report = record["xml"]
        assert set(report) == {out, f"log.{panda_id}.tgz"}
        staged = tmp_path / "outputs" / out
        assert report[out]["fsize"] == staged.stat().st_size
        assert report[out]["adler32"] == f"{zlib.adler32(staged.read_bytes()) & 0xFFFFFFFF:08x}"
        assert len(report[out]["guid"]) == 36
        assert report[f"log.{panda_id}.tgz"]["guid"] == f"00000000-0000-4000-8000-{panda_id:012d}"
        assert len(record["pilotTiming"].split("|")) == 6
    assert (tmp_path / "outputs" / "out.11.txt").read_text().strip() == "100"
    access_point = tmp_path / "access_point"
    attributes = json.loads((access_point / "11" / "worker_attributes.json").read_text())
    assert attributes["jobStatus"] == "finished"
    dump = json.loads((access_point / "11" / "event_status.dump.json").read_text())  # per job: several jobs
    assert {e["type"] for e in dump["11"]} == {"output", "log"}
    assert (access_point / "worker_heartbeat.json").exists()
    workdir = tmp_path / "work" / "jobs" / "rank0" / "PandaJob_11"
    assert json.loads((workdir / "pandaJob.json").read_text())["PandaID"] == 11
    assert "wc -l" in (workdir / "job_setup.sh").read_text()
    header = (workdir / "memory_monitor_output.txt").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["Time", "nprocs", "nthreads"]


def test_input_checksum_mismatch_fails_the_job_and_the_pilot_goes_on(tmp_path: Path) -> None:
    name, size, _ = _input(tmp_path, "EVNT.bad.1", "corrupted on the way\n")
    jobs = [make_job(21, "cat EVNT.bad.1 > o.txt", ["o.txt"], [(name, size, "ad:0badc0de")]),
            make_job(22, "echo ok > o22.txt", ["o22.txt"])]
    run = run_pilot(tmp_path, jobs)
    assert run.returncode == 0
    assert run.jobs[21]["pilotErrorCode"] == 1171 and run.jobs[21]["state"] == "failed"
    assert "0badc0de" in run.jobs[21]["pilotErrorDiag"]
    assert run.jobs[22]["state"] == "finished"


def test_memory_over_the_limit_is_killed_by_rank_zero(tmp_path: Path) -> None:
    hog = ("python3 -c 'import time; b = bytearray(300 * 1024 * 1024); "
           "b[::4096] = b\"x\" * len(b[::4096]); time.sleep(60)'")
    run = run_pilot(tmp_path, [make_job(31, hog, ["never.txt"], minRamCount=50)],
                    settings=["monitor.rss_grace_percent=0", "monitor.use_cgroup=false"])
    record = run.jobs[31]
    assert record["pilotErrorCode"] == 1235, record
    assert "limit" in record["pilotErrorDiag"]
    assert record["maxPSS"] > 50 * 1024


def _memory_cgroup_usable() -> bool:
    location = detect()
    return os.geteuid() == 0 and location is not None and location.memory


@pytest.mark.skipif(not _memory_cgroup_usable(), reason="needs root and a cgroup memory controller")
def test_memory_over_the_limit_is_stopped_by_the_payload_cgroup(tmp_path: Path) -> None:
    hog = "python3 -c 'b = bytearray(400 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096])'"
    run = run_pilot(tmp_path, [make_job(32, hog, ["never.txt"], minRamCount=100)],
                    settings=["monitor.rss_grace_percent=0", "monitor.report_interval=5"])
    assert run.jobs[32]["pilotErrorCode"] == 1235, run.jobs[32]


def test_looping_job_is_killed(tmp_path: Path) -> None:
    run = run_pilot(tmp_path, [make_job(41, "sleep 77.41", ["never.txt"])],
                    settings=["monitor.looping_limit=3"])
    assert run.jobs[41]["pilotErrorCode"] == 1150
    assert not processes_with("77.41")


def test_looping_check_off_for_the_job(tmp_path: Path) -> None:
    job = make_job(42, "sleep 4; echo done > o42.txt", ["o42.txt"], loopingCheck="False")
    run = run_pilot(tmp_path, [job], settings=["monitor.looping_limit=1"])
    assert run.jobs[42]["state"] == "finished"


def test_children_ignoring_sigterm_are_all_gone(tmp_path: Path) -> None:
    payload = "trap '' TERM; sleep 88.51 & sleep 88.52 & sh -c 'trap \"\" TERM; sleep 88.53' & wait"
    run = run_pilot(tmp_path, [make_job(51, payload, ["never.txt"])], settings=["monitor.looping_limit=2"])
    assert run.jobs[51]["pilotErrorCode"] == 1150
    assert not processes_with("88.5")


def test_walltime_reached(tmp_path: Path) -> None:
    run = run_pilot(tmp_path, [make_job(61, "sleep 99.61", ["never.txt"])], extra=["--walltime", "6"], timeout=60)
    assert run.returncode == 0
    assert run.jobs[61]["pilotErrorCode"] == 1213
    elapsed = run.summary["pilot"]["end"] - run.summary["pilot"]["start"]
    assert elapsed < 6
    assert not processes_with("99.61")


def test_sigterm_to_the_pilot_mid_payload(tmp_path: Path) -> None:
    access_point = make_access_point(tmp_path / "access_point",
                                     [make_job(71, "sleep 66.71", ["never.txt"]), make_job(72, "true", [])])
    proc = start_pilot(tmp_path, access_point)
    assert wait_for(lambda: processes_with("66.71"), timeout=30)
    proc.send_signal(signal.SIGTERM)
    run = finish(proc, tmp_path)
    assert run.returncode == 128 + signal.SIGTERM
    assert run.jobs[71]["pilotErrorCode"] == 1201
    assert run.jobs[72]["pilotErrorCode"] == 1201 and "not started" in run.jobs[72]["pilotErrorDiag"]
    assert json.loads((access_point / "71" / "worker_attributes.json").read_text())["jobStatus"] == "failed"
    assert not processes_with("66.71")


@pytest.mark.parametrize(("job", "code"), [
    (make_job(81, "true", ["a.txt"], fsize="12,13", inFiles="x.1", checksum="ad:00000001"), 1312),
    (make_job(82, "true", ["a.txt"], inFiles="x.1", fsize="big", checksum="ad:00000001"), 1302),
    (make_job(83, "true", ["../escape.txt"]), 1371),
    (make_job(84, "true", ["a" * 256]), 1190),
    (make_job(85, "true", [], transformation="NULL"), 1346),
    (make_job(86, "true", [], inFiles="missing.1", fsize="1", checksum="ad:00000001"), 1099),
    (make_job(87, "true", [], inFiles="in.87", fsize="3", checksum="sha9:abc"), 1314),
    (make_job(88, "exit 3", []), 1305),
    (make_job(89, "exit 251", []), 1315),
    (make_job(90, "true", ["not-made.txt"]), 1165),
    (make_job(91, ": > empty.txt", ["empty.txt"]), 1191),
])
def test_bad_jobs_fail_with_their_code_and_the_pilot_goes_on(tmp_path: Path, job: dict, code: int) -> None:
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "in.87").write_text("abc")
    good = make_job(99, "echo fine > fine.txt", ["fine.txt"])
    run = run_pilot(tmp_path, [job, good])
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.jobs[job["PandaID"]]["pilotErrorCode"] == code, run.jobs[job["PandaID"]]
    assert run.jobs[99]["state"] == "finished"
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "outputs" / ".." / "escape.txt").exists()


def test_job_without_panda_id_is_rejected(tmp_path: Path) -> None:
    access_point = tmp_path / "ap"
    access_point.mkdir()
    good = make_job(5, "echo ok > ok.txt", ["ok.txt"])
    (access_point / "HPCJobs.json").write_text(json.dumps({"bogus": {"transformation": "true"}, "5": good}))
    run = finish(start_pilot(tmp_path, access_point), tmp_path)
    assert run.returncode == 0
    assert run.jobs[5]["state"] == "finished"
    assert any(j["pilotErrorCode"] == 1302 for j in run.summary["jobs"] if j["jobId"] == 0)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_malformed_access_point_is_one_line(tmp_path: Path, content: str) -> None:
    access_point = tmp_path / "ap"
    access_point.mkdir()
    (access_point / "HPCJobs.json").write_text(content)
    run = finish(start_pilot(tmp_path, access_point), tmp_path)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("hpcpilot: ") and "HPCJobs.json" in last and "Traceback" not in run.stderr


def test_bad_site_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[monitor]\nlooping_limit = 'soon'\n")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hpcpilot", "check-config", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hpcpilot: {bad}: key 'monitor.looping_limit': expected a number, got 'soon'"


@pytest.mark.parametrize(("command", "outputs", "settings", "code"), [
    ("head -c 300000 /dev/zero | tr '\\0' x; sleep 30", [], ["monitor.stdout_limit_kb=100"], 1106),
    ("head -c 3000000 /dev/urandom > blob.bin; sleep 30", [], ["monitor.max_workdir_mb=1",
                                                                "monitor.workdir_grace_percent=0"], 1104),
    ("head -c 3000000 /dev/urandom > big.out; sleep 30", ["big.out"], ["monitor.max_output_file_mb=1"], 1124),
    ("sleep 30", [], ["monitor.free_space_running_mb=1000000000"], 1098),
])
def test_running_limits_measured_for_real(tmp_path: Path, command: str, outputs: list[str], settings: list[str],
                                          code: int) -> None:
    run = run_pilot(tmp_path, [make_job(95, command, outputs)], settings=settings)
    assert run.jobs[95]["pilotErrorCode"] == code, run.jobs[95]
