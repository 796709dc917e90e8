"""The issue's acceptance run: ``mpiexec -n 4 hpcpilot run`` over three jobs, one of which leaks, then
``hpcpilot report WORKDIR/run.h5``.  All three run examples/leaky_payload.py for 13 s (one with
``--leak-kb 512``, two with ``--leak-kb 0``), each on top of a 64 MiB resident footprint.

The report must name the leaking job and the rank that ran it and flag nothing else; its leak must agree
with pilot3's fit (PyPI panda-pilot, used as a black box) of the same time series from run.h5 within 1 %;
the job's own ``leak=`` in jobMetrics (fitted on the worker) must agree with pilot3's fit of the run.h5
series and of the job's prmon text file; and the PNGs must be real images in which the leaking rank's
panel is the one marked.

Which series is which: the worker fits the samples it takes while the payload runs, and sends each of
them to rank 0 in its heartbeat, which appends it to run.h5; the same samples (those with a live process
tree) are the rows of the job's ``memory_monitor_output.txt``.  So all three are one series, and the test
checks that too.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcpilot.monitor.leakfit import fit_leak, fit_prmon, format_metric
from hpcpilot.monitor.prmon import read_prmon_text
from tests.pilotrun import REPO, PilotRun, make_job, run_pilot

pytestmark = pytest.mark.mpi

analytics = pytest.importorskip("pilot.api.analytics")

PAYLOAD = REPO / "examples" / "leaky_payload.py"
DURATION = 13.0  # s: about 26 samples at monitor.report_interval=0.5 (tests.pilotrun.FAST)
LEAK_KB = 512  # per 0.1 s step: 5120 kB/s, far above the report's 17.1 kB/s threshold
BASE_MIB = 64  # resident footprint of every payload before it starts (see _WRAPPER)
# leaky_payload.py alone is a ~7 MB Python process.  Its PSS moves by several hundred kB when other
# processes on the node map or unmap the same shared libraries (measured: +54 kB/s over the fit window
# of a --leak-kb 0 run next to other pilots), which is within reach of the report's 10 % growth rule
# for so small a footprint.  Real payloads are hundreds of MB, so each one here gets a written (hence
# resident) block first and the same PSS noise is then far below 10 %.
_WRAPPER = """import runpy, sys
ballast = b"\\x01" * ({mib} << 20)
sys.argv = [{payload!r}, *sys.argv[1:]]
runpy.run_path({payload!r}, run_name="__main__")
"""
CLEAN_A, LEAKY, CLEAN_B = 8101, 8102, 8103
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("memory_per_rank.png", "cpu_efficiency.png", "events_per_second.png")
LEAK_PANEL_RGB = (0xFF, 0xF1, 0xF0)  # report/plots.py's face colour of a leaking rank's memory panel


def _payload(wrapper: Path, leak_kb: int) -> str:
    """examples/leaky_payload.py (through the wrapper that gives it a baseline footprint)."""
    return f"{sys.executable} {wrapper} --leak-kb {leak_kb} --interval 0.1 --duration {DURATION:g}"


@dataclass
class LeakRun:
    pilot: PilotRun
    report: subprocess.CompletedProcess[str]
    plots: Path

    @property
    def h5(self) -> Path:
        return self.pilot.workdir / "run.h5"

    def rank_of(self, panda_id: int) -> int:
        return int(self.pilot.jobs[panda_id]["rank"])


@pytest.fixture(scope="module")
def leak_run(tmp_path_factory: pytest.TempPathFactory) -> LeakRun:
    tmp = tmp_path_factory.mktemp("leakrun")
    wrapper = tmp / "payload_with_footprint.py"
    wrapper.write_text(_WRAPPER.format(mib=BASE_MIB, payload=str(PAYLOAD)))
    jobs = [make_job(CLEAN_A, _payload(wrapper, 0)), make_job(LEAKY, _payload(wrapper, LEAK_KB)),
            make_job(CLEAN_B, _payload(wrapper, 0))]
    pilot = run_pilot(tmp, jobs, ranks=4, timeout=90)
    assert pilot.returncode == 0, pilot.stderr[-3000:]
    assert sorted(pilot.jobs) == [CLEAN_A, LEAKY, CLEAN_B]
    assert all(job["state"] == "finished" for job in pilot.jobs.values()), pilot.jobs
    plots = tmp / "plots"
    report = subprocess.run([sys.executable, "-m", "hpcpilot", "report", str(pilot.workdir / "run.h5"),
                             "--plots", str(plots)], capture_output=True, text=True, cwd=tmp, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    return LeakRun(pilot, report, plots)


# -- helpers ----------------------------------------------------------------------------------------


def _h5_samples(run: LeakRun, panda_id: int) -> np.ndarray:
    """The job's samples as rank 0 recorded them, in time order."""
    with h5py.File(run.h5, "r", locking=False) as f:
        samples = f[f"ranks/{run.rank_of(panda_id)}/jobs/{panda_id}/samples"][:]
    return samples[np.argsort(samples["time"], kind="stable")]


