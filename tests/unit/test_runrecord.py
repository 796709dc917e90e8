"""RunRecorder: layout, units, appends, and a file that survives SIGKILL of its writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcpilot.monitor.samples import TreeSample
from hpcpilot.report import load_run, summarize
from hpcpilot.runrecord import SAMPLE_UNITS, RunRecorder

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def sample(i: int, base: int = 1000) -> TreeSample:
    return TreeSample(T0 + i * 0.5, base + 10 * i, base + 20 * i, i, 4 * base + i, 0.25 * i, 0.125 * i,
                      2, 5, 100 * i, 50 * i, 4096 * i, 8192 * i)


def test_layout_values_and_units(tmp_path):
    path = tmp_path / "run.h5"
    with RunRecorder(path) as recorder:
        recorder.add_node(0, {"hostname": "nid001", "cores": 64, "mem_kb": 2.5e8, "gpus": ["a100", "a100"],
                              "cgroup": None})
        recorder.add_samples(1, 1001, [sample(i) for i in range(3)])
        recorder.add_samples(1, 1001, [sample(i) for i in range(3, 700)])  # crosses a chunk boundary
        recorder.add_samples(2, 1002, [sample(0, base=5000)])
        recorder.add_samples(2, 1003, [])
        recorder.add_job({"jobId": 1001, "state": "finished", "pilotErrorCode": 0, "rank": 1,
                          "cpuConsumptionTime": 87, "coreCount": 1, "maxPSS": 7990})
        recorder.add_job({"jobId": 1002, "state": "failed", "pilotErrorCode": 1235, "rank": 2})
        recorder.add_event_ranges(1, 1001, [{"eventRangeID": "1-2-3-4-5", "eventStatus": "finished"},
                                            {"eventRangeID": "1-2-3-5-5", "eventStatus": "failed",
                                             "errorCode": 1220}], when=T0 + 3)
        recorder.add_event_ranges(1, 1001, [{"eventRangeID": "x", "eventStatus": "finished",
                                             "recordedAt": T0 + 9}])
        recorder.add_event_ranges(1, 1001, [])

    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "hpcpilot-run" and f.attrs["format_version"] == 1
        samples = f["ranks/1/jobs/1001/samples"]
        assert samples.shape == (700,)
        assert samples.maxshape == (None,) and samples.chunks is not None
        assert list(samples.dtype.names) == list(TreeSample._fields)
        assert tuple(samples[42].tolist()) == tuple(sample(42))
        np.testing.assert_array_equal(samples["pss"], [1000 + 10 * i for i in range(700)])
        assert json.loads(samples.attrs["units"]) == SAMPLE_UNITS
        assert samples.attrs["units.time"] == "epoch s"
        assert samples.attrs["units.pss"] == "kB"
        assert samples.attrs["units.utime"] == "s"
        assert samples.attrs["units.read_bytes"] == "bytes"
        assert f["ranks/2/jobs/1002/samples"].shape == (1,)
        assert "1003" not in f["ranks/2/jobs"]

        node = f["ranks/0/node"]
        assert node.attrs["hostname"] == "nid001" and node.attrs["cores"] == 64
        assert json.loads(node.attrs["gpus"]) == ["a100", "a100"]
        assert json.loads(node.attrs["info"])["mem_kb"] == 2.5e8

        jobs = [json.loads(s) for s in f["jobs"].asstr()[:]]
        assert [j["jobId"] for j in jobs] == [1001, 1002]
        assert jobs[1]["pilotErrorCode"] == 1235

        updates = [json.loads(s) for s in f["ranks/1/jobs/1001/event_ranges"].asstr()[:]]
        assert [u["recordedAt"] for u in updates] == [T0 + 3, T0 + 3, T0 + 9]
        assert updates[1]["errorCode"] == 1220


def test_refuses_to_overwrite_and_rejects_writes_after_close(tmp_path):
    path = tmp_path / "run.h5"
    recorder = RunRecorder(path)
    recorder.close()
    recorder.close()
    with pytest.raises(ValueError, match="is closed"):
        recorder.add_samples(0, 1, [sample(0)])
    with pytest.raises(FileExistsError, match="exists already"):
        RunRecorder(path)
    RunRecorder(path, overwrite=True).close()


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from hpcpilot.monitor.samples import TreeSample
    from hpcpilot.runrecord import RunRecorder

    recorder = RunRecorder(Path(sys.argv[1]))
    recorder.add_node(0, {"hostname": "test"})
    i = 0
    batch = 0
    while True:  # runs until SIGKILL; paced by the sleep below, like a real sampling loop
        rows = [TreeSample(1e9 + i + k, i + k, 0, 0, 0, 0.0, 0.0, 1, 1, 0, 0, 0, 0) for k in range(7)]
        recorder.add_samples(1, 4242, rows)
        i += len(rows)
        batch += 1
        recorder.add_event_ranges(1, 4242, [{"eventRangeID": f"r{batch}", "eventStatus": "finished"}])
        if batch % 5 == 0:
            recorder.add_job({"jobId": batch, "rank": 1, "state": "finished"})
        print(i, batch, flush=True)
        if sys.argv[2] == "block":
            sys.stdin.readline()  # wait here: the kill then lands between appends
        else:
            time.sleep(0.02)
""")


