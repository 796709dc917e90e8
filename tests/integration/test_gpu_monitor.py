"""A payload's GPU use: measured, written as prmon writes it, sent to rank 0, named in jobMetrics, limited.

There is no GPU here, so NVML is a STAND-IN: ``tests/fixtures/fakenvml/pynvml.py`` answers nvidia-ml-py's calls
from a state file, and a payload "allocates GPU memory" by naming its pid there.  Everything else runs for real:
the job life (``run_job``) starts a real payload, samples its real process tree, writes the prmon files, emits
its heartbeats, and is killed on rank 0's verdict (``check_report``) as a worker rank is.  The rank's GPUs are
given in the job context as the worker reads them from its node info (``hpcpilot.gpu.visible``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from hpcpilot.config import SiteConfig, replace
from hpcpilot.errors import ErrorCode
from hpcpilot.gpu.model import NODE_GPUS_KEY, RANK_GPUS_KEY, Gpu, NodeGpus, RankGpus
from hpcpilot.gpu.visible import visible_gpus
from hpcpilot.joblife import PRMON_SUMMARY, PRMON_TEXT, JobContext, JobControl, run_job
from hpcpilot.monitor import gpu as gpumon
from hpcpilot.monitor.metrics import check_report, limits_for_job
from hpcpilot.monitor.prmon import read_prmon_text
from hpcpilot.protocol import Heartbeat, Message
from hpcpilot.records import JobSpec
from hpcpilot.runrecord import RunRecorder
from hpcpilot.states import JobState
from tests.pilotrun import make_job

FAKE_NVML = Path(__file__).resolve().parents[1] / "fixtures" / "fakenvml"
A100 = Gpu("NVIDIA", 0, "NVIDIA A100-SXM4-40GB", 40960, uuid="GPU-aaaa", architecture="Ampere")
A100B = Gpu("NVIDIA", 1, "NVIDIA A100-SXM4-40GB", 40960, uuid="GPU-bbbb", architecture="Ampere")


@pytest.fixture
def nvml(tmp_path, monkeypatch):
    """The stand-in NVML on the import path, with two A100s; yields the directory payloads register in."""
    pids = tmp_path / "gpu-pids"
    pids.mkdir()
    state = tmp_path / "nvml.json"
    state.write_text(json.dumps({"pids_dir": str(pids), "gpus": [
        {"uuid": "GPU-aaaa", "name": A100.model, "total_mb": 40960, "util": 87, "mem_util": 40, "sm_clock": 1410},
        {"uuid": "GPU-bbbb", "name": A100.model, "total_mb": 40960, "util": 5, "mem_util": 1, "sm_clock": 1410}]}))
    monkeypatch.setenv("FAKE_NVML_STATE", str(state))
    monkeypatch.syspath_prepend(str(FAKE_NVML))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    yield pids


def _context(tmp_path: Path, emit, gpus: tuple[Gpu, ...], **gpu: object) -> JobContext:
    config = replace(SiteConfig(), "stage", input_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    config = replace(config, "monitor", free_space_start_mb=1, use_cgroup=False, report_interval=0.2)
    if gpu:
        config = replace(config, "gpu", **gpu)
    return JobContext(config, 1, "host", tmp_path / "jobs", tmp_path, emit, base_dir=tmp_path, gpus=gpus)


def _run(tmp_path: Path, command: str, gpus: tuple[Gpu, ...], **gpu: object):
    """The job life as a worker rank runs it, with rank 0's verdict on each heartbeat (a kill on a failed check)."""
    control = JobControl()
    beats: list[Heartbeat] = []
    spec = JobSpec.from_wire(make_job(31, command))
    ctx = _context(tmp_path, None, gpus, **gpu)
    limits = limits_for_job(spec.min_ram_count, spec.core_count, spec.looping_check, ctx.config.monitor,
                            ctx.config.gpu.memory_limit_mb)

    def emit(message: Message) -> None:
        if isinstance(message, Heartbeat):
            beats.append(message)
            verdict = check_report(message.report, limits, message.report.time - 60)
            if verdict is not None:
                control.request_kill(int(verdict.code), verdict.diag)

    ctx = JobContext(**{**ctx.__dict__, "emit": emit})
    record = run_job(spec, limits, ctx, control)
    return record, beats, tmp_path / "jobs" / "PandaJob_31"


