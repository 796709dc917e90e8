"""Zip inputs of a real single-rank pilot: a member that would replace a pilot file fails its job with 1371.

The pilot's own ``job_setup.sh`` and ``pandaJob.json`` stay as the pilot wrote them, nothing of the hostile zip
is unpacked, and the pilot goes on: a job with a benign zip input reads the unpacked member, a plain job runs.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path

from tests.pilotrun import make_job, run_pilot

EVIL_SETUP = b"#!/bin/sh\necho pwned > /tmp/hpcpilot-zip-pwned\n"


def _zip_input(tmp: Path, name: str, members: dict[str, bytes]) -> tuple[str, int, str]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    data = buffer.getvalue()
    (tmp / "inputs").mkdir(exist_ok=True)
    (tmp / "inputs" / name).write_bytes(data)
    return name, len(data), f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def test_zip_member_named_like_a_pilot_file_fails_1371_and_the_pilot_goes_on(tmp_path: Path) -> None:
    evil = _zip_input(tmp_path, "evil.zip", {"data.txt": b"unpacked?\n", "job_setup.sh": EVIL_SETUP,
                                             "pandaJob.json": b'{"PandaID": 666}'})
    good = _zip_input(tmp_path, "good.zip", {"events.txt": b"event\n" * 7})
    jobs = [make_job(31, "cat data.txt > o31.txt", ["o31.txt"], [evil]),
            make_job(32, "wc -l < events.txt > o32.txt", ["o32.txt"], [good]),
            make_job(33, "echo ok > o33.txt", ["o33.txt"])]
    run = run_pilot(tmp_path, jobs)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    failed = run.jobs[31]
    assert failed["state"] == "failed" and failed["pilotErrorCode"] == 1371, failed
    diag = failed["pilotErrorDiag"]
    assert "'evil.zip'" in diag and "'job_setup.sh'" in diag and "\n" not in diag
    workdir = tmp_path / "work" / "jobs" / "rank0" / "PandaJob_31"
    assert json.loads((workdir / "pandaJob.json").read_text())["PandaID"] == 31
    setup = (workdir / "job_setup.sh").read_text()
    assert "Re-run PanDA job 31" in setup and "cat data.txt" in setup and "pwned" not in setup
    assert not (workdir / "data.txt").exists()  # refused before anything was unpacked
    assert run.jobs[32]["state"] == "finished" and run.jobs[33]["state"] == "finished"
    assert (tmp_path / "outputs" / "o32.txt").read_text().strip() == "7"