def _prmon_file(run: LeakRun, panda_id: int) -> Path:
    found = sorted(run.pilot.workdir.glob(f"jobs/rank*/PandaJob_{panda_id}/memory_monitor_output.txt"))
    assert len(found) == 1, found
    assert found[0].parent.parent.name == f"rank{run.rank_of(panda_id)}"
    return found[0]


class _RecordingAnalytics(analytics.Analytics):
    """pilot3's Analytics, keeping its last Fit so the unrounded slope can be compared."""

    last = None

    def fit(self, x, y, model="linear"):
        self.last = super().fit(x, y, model)
        return self.last


def _pilot3_final_fit(path: Path) -> tuple[str, float, int]:
    """pilot3's final-update leak fit of a prmon-format file: (rounded slope, slope, points used)."""
    client = _RecordingAnalytics()
    logging.disable(logging.CRITICAL)
    try:
        data = client.get_fitted_data(str(path), tails=False)
    finally:
        logging.disable(logging.NOTSET)
    assert data["slope"] != "" and client.last is not None, f"pilot3 made no fit of {path}"
    return data["slope"], float(client.last.slope()), len(client.last._x)


def _write_series(path: Path, times: np.ndarray, memory: np.ndarray) -> Path:
    """A series as a prmon-format file (header names as prmon's), exactly, for pilot3 to read."""
    with path.open("w") as out:
        out.write("Time\tpss\tswap\n")
        out.writelines(f"{float(t)!r}\t{float(m)!r}\t0.0\n" for t, m in zip(times, memory, strict=True))
    return path


def _job_metrics_leak(record: dict) -> str:
    """The ``leak=`` value of a job record's jobMetrics, as written (kB/s, 2 decimals)."""
    match = re.search(r"(?:^| )leak=(-?\d+\.\d\d)(?: |$)", record.get("jobMetrics", ""))
    assert match, f"no leak= in jobMetrics {record.get('jobMetrics')!r}"
    return match.group(1)


def _report_rows(text: str) -> dict[int, tuple[int, str]]:
    """PandaID -> (rank, leak kB/s column) from the report's table of memory peaks per job."""
    rows = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 9 and fields[0].isdigit() and fields[1].isdigit():
            rows[int(fields[0])] = (int(fields[1]), fields[7])
    return rows


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# -- the acceptance checks --------------------------------------------------------------------------


def test_report_names_the_leaking_job_and_its_rank_only(leak_run: LeakRun) -> None:
    out = leak_run.report.stdout
    leaky_rank = leak_run.rank_of(LEAKY)
    assert leaky_rank != 0  # rank 0 is the controller; a worker rank ran it
    assert "jobs: 3 finished" in out, out
    rows = _report_rows(out)
    assert {panda_id: rank for panda_id, (rank, _) in rows.items()} == {
        panda_id: leak_run.rank_of(panda_id) for panda_id in (CLEAN_A, LEAKY, CLEAN_B)}, out
    leak_lines = [line for line in out.splitlines() if "LEAK:" in line]
    assert len(leak_lines) == 1, out
    assert f"LEAK: job {LEAKY} on rank {leaky_rank}:" in leak_lines[0]
    for clean in (CLEAN_A, CLEAN_B):
        assert not any(str(clean) in line for line in leak_lines), out
    # enough samples for a real final-update fit (5 first and 2 last points dropped)
    match = re.search(r"leak=(-?\d+\.\d\d) kB/s, chi2=\S+, (\d+) points\)", leak_lines[0])
    assert match, leak_lines[0]
    assert int(match.group(2)) >= 13
    assert len(_h5_samples(leak_run, LEAKY)) >= 20
    # the table's leak column is the same figure as the LEAK line
    assert rows[LEAKY][1] == match.group(1)


