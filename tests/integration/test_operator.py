"""What an operator sees of a real pilot: exit statuses of wind-downs, commands that fail in one line."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcpilot import __version__
from hpcpilot.cgroups import detect
from hpcpilot.config import load_config
from hpcpilot.errors import EXIT_OK, ErrorCode
from hpcpilot.panda import wire
from hpcpilot.report import event_times, load_run, rank_timeline, summarize
from hpcpilot_serve.server import PandaTestServer
from tests.fixtures.panda.panda_helpers import release_for
from tests.pilotrun import (
    FAST,
    LAPTOP,
    REPO,
    default_sigint,
    finish,
    make_access_point,
    make_job,
    pilot_argv,
    processes_with,
    run_pilot,
    start_pilot,
    wait_for,
)

HPCPILOT = [sys.executable, "-m", "hpcpilot"]


def _log_has(tmp: Path, text: str) -> bool:
    log = tmp / "logs" / "pilot.rank0.log"
    return log.exists() and text in log.read_text(errors="replace")


def test_warning_signal_wind_down_exits_0(tmp_path: Path) -> None:
    access_point = make_access_point(tmp_path / "access_point",
                                     [make_job(1101, "sleep 66.1101", ["never.txt"]), make_job(1102, "true")])
    proc = start_pilot(tmp_path, access_point, extra=["--log-dir", str(tmp_path / "logs")])
    assert wait_for(lambda: processes_with("66.1101"), timeout=30)
    proc.send_signal(signal.SIGUSR1)
    run = finish(proc, tmp_path)
    assert run.returncode == EXIT_OK, run.stderr[-3000:]
    assert run.jobs[1101]["pilotErrorCode"] == int(ErrorCode.SIGUSR1)
    assert run.jobs[1102]["pilotErrorCode"] == int(ErrorCode.SIGUSR1)
    assert run.summary["pilot"]["signal"] == "SIGUSR1"
    assert not processes_with("66.1101")


def test_sigterm_during_the_warning_wind_down_exits_128_plus_15(tmp_path: Path) -> None:
    # the payload ignores TERM, so the orderly wind-down waits out kill_grace: TERM lands during it
    payload = "trap '' TERM; sleep 66.1201 & wait; wait"
    access_point = make_access_point(tmp_path / "access_point", [make_job(1201, payload, ["never.txt"])])
    proc = start_pilot(tmp_path, access_point, settings=["monitor.kill_grace=8"],
                       extra=["--log-dir", str(tmp_path / "logs")])
    assert wait_for(lambda: processes_with("66.1201"), timeout=30)
    proc.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: _log_has(tmp_path, "received SIGUSR1"), timeout=30)
    proc.send_signal(signal.SIGTERM)
    run = finish(proc, tmp_path)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-3000:]
    assert run.jobs[1201]["pilotErrorCode"] == int(ErrorCode.SIGUSR1)
    assert not processes_with("66.1201")


def test_run_help_lists_the_exit_statuses() -> None:
    done = subprocess.run([*HPCPILOT, "run", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    statuses = [line.split()[0] for line in done.stdout.split("exit status:")[1].splitlines()
                if line.startswith("  ") and not line.startswith("   ")]
    assert statuses == ["0", "2", "3", "4", "128+n"]
    assert "warning signal" in done.stdout and "softkill" in done.stdout


def _hpcpilot(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HPCPILOT_")}
    return subprocess.run([*HPCPILOT, *args], cwd=cwd, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=60, check=False)


def _srun_line(script: str) -> list[str]:
    line = next(line for line in script.splitlines() if line.startswith("srun "))
    return shlex.split(line.removesuffix(" &"))


def test_render_sbatch_keeps_the_site_config_and_renders_set(tmp_path: Path) -> None:
    site = REPO / "site_configs" / "generic-slurm.toml"
    done = _hpcpilot(["render-sbatch", "--site-config", str(site), "--set", "launcher.partition=debug",
                      "--set", "launcher.nodes=1", "--set", "launcher.ranks_per_node=4",
                      "--", "--harvester-dir", "AP"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --partition=debug" in done.stdout and "#SBATCH --nodes=1" in done.stdout
    srun = _srun_line(done.stdout)
    run = srun[srun.index("run") + 1:]
    assert run[:2] == ["--site-config", str(site)]
    assert [run[i + 1] for i, a in enumerate(run) if a == "--set"] == [
        "launcher.partition=debug", "launcher.nodes=1", "launcher.ranks_per_node=4"]
    assert run[-2:] == ["--harvester-dir", "AP"]
    assert "--ntasks=4" in srun[:srun.index("run")]


def test_check_config_shows_what_run_uses(tmp_path: Path) -> None:
    done = _hpcpilot(["check-config", str(LAPTOP), "--set", "monitor.report_interval=3"], tmp_path,
                     env={"HPCPILOT_MONITOR_KILL_GRACE": "7"})
    assert done.returncode == 0, done.stderr
    assert "monitor.report_interval = 3.0" in done.stdout and "monitor.kill_grace = 7.0" in done.stdout
    bad = _hpcpilot(["check-config", str(LAPTOP)], tmp_path, env={"HPCPILOT_MONITOR_KILL_GRACE": "nan"})
    assert bad.returncode == 2 and "HPCPILOT_MONITOR_KILL_GRACE" in bad.stderr, bad.stderr


def _assert_one_line(done: subprocess.CompletedProcess[str], *texts: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcpilot"), done.stderr
    for text in texts:
        assert text in lines[0], (text, lines[0])


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _hpcpilot(["serve", "--port", str(port), "--state", str(tmp_path / "panda.db")], tmp_path)
    _assert_one_line(done, f"127.0.0.1:{port}", "in use")


def test_bad_paths_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    _assert_one_line(_hpcpilot(["serve", "--state", str(missing / "x.db")], tmp_path), str(missing / "x.db"))
    _assert_one_line(_hpcpilot(["check-config", str(missing / "site.toml")], tmp_path), str(missing / "site.toml"))
    _assert_one_line(_hpcpilot(["report", str(missing / "run.h5")], tmp_path), str(missing / "run.h5"))
    _assert_one_line(_hpcpilot(["render-sbatch", "--site-config", str(missing / "s.toml")], tmp_path),
                     str(missing / "s.toml"))


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as after `| head -1` has its line
    try:
        done = subprocess.run([*HPCPILOT, "check-config", str(LAPTOP)], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 128 + signal.SIGPIPE
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_ctrl_c_is_no_traceback(tmp_path: Path) -> None:
    serve = subprocess.Popen([*HPCPILOT, "serve", "--state", str(tmp_path / "panda.db")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert serve.stdout is not None and "serving" in serve.stdout.readline()
    serve.send_signal(signal.SIGINT)
    _out, err = serve.communicate(timeout=60)
    assert serve.returncode == 0 and "Traceback" not in err, err
    access_point = make_access_point(tmp_path / "access_point", [make_job(1301, "sleep 66.1301", ["never.txt"])])
    proc = start_pilot(tmp_path, access_point)
    assert wait_for(lambda: processes_with("66.1301"), timeout=30)
    proc.send_signal(signal.SIGINT)
    run = finish(proc, tmp_path)
    assert run.returncode == 128 + signal.SIGINT and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.jobs[1301]["pilotErrorCode"] == int(ErrorCode.SIGINT)


UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_a_refused_run_says_why_first_and_leaves_no_workdir(tmp_path: Path) -> None:
    argv = ["run", "--site-config", str(LAPTOP), "--harvester-dir", str(tmp_path / "no-such-ap"),
            "--workdir", str(tmp_path / "work")]
    _assert_one_line(_hpcpilot(argv, tmp_path), "no-such-ap", "not a directory")
    assert not (tmp_path / "work").exists()
    under_mpi = subprocess.run(pilot_argv(tmp_path, tmp_path / "no-such-ap", ranks=2), capture_output=True,
                               text=True, timeout=120, check=False)
    assert under_mpi.returncode != 0 and "Traceback" not in under_mpi.stderr, under_mpi.stderr
    first = under_mpi.stderr.splitlines()[0]
    assert first.startswith("hpcpilot: ") and "no-such-ap" in first, under_mpi.stderr
    assert not (tmp_path / "work").exists()


def test_text_log_levels_utc_times_and_effective_config(tmp_path: Path) -> None:
    jobs = [make_job(1401, "echo ok > o.1401", ["o.1401"]), make_job(1402, "exit 3")]
    run = run_pilot(tmp_path, jobs, extra=["--log-dir", str(tmp_path / "logs")])
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (tmp_path / "logs" / "pilot.rank0.log").read_text().splitlines()
    stamped = [line for line in lines if UTC_TIME.match(line)]
    assert stamped and stamped[0] == lines[0]
    failed = [line for line in stamped if "job 1402 failed" in line]
    assert failed and all(" WARNING " in line for line in failed), lines
    assert any("job 1401 finished" in line and " INFO " in line for line in stamped), lines
    assert not any("site.name =" in line or "monitor.kill_grace =" in line for line in lines), "config dump at INFO"
    phases = [line.split(": ", 1)[1] for line in stamped if "hpcpilot.job:" in line and "job 1401" in line]
    assert [p.split()[2] for p in phases if p.endswith("started")] == ["setup", "stagein", "payload", "stageout"]
    effective = load_config(run.workdir / "config.effective.toml", environ={"HPCPILOT": ""})
    assert effective.monitor.report_interval == 0.5 and effective.site.name == "laptop"


def test_json_log_on_every_rank(tmp_path: Path) -> None:
    jobs = [make_job(1500 + n, f"echo {n} > o.{1500 + n}", [f"o.{1500 + n}"]) for n in range(3)]
    run = run_pilot(tmp_path, jobs, ranks=2, extra=["--log-dir", str(tmp_path / "logs"), "--log-format", "json"])
    assert run.returncode == 0, run.stderr[-3000:]
    entries = {rank: [json.loads(line) for line in (tmp_path / "logs" / f"pilot.rank{rank}.log").read_text()
                      .splitlines()] for rank in (0, 1)}
    for rank, rank_entries in entries.items():
        assert rank_entries
        for entry in rank_entries:
            assert {"time", "level", "rank", "size", "host", "logger", "message"} <= set(entry), entry
            assert entry["rank"] == rank and entry["size"] == 2 and UTC_TIME.match(entry["time"]), entry
    phases = {(e["PandaID"], e["message"].split()[2]) for e in entries[1]
              if e["logger"] == "hpcpilot.job" and e["message"].endswith("started")}
    assert phases == {(j["PandaID"], p) for j in jobs for p in ("setup", "stagein", "payload", "stageout")}
    assert any(e.get("PandaID") == 1500 and "finished" in e["message"] for e in entries[0])


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_update_job_links_the_job_to_its_batch_job_and_sends_every_state(tmp_path: Path, api: str) -> None:
    server = PandaTestServer(tmp_path / "state.sqlite", release=release_for(api)).start()
    try:
        jobs = [make_job(1600 + n, f"sleep 1; echo {n} > o{n}.txt", [f"o{n}.txt"]) for n in range(2)]
        server.load_jobs(jobs)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCPILOT_"))},
               "SLURM_JOB_ID": "424242", "PANDA_JSID": "harvester-test", "GTAG": "https://logs.example/p.out"}
        argv = [*HPCPILOT, "run", "--site-config", str(LAPTOP), "--server", server.url, "--queue", "TESTQ",
                "--workdir", str(tmp_path / "work"), "--set", f"stage.output_dir={tmp_path / 'out'}",
                "--set", f"panda.api={api}"]
        for setting in FAST:
            argv += ["--set", setting]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        updates = server.requests("updateJob")
        assert updates
        for request in updates:  # the server keeps each request's fields as sent: v1 names on v1
            fields = {legacy: request["fields"].get(wire.LEGACY_TO_V1.get(legacy, legacy) if api == "v1" else legacy)
                      for legacy in ("batchID", "pilotID", "schedulerID", "node", "timestamp")}
            assert fields["batchID"] == "424242", fields
            assert fields["pilotID"] == f"https://logs.example/p.out|SLURM|PR|{__version__}", fields
            assert fields["schedulerID"] == "harvester-test" and fields["node"], fields
            if api == "legacy":  # v1's update_job has no timestamp field (panda-wire B.1)
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", fields["timestamp"]), fields
        states = {job["PandaID"]: job["states"] for job in server.dump()["jobs"]}
        assert states == {j["PandaID"]: ["starting", "running", "finished"] for j in jobs}, states
    finally:
        server.close()


def _metrics(workdir: Path) -> dict[tuple[str, str], float]:
    """metrics.prom parsed by Prometheus' own text parser: (sample name, state or panda_id label) -> value."""
    text = (workdir / "metrics.prom").read_text()
    return {(s.name, s.labels.get("state", s.labels.get("panda_id", ""))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_status_and_metrics_of_a_running_pilot(tmp_path: Path) -> None:
    hold = f"while [ ! -e {tmp_path / 'release'} ]; do sleep 0.2; done"
    jobs = [make_job(1701, f"{hold}; echo a > a.txt", ["a.txt"]), make_job(1702, f"{hold}; echo b > b.txt", ["b.txt"]),
            make_job(1703, "echo broken >&2; exit 3")]
    access_point = make_access_point(tmp_path / "access_point", jobs)
    proc = start_pilot(tmp_path, access_point, settings=["monitor.status_interval=0.3"], ranks=4)
    workdir = tmp_path / "work"
    try:
        def settled() -> bool:
            metrics = _metrics(workdir) if (workdir / "metrics.prom").exists() else {}
            return metrics.get(("hpcpilot_jobs", "running")) == 2 and metrics.get(("hpcpilot_jobs", "failed")) == 1
        assert wait_for(settled, timeout=60), (workdir / "status.json").read_text()
        metrics = _metrics(workdir)
        assert metrics[("hpcpilot_ranks", "busy")] == 2 and metrics[("hpcpilot_up", "")] == 1
        assert metrics[("hpcpilot_jobs", "queued")] == 0 and metrics[("hpcpilot_jobs", "finished")] == 0
        shown = _hpcpilot(["status", str(workdir)], tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "running 2" in shown.stdout and "failed 1" in shown.stdout and "busy 2" in shown.stdout, shown.stdout
        assert "job 1703: 1305" in shown.stdout, shown.stdout
        watch = subprocess.Popen([*HPCPILOT, "status", str(workdir), "--watch", "0.2"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        assert watch.stdout is not None and "hpcpilot on laptop: running" in watch.stdout.readline()
        watch.send_signal(signal.SIGINT)
        _out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0 and "Traceback" not in err, err
    finally:
        (tmp_path / "release").touch()
    run = finish(proc, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    final = json.loads((workdir / "status.json").read_text())
    assert final["state"] == "ended" and final["jobs"] == {"running": 0, "queued": 0, "finished": 2, "failed": 1}
    assert _metrics(workdir)[("hpcpilot_up", "")] == 0


def test_status_without_a_pilot_is_one_line(tmp_path: Path) -> None:
    _assert_one_line(_hpcpilot(["status", str(tmp_path)], tmp_path), "status.json")


def test_status_shows_event_service_progress(tmp_path: Path) -> None:
    panda_id = 1800
    job = make_job(panda_id, "unused", eventService="True")
    job["transformation"] = sys.executable
    job["jobPars"] = (f"{REPO / 'examples' / 'es_range.py'} {{eventRangeID}} {{startEvent}} {{lastEvent}} {{output}} "
                      "--ms-per-event 300")
    access_point = make_access_point(tmp_path / "ap", [job])
    ranges = [{"eventRangeID": f"7-{panda_id}-1-{i}-1", "startEvent": i, "lastEvent": i, "LFN": "EVNT.root",
               "GUID": "G1", "scope": "test"} for i in range(1, 61)]
    (access_point / "JobsEventRanges.json").write_text(json.dumps({str(panda_id): ranges}))
    proc = start_pilot(tmp_path, access_point, settings=["monitor.status_interval=0.3"], ranks=4)
    workdir = tmp_path / "work"

    def progressing() -> bool:
        if not (workdir / "metrics.prom").exists():
            return False
        metrics = _metrics(workdir)
        return metrics.get(("hpcpilot_es_ranges_processed", str(panda_id)), 0) >= 3
    try:
        assert wait_for(progressing, timeout=60), _hpcpilot(["status", str(workdir)], tmp_path).stdout
        snapshot = json.loads((workdir / "status.json").read_text())
        es = snapshot["event_service"][0]
        assert es["PandaID"] == panda_id and es["ranges_processed"] >= 3 and es["events_processed"] >= 1, es
        assert es["ranks"] >= 1 and es["ranges_per_second"] > 0, es
        shown = _hpcpilot(["status", str(workdir)], tmp_path)
        assert f"ES job {panda_id}:" in shown.stdout and "events processed" in shown.stdout, shown.stdout
    finally:
        run = finish(proc, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


def test_not_started_for_the_walltime_says_need_and_time_left(tmp_path: Path) -> None:
    run = run_pilot(tmp_path, [make_job(1901, "true", maxWalltime=600)], extra=["--walltime", "60"])
    job = run.jobs[1901]
    assert job["pilotErrorCode"] == int(ErrorCode.REACHEDMAXTIME), job
    diag = job["pilotErrorDiag"]
    match = re.search(r"needs up to 600 s \(maxWalltime\), (\d+) s left before the walltime guard", diag)
    assert match and int(match.group(1)) <= 58, diag  # --walltime 60 less the 2 s margin


def test_a_payload_that_does_not_exist_keeps_127_and_says_what_is_missing(tmp_path: Path) -> None:
    run = run_pilot(tmp_path, [make_job(1902, "no-such-command-1902 --help")])
    job = run.jobs[1902]
    assert job["transExitCode"] == 127 and job["pilotErrorCode"] == int(ErrorCode.PAYLOADEXECUTIONFAILURE), job
    assert "exited with code 127" in job["pilotErrorDiag"] and "no-such-command-1902" in job["pilotErrorDiag"], job
    assert "not found" in job["pilotErrorDiag"], job


def _memory_cgroup_usable() -> bool:
    location = detect()
    return os.geteuid() == 0 and location is not None and location.memory


@pytest.mark.skipif(not _memory_cgroup_usable(), reason="needs root and a cgroup memory controller")
def test_cgroup_memory_kill_says_peak_and_limit(tmp_path: Path) -> None:
    hog = "python3 -c 'b = bytearray(400 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096])'"
    run = run_pilot(tmp_path, [make_job(1903, hog, ["never.txt"], minRamCount=100)],
                    settings=["monitor.rss_grace_percent=0", "monitor.report_interval=5"])
    job = run.jobs[1903]
    assert job["pilotErrorCode"] == int(ErrorCode.PAYLOADEXCEEDMAXMEM), job
    assert re.search(r"cgroup memory limit \(peak \d+ MB, limit 100 MB\)", job["pilotErrorDiag"]), job


def test_report_counts_events_and_jobs_like_the_summary(tmp_path: Path) -> None:
    panda_id = 2100
    job = make_job(panda_id, "unused", eventService="True")
    job["transformation"] = sys.executable
    job["jobPars"] = f"{REPO / 'examples' / 'es_payload.py'} --ms-per-event 20"  # sampled on every rank
    access_point = make_access_point(tmp_path / "ap", [job])
    ranges = [{"eventRangeID": f"7-{panda_id}-1-{i}-1", "startEvent": 5 * i + 1, "lastEvent": 5 * i + 5,
               "LFN": "EVNT.root", "GUID": "G1", "scope": "test"} for i in range(40)]
    (access_point / "JobsEventRanges.json").write_text(json.dumps({str(panda_id): ranges}))
    run = finish(start_pilot(tmp_path, access_point, settings=["eventservice.payload_mode=protocol"], ranks=4),
                 tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.jobs[panda_id]["nEvents"] == 200, run.jobs[panda_id]
    recorded = load_run(run.workdir / "run.h5")
    assert sum(n for _, _, n in event_times(recorded)) == 200  # 40 ranges of 5 events, not 40 events
    text = summarize(recorded)
    assert "jobs: 1 finished" in text.splitlines()[2], text


def test_report_timeline_shows_which_rank_ran_what_when(tmp_path: Path) -> None:
    jobs = [make_job(2200 + n, f"sleep 1; echo {n} > o.{n}", [f"o.{n}"]) for n in range(4)]
    run = run_pilot(tmp_path, jobs, ranks=3)
    assert run.returncode == 0, run.stderr[-3000:]
    timeline = rank_timeline(load_run(run.workdir / "run.h5"))
    assert set(timeline) <= {1, 2}
    assert sorted(pid for items in timeline.values() for _, _, pid, _ in items) == [j["PandaID"] for j in jobs]
    ran_on = {pid: rank for rank, items in timeline.items() for _, _, pid, _ in items}
    assert ran_on == {pid: int(job["rank"]) for pid, job in run.jobs.items()}
    for items in timeline.values():  # a rank runs one job at a time: no two of its jobs overlap
        assert all(end <= next_start for (_, end, _, _), (next_start, _, _, _) in itertools.pairwise(items))
        assert all(state == "finished" for _, _, _, state in items)
