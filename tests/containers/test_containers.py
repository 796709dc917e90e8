"""Jobs whose payloads run in containers, for real: the pilot started as in production, its jobs naming images.

Each test runs under both runtimes that run here (charliecloud, podman; see conftest.py); Apptainer, Singularity
and Shifter cannot run here and are checked as argv in tests/unit/test_container_argv.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.errors import ErrorCode
from hpcpilot_serve.server import PandaTestServer
from tests.containers.conftest import HOST_BINDS, MARKER, Images
from tests.pilotrun import (
    FAST,
    LAPTOP,
    REPO,
    default_sigint,
    finish,
    make_access_point,
    make_job,
    processes_with,
    run_pilot,
    start_pilot,
    wait_for,
)

pytestmark = pytest.mark.containers
RUNTIMES = ["charliecloud", "podman"]
ES_RANGE = REPO / "examples" / "es_range.py"
ES_PAYLOAD = REPO / "examples" / "es_payload.py"


def _settings(runtime: str, *more: str) -> list[str]:
    options = ["container.options=--network none"] if runtime == "podman" else []
    return [f"container.runtime={runtime}", *options, *more]


def _containers_of(panda_id: int) -> list[str]:
    """Containers of the job that podman still knows (running or not)."""
    done = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                          timeout=60, check=False)
    return [name for name in done.stdout.split() if name.startswith(f"hpcpilot-{panda_id}-")]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_job_reads_its_image_and_its_outputs_are_staged_out(tmp_path: Path, images: Images, runtime: str) -> None:
    assert not Path(f"/{MARKER}").exists()  # only the image has it
    image = images.busybox(runtime)
    by_name = make_job(2301, f"cat /{MARKER} > out.2301; echo $PandaID >> out.2301", outputs=["out.2301"],
                       container_name=image)
    by_pars = make_job(2302, f"cat /{MARKER} > out.2302; pwd >> out.2302", outputs=["out.2302"])
    by_pars["jobPars"] += f" --containerImage={image}"
    run = run_pilot(tmp_path, [by_name, by_pars], settings=_settings(runtime))
    assert run.returncode == 0, run.stderr[-3000:]
    for panda_id in (2301, 2302):
        assert run.jobs[panda_id]["state"] == "finished", run.jobs[panda_id]
    first = (tmp_path / "outputs" / "out.2301").read_text().splitlines()
    second = (tmp_path / "outputs" / "out.2302").read_text().splitlines()
    assert first == [f"{MARKER} from the image", "2301"]
    assert second[0] == f"{MARKER} from the image" and second[1].endswith("PandaJob_2302")  # the same path inside


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_image_that_does_not_exist_fails_1360_and_the_next_job_runs(tmp_path: Path, images: Images,
                                                                      runtime: str) -> None:
    missing = str(tmp_path / "no-such-image") if runtime == "charliecloud" else "localhost/hpcpilot-none:1"
    jobs = [make_job(2311, "true", container_name=missing), make_job(2312, "true")]
    run = run_pilot(tmp_path, jobs, settings=_settings(runtime, f"container.image={images.busybox(runtime)}"))
    assert run.returncode == 0, run.stderr[-3000:]
    failed, next_job = run.jobs[2311], run.jobs[2312]
    assert (failed["state"], failed["pilotErrorCode"]) == ("failed", int(ErrorCode.IMAGENOTFOUND)), failed
    assert "no-such-image" in failed["pilotErrorDiag"] or "hpcpilot-none" in failed["pilotErrorDiag"]
    assert next_job["state"] == "finished", next_job  # in the site's default image


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_missing_runtime_fails_1325_and_the_pilot_goes_on(tmp_path: Path, images: Images, runtime: str) -> None:
    run = run_pilot(tmp_path, [make_job(2315, "true", container_name=images.busybox(runtime)), make_job(2316, "true")],
                    settings=_settings(runtime, f"container.executable={tmp_path / 'not-installed'}"))
    assert run.jobs[2315]["pilotErrorCode"] == int(ErrorCode.SINGULARITYNOTINSTALLED), run.jobs[2315]
    assert run.jobs[2316]["state"] == "finished"  # no image: the bare node


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_runtime_s_own_failure_is_not_the_payload_s(tmp_path: Path, images: Images, runtime: str) -> None:
    """The host image has no /bin/sh without its binds: the runtime cannot start the payload (1306), whereas a
    payload that exits 3 by itself fails 1305, as on the bare node."""
    jobs = [make_job(2317, "true", container_name=images.host(runtime)),
            make_job(2318, "exit 3", container_name=images.busybox(runtime))]
    run = run_pilot(tmp_path, jobs, settings=_settings(runtime))
    runtime_failed, payload_failed = run.jobs[2317], run.jobs[2318]
    assert runtime_failed["pilotErrorCode"] == int(ErrorCode.SINGULARITYGENERALFAILURE), runtime_failed
    assert runtime_failed["pilotErrorDiag"].startswith(f"{runtime} failed"), runtime_failed
    assert (payload_failed["pilotErrorCode"], payload_failed["transExitCode"]) == (1305, 3), payload_failed


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_memory_and_cpu_are_those_of_the_containerized_payload(tmp_path: Path, images: Images, runtime: str) -> None:
    # dd holds a 200 MB buffer (filled from /dev/zero) while the pipe's reader sleeps; then 2 s of CPU
    command = ("dd if=/dev/zero bs=200M count=1 2>/dev/null | sleep 4; "
               "dd if=/dev/zero of=/dev/null bs=1M count=40000 2>/dev/null")
    run = run_pilot(tmp_path, [make_job(2321, command, container_name=images.busybox(runtime))],
                    settings=_settings(runtime, "monitor.report_interval=0.3"))
    job = run.jobs[2321]
    assert job["state"] == "finished", job
    assert job["maxRSS"] > 180 * 1024, job  # kB
    assert job["cpuConsumptionTime"] >= 1, job


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_walltime_guard_ends_a_containerized_sleep_and_nothing_is_left(tmp_path: Path, images: Images,
                                                                           runtime: str) -> None:
    run = run_pilot(tmp_path, [make_job(2331, "sleep 300.2331", container_name=images.busybox(runtime))],
                    settings=_settings(runtime), extra=["--walltime", "12"], timeout=90)
    job = run.jobs[2331]
    assert (job["state"], job["pilotErrorCode"]) == ("failed", int(ErrorCode.REACHEDMAXTIME)), job
    assert processes_with("300.2331") == []
    assert _containers_of(2331) == []


def _es_ranges(panda_id: int, n: int) -> list[dict[str, Any]]:
    return [{"eventRangeID": f"7-{panda_id}-1-{i}-1", "startEvent": i, "lastEvent": i, "LFN": "EVNT.root",
             "GUID": "G1", "scope": "test"} for i in range(1, n + 1)]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("mode", ["per-range", "protocol"])
def test_an_event_service_job_in_a_container_finishes_every_range(tmp_path: Path, images: Images, runtime: str,
                                                                  mode: str) -> None:
    panda_id = 2340
    job = make_job(panda_id, "unused", eventService="True", container_name=images.host(runtime))
    job["transformation"] = sys.executable
    job["jobPars"] = (f"{ES_RANGE} {{eventRangeID}} {{startEvent}} {{lastEvent}} {{output}} --ms-per-event 1"
                      if mode == "per-range" else f"{ES_PAYLOAD} --ms-per-event 1")
    access_point = make_access_point(tmp_path / "ap", [job])
    ranges = _es_ranges(panda_id, 12)
    (access_point / "JobsEventRanges.json").write_text(json.dumps({str(panda_id): ranges}))
    binds = " ".join(HOST_BINDS)
    ranks = 3 if mode == "protocol" else 0  # the protocol payload under mpiexec: two worker ranks, a container each
    proc = start_pilot(tmp_path, access_point, _settings(runtime, f"container.binds={binds}",
                                                          f"eventservice.payload_mode={mode}"), ranks=ranks)
    run = finish(proc, tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    entries = json.loads((access_point / "event_status.dump.json").read_text())[str(panda_id)]
    statuses = Counter(e["eventStatus"] for e in entries if "eventRangeID" in e)
    assert statuses == Counter({"finished": len(ranges)}), entries[:3]
    assert _containers_of(panda_id) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_sigterm_to_the_pilot_ends_the_container_and_leaves_nothing(tmp_path: Path, images: Images,
                                                                      runtime: str) -> None:
    access_point = make_access_point(tmp_path / "ap", [make_job(2351, "sleep 300.2351",
                                                               container_name=images.busybox(runtime))])
    proc = start_pilot(tmp_path, access_point, _settings(runtime))
    try:
        assert wait_for(lambda: processes_with("300.2351"), timeout=60)
        time.sleep(0.5)
    finally:
        proc.terminate()
        run = finish(proc, tmp_path, timeout=60)
    assert run.jobs[2351]["pilotErrorCode"] == int(ErrorCode.SIGTERM), run.jobs[2351]
    assert processes_with("300.2351") == []
    assert _containers_of(2351) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_server_tobekilled_ends_a_containerized_sleep_and_nothing_is_left(tmp_path: Path, images: Images,
                                                                            runtime: str) -> None:
    server = PandaTestServer(tmp_path / "state.sqlite").start()
    try:
        server.load_jobs([make_job(2361, "sleep 300.2361", container_name=images.busybox(runtime))])
        argv = [sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP), "--server", server.url,
                "--workdir", str(tmp_path / "work"), "--set", f"stage.output_dir={tmp_path / 'outputs'}"]
        for setting in [*FAST, *_settings(runtime), "panda.heartbeat=1", "panda.credential_min_lifetime=0"]:
            argv += ["--set", setting]
        proc = subprocess.Popen(argv, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=default_sigint)
        try:
            assert wait_for(lambda: processes_with("300.2361"), timeout=60)
            server.set_command(2361, "tobekilled")
        finally:
            run = finish(proc, tmp_path, timeout=90)
        job = next(j for j in server.dump()["jobs"] if j["PandaID"] == 2361)
    finally:
        server.close()
    assert run.returncode == 0, run.stderr[-3000:]
    assert (job["status"], job["pilotErrorCode"]) == ("failed", int(ErrorCode.PANDAKILL)), job
    assert processes_with("300.2361") == []
    assert _containers_of(2361) == []


def test_a_charliecloud_bind_whose_destination_the_image_lacks_fails_1308(tmp_path: Path, images: Images) -> None:
    """ch-run binds only onto paths the image has (its /var has no tmp); podman makes them, so it is not asked."""
    run = run_pilot(tmp_path, [make_job(2371, "true", container_name=images.busybox("charliecloud"))],
                    settings=_settings("charliecloud", "container.binds=/var/tmp"))
    job = run.jobs[2371]
    assert job["pilotErrorCode"] == int(ErrorCode.SINGULARITYBINDPOINTFAILURE), job
    assert "can't mkdir" in job["pilotErrorDiag"], job


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_looping_containerized_payload_gets_the_bare_payload_s_code(tmp_path: Path, images: Images,
                                                                      runtime: str) -> None:
    payload = "trap '' TERM; sleep 300.2391 & sleep 300.2392 & wait"  # children that ignore SIGTERM
    run = run_pilot(tmp_path, [make_job(2391, payload, container_name=images.busybox(runtime))],
                    settings=_settings(runtime, "monitor.looping_limit=3"))
    assert run.jobs[2391]["pilotErrorCode"] == int(ErrorCode.LOOPINGJOB), run.jobs[2391]
    assert processes_with("300.239") == []
    assert _containers_of(2391) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_containerized_payload_over_its_memory_limit_is_killed_1235(tmp_path: Path, images: Images,
                                                                      runtime: str) -> None:
    hog = "dd if=/dev/zero bs=300M count=1 2>/dev/null | sleep 300.2393"
    run = run_pilot(tmp_path, [make_job(2393, hog, minRamCount=50, container_name=images.busybox(runtime))],
                    settings=_settings(runtime, "monitor.rss_grace_percent=0", "monitor.use_cgroup=false"))
    assert run.jobs[2393]["pilotErrorCode"] == int(ErrorCode.PAYLOADEXCEEDMAXMEM), run.jobs[2393]
    assert processes_with("300.2393") == []
    assert _containers_of(2393) == []