def test_report_leak_agrees_with_pilot3_on_the_run_record_series(leak_run: LeakRun, tmp_path: Path) -> None:
    samples = _h5_samples(leak_run, LEAKY)
    times = samples["time"].astype(float)
    memory = (samples["pss"] + samples["swap"]).astype(float)
    reference_text, reference, n_points = _pilot3_final_fit(_write_series(tmp_path / "h5.txt", times, memory))
    printed = re.search(r"LEAK: job \d+ on rank \d+: PSS\+swap grows \(leak=(-?\d+\.\d\d) kB/s",
                        leak_run.report.stdout)
    assert printed, leak_run.report.stdout
    report_leak = float(printed.group(1))
    assert _relative(report_leak, reference) <= 0.01, (report_leak, reference)
    # the same series and the same rules: the same numbers, to the printed digits
    assert printed.group(1) == reference_text
    assert fit_leak(times, memory, final=True).n_points == n_points
    # the job's own jobMetrics leak (fitted on the worker) is the same figure
    metrics_leak = _job_metrics_leak(leak_run.pilot.jobs[LEAKY])
    assert _relative(float(metrics_leak), reference) <= 0.01, (metrics_leak, reference)
    assert metrics_leak == reference_text
    assert reference == pytest.approx(LEAK_KB * 10, rel=0.25)  # the payload's rate, kB/s


def test_job_metrics_leak_agrees_with_pilot3_on_the_job_prmon_file(leak_run: LeakRun) -> None:
    path = _prmon_file(leak_run, LEAKY)
    columns = read_prmon_text(path)  # by header name
    reference_text, reference, n_points = _pilot3_final_fit(path)
    metrics_leak = _job_metrics_leak(leak_run.pilot.jobs[LEAKY])
    assert _relative(float(metrics_leak), reference) <= 0.01, (metrics_leak, reference)
    ours = fit_prmon(columns, final=True)
    assert ours is not None and ours.n_points == n_points
    assert format_metric(ours.slope) == reference_text
    # the prmon rows are the run record's samples of a live process tree, times included
    samples = _h5_samples(leak_run, LEAKY)
    live = samples[samples["nprocs"] > 0]
    assert columns["Time"] == [float(t) for t in live["time"]]
    assert [p + s for p, s in zip(columns["pss"], columns["swap"], strict=True)] == \
        [float(m) for m in live["pss"] + live["swap"]]


def test_every_job_has_the_same_leak_in_report_and_job_metrics(leak_run: LeakRun) -> None:
    """The worker's jobMetrics and rank 0's record fit one series, for the clean jobs too."""
    rows = _report_rows(leak_run.report.stdout)
    for panda_id in (CLEAN_A, LEAKY, CLEAN_B):
        assert rows[panda_id][1] == _job_metrics_leak(leak_run.pilot.jobs[panda_id]), panda_id
    # not flagged (first test) and nowhere near: PSS noise of a steady payload, not a leak
    assert float(rows[LEAKY][1]) > 10 * max(abs(float(rows[c][1])) for c in (CLEAN_A, CLEAN_B))


def _png_info(path: Path):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        return image.size, dict(image.text), np.asarray(image.convert("RGB"))


def test_plots_are_real_images_and_mark_the_leaking_rank(leak_run: LeakRun) -> None:
    pytest.importorskip("PIL")
    for name in PLOTS:
        assert f"plot: {leak_run.plots / name}" in leak_run.report.stdout
        png = leak_run.plots / name
        (width, height), _, pixels = _png_info(png)
        assert 500 <= width <= 4000 and 300 <= height <= 4000, (png, width, height)
        assert png.stat().st_size > 10_000, png
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{png} is nearly blank"
    (width, height), text, pixels = _png_info(leak_run.plots / "memory_per_rank.png")
    leaky_rank = leak_run.rank_of(LEAKY)
    leak = _job_metrics_leak(leak_run.pilot.jobs[LEAKY])
    assert text.get("Description") == f"leaking: rank {leaky_rank} (job {LEAKY}, leak={leak} kB/s)"
    # one panel per rank that ran a job, top to bottom by rank; only the leaking rank's panel is red
    ranks = sorted({leak_run.rank_of(panda_id) for panda_id in (CLEAN_A, LEAKY, CLEAN_B)})
    red_rows = np.flatnonzero((pixels == LEAK_PANEL_RGB).all(axis=2).mean(axis=1) > 0.3)
    assert len(red_rows) > height / (3 * len(ranks)), "no red (leaking) panel in the memory plot"
    assert red_rows[-1] - red_rows[0] < height / len(ranks), "more than one panel marked as leaking"
    slot = ranks.index(leaky_rank)
    centre = (red_rows[0] + red_rows[-1]) / 2 / height
    assert slot / len(ranks) <= centre <= (slot + 1) / len(ranks), (ranks, leaky_rank, centre)