def test_a_payload_holding_gpu_memory_shows_in_prmon_reports_and_job_metrics(tmp_path, nvml):
    command = f'echo "0 2048" > {nvml}/$$; sleep 1.2'
    record, beats, workdir = _run(tmp_path, command, (A100, A100B))
    assert record.state == JobState.FINISHED, record.pilot_error_diag
    measured = [b.report.gpu for b in beats if b.report.gpu is not None and b.report.gpu.ngpus]
    assert measured, [b.report.gpu for b in beats]
    assert {(g.ngpus, g.gpusmpct, g.gpumempct, g.gpufbmem) for g in measured} == {(1, 87, 40, 2048 * 1024)}
    columns = read_prmon_text(workdir / PRMON_TEXT)
    header = (workdir / PRMON_TEXT).read_text().splitlines()[0].split("\t")
    assert header[-4:] == ["ngpus", "gpusmpct", "gpumempct", "gpufbmem"]
    rows = [line.split("\t") for line in (workdir / PRMON_TEXT).read_text().splitlines()[1:]]
    assert len(rows) == len(columns["Time"]) and any(row[-1] == str(2048 * 1024) for row in rows)
    summary = json.loads((workdir / PRMON_SUMMARY).read_text())
    assert summary["Max"]["gpufbmem"] == 2048 * 1024 and summary["Max"]["ngpus"] == 1
    assert summary["HW"]["gpu"] == {"nGPU": 2, "gpu_0": {"name": A100.model, "sm_freq": 1410, "total_mem": 41943040},
                                    "gpu_1": {"name": A100.model, "sm_freq": 1410, "total_mem": 41943040}}
    metrics = dict(item.split("=", 1) for item in record.job_metrics.split())
    assert metrics["GPU_name"] == "NVIDIA_A100-SXM4-40GB" and metrics["nGPU"] == "2"


def test_over_the_sites_gpu_memory_limit_the_payload_is_killed_with_1235(tmp_path, nvml):
    command = f'echo "1 3000" > {nvml}/$$; sleep 30'
    record, _beats, _workdir = _run(tmp_path, command, (A100, A100B), memory_limit_mb=2048)
    assert record.state == JobState.FAILED
    assert record.pilot_error_code == int(ErrorCode.PAYLOADEXCEEDMAXMEM) == 1235
    assert "3000 MB of GPU memory on GPU 1" in record.pilot_error_diag and "2048 MB" in record.pilot_error_diag


def test_a_cpu_rank_writes_no_gpu_column_and_asks_nvml_nothing(tmp_path, nvml):
    record, beats, workdir = _run(tmp_path, "sleep 0.5", ())
    assert record.state == JobState.FINISHED
    assert all(b.report.gpu is None for b in beats)
    assert "ngpus" not in (workdir / PRMON_TEXT).read_text().splitlines()[0]
    assert "GPU_name" not in record.job_metrics and "pynvml" not in sys.modules


def test_without_pynvml_gpus_are_named_but_not_measured(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "fakenvml" not in p])
    if gpumon.importlib.util.find_spec("pynvml") is not None:
        pytest.skip("a real pynvml is installed here")
    record, beats, workdir = _run(tmp_path, "sleep 0.5", (A100,))
    assert record.state == JobState.FINISHED and all(b.report.gpu is None for b in beats)
    assert "ngpus" not in (workdir / PRMON_TEXT).read_text().splitlines()[0]
    assert "GPU_name=NVIDIA_A100-SXM4-40GB nGPU=1" in record.job_metrics


def test_importing_the_monitoring_on_a_cpu_node_loads_no_vendor_library():
    code = ("import sys; import hpcpilot.joblife, hpcpilot.monitor.gpu as g; "
            "assert g.NvmlMonitor.open(()) is None; print(sorted(m for m in sys.modules if 'nvml' in m or 'smi' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_gpu_samples_land_in_the_run_record(tmp_path):
    recorder = RunRecorder(tmp_path / "run.h5")
    recorder.add_gpu_samples(2, 31, [(100.0, gpumon.GpuSample(1, 87, 40, 2097152, 2097152, "0"))])
    recorder.add_gpu_samples(2, 31, [(101.0, gpumon.GpuSample(1, 90, 41, 2097152, 2097152, "0"))])
    recorder.close()
    with h5py.File(tmp_path / "run.h5") as f:
        rows = f["ranks/2/jobs/31/gpu_samples"][:]
        assert [(r["time"], r["gpusmpct"], r["gpufbmem"]) for r in rows] == [(100.0, 87, 2097152),
                                                                              (101.0, 90, 2097152)]
        assert json.loads(f["ranks/2/jobs/31/gpu_samples"].attrs["units"])["gpufbmem"] == "kB"


def test_the_rank_sees_its_binding_s_gpus():
    node = {NODE_GPUS_KEY: NodeGpus((A100, A100B), "nvml").to_dict(),
            RANK_GPUS_KEY: RankGpus(("1",), {"CUDA_VISIBLE_DEVICES": "1"}, "auto").to_dict()}
    assert visible_gpus(node) == [A100B]
    assert visible_gpus({**node, RANK_GPUS_KEY: RankGpus((), {}, "none").to_dict()}) == [A100, A100B]
    assert visible_gpus({"node": "x"}) is None
