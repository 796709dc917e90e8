"""The leak fit against the established pilot's (pilot3, PyPI panda-pilot) on the same series.

pilot3 is used as a black box: its ``Analytics.get_fitted_data`` reads a prmon text file we
write, and a subclass records the last ``Fit`` it made so the unrounded slope, chi2 and
intercept (and how many points it used) can be compared, not only the rounded strings.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcpilot.monitor.leakfit import (
    LeakFit,
    fit_leak,
    fit_prmon,
    format_metric,
    job_metrics_fields,
)
from hpcpilot.monitor.prmon import PrmonWriter, read_prmon_text
from hpcpilot.monitor.samples import TreeSample

analytics = pytest.importorskip("pilot.api.analytics")
pilot_math = pytest.importorskip("pilot.util.math")

T0 = 1_700_000_000.0


@dataclass
class Reference:
    slope: str
    chi2: str
    fit: object | None  # pilot3's last Fit object (None when it fitted nothing)


class _RecordingAnalytics(analytics.Analytics):
    last = None

    def fit(self, x, y, model="linear"):
        result = super().fit(x, y, model)
        self.last = result
        return result


def reference(tmp_path: Path, times, memory, final: bool) -> Reference:
    """pilot3's leak fit of the series, through a prmon-format file as the pilot reads it."""
    path = tmp_path / "memory_monitor_output.txt"
    with path.open("w") as out:
        out.write("Time\tnprocs\tpss\trss\tswap\tvmem\n")
        for t, m in zip(times, memory, strict=True):
            out.write(f"{float(t)!r}\t1\t{float(m)!r}\t{float(m)!r}\t0.0\t{float(m)!r}\n")
    return reference_of_file(path, final)


def reference_of_file(path: Path, final: bool) -> Reference:
    """pilot3's leak fit of a prmon-format file."""
    client = _RecordingAnalytics()
    logging.disable(logging.CRITICAL)
    try:
        data = client.get_fitted_data(str(path), tails=not final)
    finally:
        logging.disable(logging.NOTSET)
    return Reference(data["slope"], data["chi2"], client.last if data["slope"] != "" else None)


def assert_agrees(ours: LeakFit | None, ref: Reference) -> None:
    if ref.fit is None:
        assert ours is None, "we made a fit where the reference made none"
        return
    assert ours is not None, "we made no fit where the reference did"
    assert ours.n_points == len(ref.fit._x)
    assert ours.slope == pytest.approx(ref.fit.slope(), rel=1e-9)
    assert ours.intercept == pytest.approx(ref.fit.intersect(), rel=1e-9)
    assert ours.chi2 == pytest.approx(ref.fit.chi2(), rel=1e-9, abs=1e-300)
    fields = job_metrics_fields(ours)
    assert fields["leak"] == ref.slope
    assert fields["chi2"] == ref.chi2
    assert fields["intersect"] == pilot_math.float_to_rounded_string(ref.fit.intersect(), precision=2)


def linear(n: int, rate: float = 5.0, step: float = 10.0, base: float = 200_000.0):
    times = [T0 + i * step for i in range(n)]
    return times, [base + rate * (t - T0) for t in times]


def noisy(n: int, seed: int, rate: float = 3.0, sigma: float = 400.0, step: float = 60.0):
    rng = random.Random(seed)
    times = [T0 + i * step + rng.uniform(-0.5, 0.5) for i in range(n)]
    return times, [float(round(1_500_000 + rate * (t - T0) + rng.gauss(0, sigma))) for t in times]


def warmup_and_spikes(n: int, seed: int, warmup: int = 12, spikes: int = 4):
    """A payload that allocates during start-up, then leaks slowly, then frees/reallocates at exit."""
    rng = random.Random(seed)
    times = [T0 + i * 60.0 for i in range(n)]
    memory = []
    for i, t in enumerate(times):
        value = 100_000 + 150_000 * i if i < warmup else 1_900_000 + 2.0 * (t - T0) + rng.gauss(0, 800)
        if i >= n - spikes:
            value += 900_000 * (i - (n - spikes) + 1)
        memory.append(float(round(value)))
    return times, memory


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("n", [8, 9, 14, 15, 16, 40, 99, 100, 101, 150, 151, 300])
def test_noisy_series_agree_with_pilot3(tmp_path, n, final):
    for seed in range(3):
        times, memory = noisy(n, seed)
        assert_agrees(fit_leak(times, memory, final), reference(tmp_path, times, memory, final))


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("n", [15, 60, 99])
def test_linear_series_agree_with_pilot3(tmp_path, n, final):
    times, memory = linear(n)
    ours = fit_leak(times, memory, final)
    assert_agrees(ours, reference(tmp_path, times, memory, final))
    assert ours.slope == pytest.approx(5.0, rel=1e-9)


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("n", [30, 99, 100, 120, 240, 601])
def test_warmup_and_tail_spikes_agree_with_pilot3(tmp_path, n, final):
    for seed in range(4):
        times, memory = warmup_and_spikes(n, seed)
        assert_agrees(fit_leak(times, memory, final), reference(tmp_path, times, memory, final))


