"""``hpcpilot report`` on a run record built from real payload processes.

Three "ranks" run real payloads at the same time: rank 1 runs examples/leaky_payload.py
leaking on purpose, rank 2 the same payload without the leak, rank 3 a payload that fails.
They are sampled from /proc with the pilot's own tree reader every 0.15 s and the samples,
event ranges (from the payloads' "event" lines), node info and job records go through
RunRecorder exactly as rank 0 would write them.  The report must name the leaking job
and rank, its fit must agree with pilot3's fit of the same series, and the plots must be
real images.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hpcpilot.errors import ErrorCode
from hpcpilot.monitor.leakfit import fit_leak, fit_prmon, job_metrics_fields
from hpcpilot.monitor.prmon import PrmonWriter, read_prmon_text
from hpcpilot.monitor.procfs import read_tree
from hpcpilot.monitor.samples import TreeSample
from hpcpilot.report import (
    add_report_parser,
    job_stats,
    load_run,
    memory_series,
    report_main,
    summarize,
    write_plots,
)
from hpcpilot.runrecord import RunRecorder

analytics = pytest.importorskip("pilot.api.analytics")

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = REPO / "examples" / "leaky_payload.py"
SAMPLE_INTERVAL = 0.15
LEAKY, CLEAN, FAILING = 5001, 5002, 5003
JOBS = {  # PandaID -> (rank, command)
    LEAKY: (1, [sys.executable, str(PAYLOAD), "--leak-kb", "256", "--interval", "0.1", "--duration", "8"]),
    CLEAN: (2, [sys.executable, str(PAYLOAD), "--leak-kb", "0", "--interval", "0.1", "--duration", "8",
                "--work", "400000"]),
    FAILING: (3, [sys.executable, "-c", "import time, sys; time.sleep(1.5); sys.exit(3)"]),
}


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _sample_until_done(procs: dict[int, subprocess.Popen], recorder: RunRecorder,
                       ended: dict[int, float]) -> dict[int, list[TreeSample]]:
    """Sample every live payload tree each interval; hand samples to the recorder in batches of 10."""
    kept: dict[int, list[TreeSample]] = {panda_id: [] for panda_id in procs}
    pending: dict[int, list[TreeSample]] = {panda_id: [] for panda_id in procs}
    while len(ended) < len(procs):
        for panda_id, proc in procs.items():
            if proc.poll() is not None:
                ended.setdefault(panda_id, time.time())
                continue
            sample = read_tree(proc.pid)
            if sample.nprocs and sample.pss > 0:
                kept[panda_id].append(sample)
                pending[panda_id].append(sample)
            if len(pending[panda_id]) >= 10:
                recorder.add_samples(JOBS[panda_id][0], panda_id, pending[panda_id])
                pending[panda_id] = []
        time.sleep(SAMPLE_INTERVAL)
    for panda_id, rows in pending.items():
        recorder.add_samples(JOBS[panda_id][0], panda_id, rows)
    return kept


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """(path of the run record, samples per PandaID) from real payload processes."""
    workdir = tmp_path_factory.mktemp("run")
    path = workdir / "RUN.h5"
    recorder = RunRecorder(path)
    for rank in (1, 2, 3):
        recorder.add_node(rank, {"hostname": socket.gethostname(), "rank": rank, "cores": os.cpu_count()})
    starts: dict[int, float] = {}
    ended: dict[int, float] = {}
    procs = {}
    for panda_id, (_, command) in JOBS.items():
        starts[panda_id] = time.time()
        procs[panda_id] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        samples = _sample_until_done(procs, recorder, ended)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for panda_id, proc in procs.items():
        rank = JOBS[panda_id][0]
        output = proc.stdout.read()
        proc.stdout.close()
        proc.wait()
        events = [line.split() for line in output.splitlines() if line.startswith("event ")]
        for _, number, stamp in events:
            recorder.add_event_ranges(rank, panda_id, [{"eventRangeID": f"{panda_id}-{number}",
                                                       "eventStatus": "finished"}], when=float(stamp))
        rows = samples[panda_id]
        ok = proc.returncode == 0
        recorder.add_job({
            "jobId": panda_id, "rank": rank, "state": "finished" if ok else "failed",
            "pilotErrorCode": 0 if ok else int(ErrorCode.PAYLOADEXECUTIONFAILURE),
            "transExitCode": proc.returncode, "coreCount": 1, "nEvents": len(events),
            "cpuConsumptionTime": int(rows[-1].utime + rows[-1].stime) if rows else 0,
            "maxPSS": max((s.pss for s in rows), default=0),
            "startTime": _stamp(starts[panda_id]), "endTime": _stamp(ended[panda_id]),
        })
    recorder.close()
    return path, samples


class _RecordingAnalytics(analytics.Analytics):
    last = None

    def fit(self, x, y, model="linear"):
        self.last = super().fit(x, y, model)
        return self.last


def _pilot3(path: Path, final: bool):
    client = _RecordingAnalytics()
    logging.disable(logging.CRITICAL)
    try:
        data = client.get_fitted_data(str(path), tails=not final)
    finally:
        logging.disable(logging.NOTSET)
    return data, client.last


def test_summary_names_the_leaking_job_and_rank(recorded_run):
    path, samples = recorded_run
    assert len(samples[LEAKY]) >= 20 and len(samples[CLEAN]) >= 20
    text = summarize(load_run(path))
    leak_lines = [line for line in text.splitlines() if "LEAK:" in line]
    assert len(leak_lines) == 1, text
    assert f"job {LEAKY} on rank 1" in leak_lines[0]
    assert "jobs: 1 failed, 2 finished" in text
    assert f"{int(ErrorCode.PAYLOADEXECUTIONFAILURE)} PAYLOADEXECUTIONFAILURE" in text
    assert "CPU efficiency" in text and "overall" in text
    assert "event ranges: " in text and " finished" in text
    stats = {job.panda_id: job for job in job_stats(load_run(path))}
    assert stats[LEAKY].leaking and not stats[CLEAN].leaking and not stats[FAILING].leaking
    assert stats[LEAKY].max_pss > stats[CLEAN].max_pss
    assert stats[LEAKY].cpu_s > 0 and stats[CLEAN].cpu_s > 0


def test_leak_agrees_with_pilot3_on_the_recorded_series(recorded_run, tmp_path):
    path, _ = recorded_run
    run = load_run(path)
    times, memory = memory_series(run.series[(1, LEAKY)])
    ours = {job.panda_id: job for job in job_stats(run)}[LEAKY].fit
    # the same series, as a prmon-format file the way pilot3 reads it
    text = tmp_path / "memory_monitor_output.txt"
    with text.open("w") as out:
        out.write("Time\tpss\tswap\n")
        out.writelines(f"{float(t)!r}\t{float(m)!r}\t0.0\n" for t, m in zip(times, memory, strict=True))
    data, reference = _pilot3(text, final=True)
    assert reference is not None and data["slope"] != ""
    assert abs(ours.slope - reference.slope()) <= 0.01 * abs(reference.slope())
    assert ours.n_points == len(reference._x)
    assert job_metrics_fields(ours)["leak"] == data["slope"]
    assert job_metrics_fields(ours)["chi2"] == data["chi2"]
    # heartbeat-style fit of the same series too
    data, reference = _pilot3(text, final=False)
    heartbeat = fit_leak(times, memory, final=False)
    assert abs(heartbeat.slope - reference.slope()) <= 0.01 * abs(reference.slope())
    assert job_metrics_fields(heartbeat)["leak"] == data["slope"]


def test_prmon_file_of_the_payload_fits_like_pilot3(recorded_run, tmp_path):
    """The prmon text file of the leaking payload, read by header name, fits as pilot3 fits it."""
    _, samples = recorded_run
    rows = samples[LEAKY]
    text = tmp_path / "memory_monitor_output.txt"
    writer = PrmonWriter(text, start=rows[0].time)
    for row in rows:
        writer.append(row)
    for final in (False, True):
        ours = fit_prmon(read_prmon_text(text), final)
        data, reference = _pilot3(text, final)
        assert abs(ours.slope - reference.slope()) <= 0.01 * abs(reference.slope())
        assert job_metrics_fields(ours)["leak"] == data["slope"]
        assert ours.slope > 17.1  # kB/s: above the report's 1 MiB/min threshold


def test_plots_are_real_images(recorded_run, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    path, _ = recorded_run
    paths = write_plots(load_run(path), tmp_path / "plots")
    assert [p.name for p in paths] == ["memory_per_rank.png", "cpu_efficiency.png", "events_per_second.png",
                                       "rank_timeline.png"]
    for png in paths:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000, png
        image = imread(png)
        assert image.shape[0] >= 300 and image.shape[1] >= 500
        assert image[..., :3].std() > 0.05, f"{png} is nearly blank"
    # the memory plot's verdict names the leaking rank, job and fitted leak (the jobMetrics figure)
    from PIL import Image

    leak = job_metrics_fields({job.panda_id: job for job in job_stats(load_run(path))}[LEAKY].fit)["leak"]
    with Image.open(paths[0]) as image:
        assert image.text["Description"] == f"leaking: rank 1 (job {LEAKY}, leak={leak} kB/s)"


def _report(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hpcpilot")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    return args.func(args)


def test_report_command_prints_summary_and_writes_plots(recorded_run, tmp_path, capsys):
    path, _ = recorded_run
    assert _report(str(path), "--plots", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert f"LEAK: job {LEAKY} on rank 1" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cpu_efficiency.png", "events_per_second.png", "memory_per_rank.png", "rank_timeline.png"]
    assert _report(str(path), "--no-plots", "--leak-threshold", "1e6") == 0
    assert "none flagged" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, b"", b"not an hdf5 file at all\n" * 40, "foreign-hdf5"])
def test_bad_run_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "RUN.h5"
    if content == "foreign-hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            f["x"] = [1, 2, 3]
    elif content is not None:
        path.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "hpcpilot.report", str(path)], capture_output=True,
                            text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"hpcpilot report: {path}: ")


def test_report_main_on_missing_file(tmp_path, capsys):
    assert report_main(argparse.Namespace(run=tmp_path / "nope.h5", plots=None, no_plots=True)) == 2
    assert capsys.readouterr().err.strip() == f"hpcpilot report: {tmp_path / 'nope.h5'}: no such file"


def _synthetic_run(path: Path, ranks: int, leaky_rank: int, slope_kb_s: float, base_kb: int) -> None:
    """A run record with one job per rank; the job on ``leaky_rank`` grows at ``slope_kb_s``."""
    t0 = 1_700_000_000.0
    with RunRecorder(path) as recorder:
        for rank in range(ranks):
            slope = slope_kb_s if rank == leaky_rank else 0.0
            rows = [TreeSample(t0 + 60.0 * i, int(base_kb + slope * 60.0 * i + (i % 3) * 50), base_kb, 0,
                               2 * base_kb, 30.0 * i, 1.0 * i, 1, 4, 0, 0, 0, 0) for i in range(150)]
            recorder.add_samples(rank, 9000 + rank, rows)
            record = {"jobId": 9000 + rank, "rank": rank, "state": "finished", "coreCount": 1,
                      "startTime": t0, "endTime": t0 + 60.0 * 149}
            if rank == 5:
                del record["rank"]  # matched to its samples by PandaID
            recorder.add_job(record)


def test_many_ranks_and_the_relative_growth_rule(tmp_path):
    path = tmp_path / "big.h5"
    _synthetic_run(path, ranks=20, leaky_rank=13, slope_kb_s=40.0, base_kb=1_000_000)
    run = load_run(path)
    stats = job_stats(run)
    assert [job.panda_id for job in stats if job.leaking] == [9013]
    assert len(stats) == 20 and all(job.state == "finished" for job in stats)
    assert "LEAK: job 9013 on rank 13" in summarize(run)
    assert "rank   13:  51.7 %" in summarize(run)  # (30 + 1) s CPU per 60 s wall
    paths = write_plots(run, tmp_path / "plots")
    assert all(p.stat().st_size > 10_000 for p in paths)
    # the same rate on a 20 GB footprint grows by less than 10 % in 149 minutes: not flagged
    path = tmp_path / "drift.h5"
    _synthetic_run(path, ranks=2, leaky_rank=1, slope_kb_s=18.0, base_kb=20_000_000)
    assert not any(job.leaking for job in job_stats(load_run(path)))
    assert "none flagged" in summarize(load_run(path))


def test_report_without_matplotlib_prints_a_note(recorded_run, tmp_path, capsys, monkeypatch):
    import hpcpilot.report.plots as plots

    monkeypatch.setattr(plots, "plots_available", lambda: False)
    path, _ = recorded_run
    assert _report(str(path), "--plots", str(tmp_path / "none")) == 0
    captured = capsys.readouterr()
    assert f"LEAK: job {LEAKY} on rank 1" in captured.out
    assert captured.err.strip() == ("hpcpilot report: plots skipped, matplotlib is not installed "
                                    "(pip install 'hpcpilot[plots]')")
    assert not (tmp_path / "none").exists()
    assert write_plots(load_run(path), tmp_path / "none") == []


# -- the report of a real pilot run against its summary.json ------------------------------------------------

BURN_S = 0.3
# the payload is a shell whose child burns BURN_S of CPU and exits: its CPU reaches the job through wait4
BURN = (f"{sys.executable} -c 'import time; "
        f"[None for _ in iter(lambda: time.process_time() < {BURN_S}, False)]'; true")
SHORT, LIMITED = 6101, 6102


@pytest.fixture(scope="module")
def pilot_run(tmp_path_factory):
    from tests.pilotrun import make_job, run_pilot

    tmp = tmp_path_factory.mktemp("pilot")
    jobs = [make_job(SHORT, BURN), make_job(LIMITED, "sleep 0.1", minRamCount=300, coreCount=2)]
    run = run_pilot(tmp, jobs)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _figures(run, tmp_path):
    """Every figure write_plots makes, kept for their labels and lines."""
    from matplotlib.figure import Figure

    made = []

    class Kept(Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    write_plots(run, tmp_path / "plots", figure_cls=Kept)
    return made


def test_report_cpu_is_the_summary_precise_cpu_of_a_short_job(pilot_run):
    job = pilot_run.jobs[SHORT]
    assert job["state"] == "finished", job
    assert job["cpuSeconds"] >= BURN_S  # the child's CPU, taken when the shell was reaped
    assert job["cpuConsumptionTime"] == round(job["cpuSeconds"])  # PanDA's field stays whole seconds
    run = load_run(pilot_run.workdir / "run.h5")
    stats = {s.panda_id: s for s in job_stats(run)}
    assert stats[SHORT].cpu_s == pytest.approx(job["cpuSeconds"], abs=1e-6)
    rows = {int(line.split()[0]): line.split() for line in summarize(run).splitlines()
            if len(line.split()) == 6 and line.split()[0].isdigit()}
    assert float(rows[SHORT][3]) == pytest.approx(job["cpuSeconds"], abs=5e-4)  # the per-job table, s


def test_report_memory_limit_is_the_job_limit(pilot_run, tmp_path):
    from hpcpilot.config import load_config
    from hpcpilot.monitor.metrics import limits_for_job
    from hpcpilot.runrecord import MEMORY_LIMIT_KEY

    monitor = load_config(pilot_run.workdir / "config.effective.toml").monitor
    expected = {SHORT: limits_for_job(2000, 1, True, monitor).memory_kb,
                LIMITED: limits_for_job(300, 2, True, monitor).memory_kb}
    run = load_run(pilot_run.workdir / "run.h5")
    assert {int(r["jobId"]): r[MEMORY_LIMIT_KEY] for r in run.jobs} == expected
    assert {s.panda_id: s.memory_limit_kb for s in job_stats(run)} == expected
    memory = _figures(run, tmp_path)[0]
    drawn = sorted(float(line.get_ydata()[0]) for ax in memory.axes for line in ax.get_lines()
                   if line.get_gid() == "memory-limit")
    assert drawn == sorted(limit / 1024 for limit in expected.values())  # MiB


def _synthetic_short_jobs(path: Path) -> None:
    """Rank 1: one job with a single sample near its limit; rank 2: a job with no sample at all."""
    t0 = 1_700_000_000.0
    with RunRecorder(path) as recorder:
        recorder.add_samples(1, 7001, [TreeSample(t0, 90_000, 90_000, 0, 200_000, 0.05, 0.05, 1, 1, 0, 0, 0, 0)])
        recorder.add_job({"jobId": 7001, "rank": 1, "state": "finished", "startTime": t0, "endTime": t0 + 0.4,
                          "cpuSeconds": 0.3}, memory_limit_kb=100 * 1024)
        recorder.add_job({"jobId": 7002, "rank": 2, "state": "finished", "startTime": t0, "endTime": t0 + 0.1},
                         memory_limit_kb=100 * 1024)


def test_one_sample_marker_and_a_limit_on_the_scale(tmp_path):
    path = tmp_path / "short.h5"
    _synthetic_short_jobs(path)
    run = load_run(path)
    memory = _figures(run, tmp_path)[0]
    top, bottom = memory.axes
    (point,) = [line for line in top.get_lines() if line.get_gid() == "memory-7001"]
    assert point.get_marker() == "o" and point.get_linestyle() == "None"
    assert list(point.get_ydata()) == [90_000 / 1024]
    labels = top.get_legend_handles_labels()[1]
    assert "memory limit 100 MiB" in labels and any("(one sample)" in label for label in labels), labels
    assert top.get_ylim()[1] > 100  # the limit is on the scale: 90 MiB used of 100
    assert "no memory samples" in " ".join(text.get_text() for text in bottom.texts)
    assert [line.get_ydata()[0] for line in bottom.get_lines() if line.get_gid() == "memory-limit"] == [100.0]
    assert job_stats(run)[0].cpu_s == 0.3  # the record's cpuSeconds, not the sample's 0.1 s
    assert job_stats(run)[1].cpu_s == 0.0


def _texts(figure) -> list[str]:
    out = [figure.get_suptitle()] if hasattr(figure, "get_suptitle") else []
    for ax in figure.axes:
        out += [ax.get_title(loc) for loc in ("left", "center", "right")]
        out += [ax.get_xlabel(), ax.get_ylabel(), *ax.get_legend_handles_labels()[1]]
        out += [text.get_text() for text in ax.texts]
    return [text for text in out if text]


def test_one_unit_per_quantity(recorded_run, pilot_run, tmp_path):
    from hpcpilot.report import TIME_LABEL

    for path in (recorded_run[0], pilot_run.workdir / "run.h5"):
        run = load_run(path)
        texts = [summarize(run)]
        figures = _figures(run, tmp_path / path.stem)
        assert len(figures) == 4
        for figure in figures:
            texts += _texts(figure)
        memory, cpu, events, timeline = figures
        assert {ax.get_xlabel() for ax in memory.axes} <= {TIME_LABEL, ""}
        assert events.axes[0].get_xlabel() == timeline.axes[0].get_xlabel() == TIME_LABEL
        assert {ax.get_ylabel() for ax in memory.axes} == {"PSS+swap [MiB]"}
        assert events.axes[0].get_ylabel() == "events / s"
        assert cpu.axes[0].get_ylabel() == "CPU time / (wall x cores) [%]"
        text = "\n".join(texts).split("\n", 1)[1]  # the first line names the file
        # memory MiB, memory rates kB/s, time s: no other unit of any of them anywhere
        other = re.findall(r"\b(?:minutes?|min|ms|h|hours?|kB(?!/s)|KiB|MB|GB|GiB|MiB/\w+|bytes)\b", text)
        assert not other, (other, text)
