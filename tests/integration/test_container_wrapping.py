"""The pilot's side of containers on any machine: a stand-in ``ch-run`` (a shell script) records the command line
the pilot gives it and runs the payload in place, as the real one does with a directory image.

The real runtimes run in tests/containers (root only); these tests keep the wrapping, the image choice and the
runtime's failures covered where that tier is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcpilot.errors import ErrorCode
from tests.pilotrun import make_job, run_pilot

FAKE_CH_RUN = """#!/bin/sh
# ch-run [-b SRC:DST]... -c DIR [opts] IMG -- CMD...: record argv, check the image, run CMD in DIR
printf '%s\\n' "$@" >> "$FAKE_RUNTIME_LOG"
echo --- >> "$FAKE_RUNTIME_LOG"
while [ $# -gt 0 ]; do
  case "$1" in
    -c) dir=$2; shift 2 ;;
    -b) shift 2 ;;
    --) shift; break ;;
    *) image=$1; shift ;;
  esac
done
[ -d "$image" ] || { echo "ch-run[$$]: error: can't stat: $image: No such file or directory" >&2; exit 1; }
cd "$dir" && exec "$@"
"""


@pytest.fixture
def fake_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    program, log = tmp_path / "fake-ch-run", tmp_path / "runtime.log"
    program.write_text(FAKE_CH_RUN)
    program.chmod(0o755)
    monkeypatch.setenv("FAKE_RUNTIME_LOG", str(log))  # charliecloud passes the pilot's environment on
    (tmp_path / "image").mkdir()
    return program, log


def _calls(log: Path) -> list[list[str]]:
    return [block.strip("\n").split("\n") for block in log.read_text().split("---\n") if block.strip()]


def test_the_payload_runs_through_the_runtime_without_its_container_image_option(
        tmp_path: Path, fake_runtime: tuple[Path, Path]) -> None:
    program, log = fake_runtime
    image = tmp_path / "image"
    job = make_job(2381, "", outputs=["out.2381"])
    job["jobPars"] = f"-c 'echo \"zero=$0\" > out.2381' --containerImage={image}"  # $0: the inner shell's
    run = run_pilot(tmp_path, [job], settings=["container.runtime=charliecloud", f"container.executable={program}",
                                               "container.binds=/cvmfs"])
    assert run.jobs[2381]["state"] == "finished", run.jobs[2381]
    assert (tmp_path / "outputs" / "out.2381").read_text() == "zero=/bin/sh\n"  # no --containerImage as $0
    [argv] = _calls(log)
    workdir = argv[argv.index("-c") + 1]
    assert workdir.endswith("PandaJob_2381")
    assert argv[:6] == ["-b", f"{workdir}:{workdir}", "-b", "/cvmfs:/cvmfs", "-c", workdir]
    assert argv[6:10] == [str(image), "--", "/bin/sh", "-c"] and "--containerImage" not in argv[10]


def test_with_runtime_none_the_job_runs_as_sent(tmp_path: Path, fake_runtime: tuple[Path, Path]) -> None:
    _, log = fake_runtime
    job = make_job(2382, "", outputs=["out.2382"], container_name=str(tmp_path / "image"))
    job["jobPars"] = "-c 'echo \"zero=$0\" > out.2382' --containerImage=/somewhere"
    run = run_pilot(tmp_path, [job])
    assert run.jobs[2382]["state"] == "finished", run.jobs[2382]
    assert (tmp_path / "outputs" / "out.2382").read_text() == "zero=--containerImage=/somewhere\n"
    assert not log.exists()


def test_runtime_missing_1325_runtime_failure_its_code_and_the_pilot_goes_on(
        tmp_path: Path, fake_runtime: tuple[Path, Path]) -> None:
    program, _ = fake_runtime
    not_a_directory = tmp_path / "image.sqfs"
    not_a_directory.write_text("")
    jobs = [make_job(2383, "true", container_name=str(not_a_directory)),
            make_job(2384, "exit 1", container_name=str(tmp_path / "image")), make_job(2385, "true")]
    run = run_pilot(tmp_path, jobs, settings=["container.runtime=charliecloud", f"container.executable={program}"])
    assert run.jobs[2383]["pilotErrorCode"] == int(ErrorCode.IMAGENOTFOUND), run.jobs[2383]  # the runtime said so
    assert run.jobs[2383]["pilotErrorDiag"].startswith("charliecloud failed (exit 1): can't stat")
    assert run.jobs[2384]["pilotErrorCode"] == int(ErrorCode.PAYLOADEXECUTIONFAILURE)  # the payload's own exit 1
    assert run.jobs[2385]["state"] == "finished"
    missing = run_pilot(tmp_path / "again", [make_job(2386, "true", container_name=str(tmp_path / "image"))],
                        settings=["container.runtime=charliecloud", f"container.executable={tmp_path / 'none'}"])
    assert missing.jobs[2386]["pilotErrorCode"] == int(ErrorCode.SINGULARITYNOTINSTALLED), missing.jobs[2386]


FAKE_APPTAINER = """#!/bin/sh
# apptainer exec --pwd DIR [-B BINDS] IMG CMD...: record the cache it was given and argv, run CMD in DIR
{ echo "cache=$APPTAINER_CACHEDIR"; printf '%s\\n' "$@"; } >> "$FAKE_RUNTIME_LOG"
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --pwd) dir=$2; shift 2 ;;
    -B) shift 2 ;;
    *) shift; break ;;
  esac
done
cd "$dir" && exec "$@"
"""


def test_apptainer_is_given_node_local_scratch_for_its_image_copies(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    program, log = tmp_path / "apptainer", tmp_path / "runtime.log"
    program.write_text(FAKE_APPTAINER)
    program.chmod(0o755)
    monkeypatch.setenv("FAKE_RUNTIME_LOG", str(log))
    monkeypatch.delenv("APPTAINER_CACHEDIR", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")  # found on PATH, as on a site
    scratch = tmp_path / "scratch"
    run = run_pilot(tmp_path, [make_job(2387, "pwd > out.2387", outputs=["out.2387"],
                                        container_name="docker://atlas/athena:24")],
                    settings=["container.runtime=apptainer", f"site.local_scratch={scratch}"])
    assert run.jobs[2387]["state"] == "finished", run.jobs[2387]
    lines = log.read_text().splitlines()
    assert lines[0] == f"cache={scratch}/container-cache/apptainer"
    workdir = (tmp_path / "outputs" / "out.2387").read_text().strip()
    assert workdir.startswith(str(scratch)) and lines[1:6] == ["exec", "--pwd", workdir, "-B", workdir]
    assert lines[6:9] == ["docker://atlas/athena:24", "/bin/sh", "-c"]