def test_iterative_window_cuts_spikes_and_warmup():
    times, memory = warmup_and_spikes(240, seed=1)
    fit = fit_leak(times, memory, final=True)
    assert fit is not None
    # the window moved in from both ends, by the established pilot's step arithmetic
    assert fit.start % 10 == 0 and fit.start > 0
    assert fit.stop < 240 - 1
    assert fit.n_points == fit.stop - fit.start
    assert fit.slope == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("n", range(8))
def test_short_series_give_no_fit(tmp_path, n):
    times, memory = noisy(n, seed=0) if n else ([], [])
    for final in (False, True):
        assert fit_leak(times, memory, final) is None
        if n:
            assert reference(tmp_path, times, memory, final).fit is None


def test_eight_points_fit_for_heartbeat_only(tmp_path):
    times, memory = noisy(8, seed=5)
    assert fit_leak(times, memory, final=False).n_points == 8
    assert fit_leak(times, memory, final=True) is None
    assert reference(tmp_path, times, memory, final=True).fit is None
    # the final fit needs 8 points left after dropping 5 + 2
    assert fit_leak(*noisy(14, seed=5), final=True) is None
    assert fit_leak(*noisy(15, seed=5), final=True).n_points == 8


def test_99_points_drop_tails_100_points_trim_iteratively():
    times, memory = warmup_and_spikes(100, seed=2)
    fit_99 = fit_leak(times[:99], memory[:99], final=True)
    assert (fit_99.start, fit_99.stop) == (5, 97)
    fit_100 = fit_leak(times, memory, final=True)
    assert fit_100.start % 10 == 0
    # from 100 points on, heartbeats use the same iterative window as the final update
    assert fit_leak(times, memory, final=False) == fit_100


def test_zero_expected_value_gives_zero_chi2(tmp_path):
    times = [T0 + i for i in range(20)]
    memory = [-30.0 + 3.0 * i for i in range(20)]  # the line goes through 0 at i = 10
    ours = fit_leak(times, memory, final=False)
    assert ours.chi2 == 0.0
    assert_agrees(ours, reference(tmp_path, times, memory, final=False))


def test_perfect_line_with_many_points_stops_trimming():
    # chi2 of the full fit is 0: nothing can improve on it (pilot3 divides by zero here)
    times, memory = linear(150, rate=7.0, step=1.0)
    fit = fit_leak(times, memory, final=True)
    assert fit.slope == pytest.approx(7.0, rel=1e-12)
    assert fit.n_points >= 100


def test_flat_series_reports_zero_leak():
    times = [T0 + i for i in range(20)]
    fit = fit_leak(times, [4096.0] * 20, final=False)
    assert fit.slope == 0.0 and fit.intercept == 4096.0 and fit.chi2 == 0.0
    assert job_metrics_fields(fit) == {"leak": "0.00", "chi2": "0.00", "intersect": "4096.00"}


def test_degenerate_inputs():
    with pytest.raises(ValueError, match="10 times but 9 memory values"):
        fit_leak([T0 + i for i in range(10)], [1.0] * 9, final=False)
    assert fit_leak([T0] * 10, [float(i) for i in range(10)], final=False) is None
    times, memory = noisy(20, seed=0)
    memory[3] = math.nan
    assert fit_leak(times, memory, final=False) is None
    assert job_metrics_fields(None) == {}


@pytest.mark.parametrize("value", [0.0, 0.125, 0.135, 0.005, 0.015, 2.675, -0.005, -3.1e-7, 1e-12, 12.3456,
                                   -1234567.891, 8.5e9, -8.499999999995e9, 123456789012345.675, 1e20])
def test_format_metric_matches_pilot3(value):
    assert format_metric(value) == pilot_math.float_to_rounded_string(value, precision=2)


def test_format_metric_is_decimal_places_not_significant_digits():
    assert format_metric(1234.5678) == "1234.57"
    assert format_metric(0.0001234) == "0.00"
    assert format_metric(-0.001) == "-0.00"
    assert format_metric(1e30).startswith("1000000000000000000000000000000.00")