def _killed_writer(path: Path, mode: str, batches: int) -> tuple[int, int]:
    """Run the writer, SIGKILL it after it reported ``batches`` flushed batches; the last counts."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        rows = batch = 0
        while batch < batches:
            line = proc.stdout.readline()
            assert line, f"writer exited early with {proc.wait()}"
            rows, batch = (int(v) for v in line.split())
            if mode == "block" and batch < batches:
                proc.stdin.write("\n")
                proc.stdin.flush()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return rows, batch


def _check_killed_file(path: Path, rows: int, batch: int, exact: bool) -> None:
    with h5py.File(path, "r") as f:
        samples = f["ranks/1/jobs/4242/samples"][:]
        updates = f["ranks/1/jobs/4242/event_ranges"].asstr()[:]
        jobs = f["jobs"].asstr()[:]
        assert f["ranks/0/node"].attrs["hostname"] == "test"
    if exact:
        assert len(samples) == rows and len(updates) == batch and len(jobs) == batch // 5
    else:  # the writer may have completed more appends after its last report
        assert len(samples) >= rows and len(updates) >= batch and len(jobs) >= batch // 5
    np.testing.assert_array_equal(samples["pss"], np.arange(len(samples)))
    np.testing.assert_array_equal(samples["time"], 1e9 + np.arange(len(samples)))
    assert [json.loads(u)["eventRangeID"] for u in updates] == [f"r{b + 1}" for b in range(len(updates))]


def test_file_is_readable_after_sigkill_between_appends(tmp_path):
    path = tmp_path / "run.h5"
    rows, batch = _killed_writer(path, "block", batches=30)
    _check_killed_file(path, rows, batch, exact=True)
    text = summarize(load_run(path))  # the report reads what a killed pilot left
    assert "4242" in text and "no final record" in text


def test_file_is_readable_after_sigkill_of_a_writing_loop(tmp_path):
    path = tmp_path / "run.h5"
    rows, batch = _killed_writer(path, "loop", batches=60)
    _check_killed_file(path, rows, batch, exact=False)


def test_job_row_holds_the_precise_cpu_and_the_memory_limit(tmp_path):
    from hpcpilot.records import CPU_SECONDS_KEY, JobRecord
    from hpcpilot.report import job_stats
    from hpcpilot.runrecord import MEMORY_LIMIT_KEY

    record = JobRecord(1001, rank=1, cpu_seconds=0.337)
    record.cpu_consumption_time = round(record.cpu_seconds)
    assert CPU_SECONDS_KEY not in record.to_wire()  # PanDA gets its whole seconds only
    assert record.to_wire()["cpuConsumptionTime"] == 0
    assert JobRecord.from_summary(record.to_summary()).cpu_seconds == 0.337  # across MPI, unrounded
    path = tmp_path / "run.h5"
    with RunRecorder(path) as recorder:
        recorder.add_job(record.to_summary(), memory_limit_kb=2_457_600)
        recorder.add_job(JobRecord(1002, rank=2).to_summary())  # a job rank 0 never assigned: no limit known
    with h5py.File(path, "r") as f:
        rows = [json.loads(s) for s in f["jobs"].asstr()[:]]
    assert rows[0][CPU_SECONDS_KEY] == 0.337 and rows[0][MEMORY_LIMIT_KEY] == 2_457_600
    assert MEMORY_LIMIT_KEY not in rows[1]
    stats = {s.panda_id: s for s in job_stats(load_run(path))}
    assert stats[1001].cpu_s == 0.337 and stats[1001].memory_limit_kb == 2_457_600
    assert stats[1002].cpu_s == 0.0 and stats[1002].memory_limit_kb == 0
    assert "0.337" in summarize(load_run(path)) and "2400.0" in summarize(load_run(path))