HEADERS = {
    "prmon 3.x": ["Time", "nprocs", "nthreads", "wtime", "stime", "utime", "pss", "rss", "swap", "vmem",
                  "rchar", "read_bytes", "wchar", "write_bytes", "rx_bytes", "rx_packets", "tx_bytes",
                  "tx_packets"],
    "prmon 2.x": ["Time", "pss", "rss", "swap", "vmem", "nprocs", "nthreads", "rchar", "read_bytes", "wchar",
                  "write_bytes", "stime", "utime", "wtime"],
    "MemoryMonitor": ["Time", "VMEM", "PSS", "RSS", "Swap", "rchar", "wchar", "rbytes", "wbytes"],
}


@pytest.mark.parametrize("layout", sorted(HEADERS))
def test_fit_prmon_finds_columns_by_name(layout, tmp_path):
    times, memory = noisy(120, seed=7)
    names = HEADERS[layout]
    pss_name = "PSS" if "PSS" in names else "pss"
    swap_name = "Swap" if "Swap" in names else "swap"
    columns = {name: [float(i % 7) for i in range(len(times))] for name in names}
    columns["Time"] = times
    columns[pss_name] = [m - 1000.0 for m in memory]
    columns[swap_name] = [1000.0] * len(times)
    for final in (False, True):
        ours = fit_prmon(columns, final)
        assert ours == fit_leak(times, [p + s for p, s in zip(columns[pss_name], columns[swap_name],
                                                               strict=True)], final)
        assert ours.slope == pytest.approx(reference(tmp_path, times, memory, final).fit.slope(), rel=1e-9)


def test_fit_prmon_names_missing_column():
    with pytest.raises(ValueError, match="no swap column"):
        fit_prmon({"Time": [1.0], "pss": [2.0]}, final=False)
    with pytest.raises(ValueError, match="differ in length"):
        fit_prmon({"Time": [1.0, 2.0], "pss": [2.0], "swap": [0.0]}, final=False)


def curved(n: int, seed: int):
    """Leak-like series with curved ends of random strength and noise of random size."""
    rng = random.Random(seed)
    times = [T0 + i * 60.0 for i in range(n)]
    late, power = rng.choice([0, 1, 2, 3]), rng.uniform(1, 6)
    memory = []
    for i in range(n):
        u = i / (n - 1)
        value = (1e6 + 1e5 * u + late * 1e6 * u ** (3 * power) + (1 - late % 2) * 8e5 * (1 - u) ** (3 * power)
                 + rng.gauss(0, 10 ** rng.uniform(0, 3)))
        memory.append(float(round(value)))
    return times, memory


def test_iterative_window_agrees_with_pilot3_on_many_shapes(tmp_path):
    """Covers every branch of the window search: either end found or not found."""
    ends = set()
    for seed in range(120):
        n = random.Random(seed).randint(100, 260)
        times, memory = curved(n, seed)
        ours = fit_leak(times, memory, final=True)
        assert_agrees(ours, reference(tmp_path, times, memory, final=True))
        ends.add((ours.start == 0, ours.stop == n - 1))
    assert ends == {(True, False), (False, True), (False, False)}


@pytest.mark.parametrize("n", [20, 21, 27])
def test_prmon_file_of_sub_second_samples_fits_like_the_samples(tmp_path, n):
    """hpcpilot's own prmon file keeps each sample's exact time, so the file fits as the samples do.

    The worker fits its samples for jobMetrics, rank 0 stores the same samples in the run record,
    and pilot3 would fit the prmon file: at a half-second report interval, times truncated to whole
    seconds moved pilot3's slope by about 1 % against the other two.
    """
    rng = random.Random(n)
    times = [T0 + 0.3 + i * 0.5013 for i in range(n)]
    pss = [int(7_000 + 5_120 * (t - T0) + rng.gauss(0, 300)) for t in times]
    path = tmp_path / "memory_monitor_output.txt"
    writer = PrmonWriter(path, start=times[0])
    for t, p in zip(times, pss, strict=True):
        writer.append(TreeSample(t, p, p + 8_000, 0, p + 12_000, 0.1, 0.01, 3, 3, 0, 0, 0, 0))
    columns = read_prmon_text(path)
    assert columns["Time"] == times
    for final in (False, True):
        ours = fit_prmon(columns, final)
        assert ours == fit_leak(times, [float(p) for p in pss], final)
        assert_agrees(ours, reference_of_file(path, final))
