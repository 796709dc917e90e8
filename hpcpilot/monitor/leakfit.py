"""Memory-leak fit of a payload's PSS+swap against time, as PanDA's pilot reports it.

Pure functions, no I/O.  The fit is an ordinary least-squares straight line through
``y = pss + swap`` (kB) against ``x = Time`` (epoch s), so the slope is a leak rate in kB/s
and the intercept is the line's value at epoch 0 (a large number; it is reported because
the established pilot reports it).  ``chi2`` is the sum of *relative* squared residuals,
``sum((obs - exp)**2 / exp**2)``, defined as 0 when any expected value is exactly 0.

Which points are fitted (the established pilot's rules, checked against its code):

* fewer than 8 points: no fit;
* 100 points or more: the iterative window below, for heartbeats *and* for the final
  update (the established pilot switches to it on the number of points alone);
* otherwise a heartbeat fits every point, and the final update drops the first 5 and the
  last 2 points (start-up allocation and tear-down) and needs 8 points after that, so a
  final fit needs at least 15 samples.

The iterative window.  Starting from the fit of all ``n`` points, points are dropped from
the right end, 5 at a time, for as long as each drop lowers chi2 by at least 25 % of the
previous value; the loop also stops once the window is no longer longer than ``2n/3``.
The same is done, independently, from the left end.  When the search stopped because a
drop did not help, the window ends one point before the end of that last (unhelpful)
trial window on the right, and starts at ``10 x iterations`` on the left (twice the points
actually tried: a quirk kept on purpose so the numbers agree).  When it ran out of points
while still improving, nothing is cut on the left and only the very last point on the
right.  A trial window with chi2 = 0 cannot be improved on, so the search stops there (the
established pilot divides by zero in that case).  The final window must hold at least 2
points with distinct times.

The sums are plain left-to-right float sums in the textbook order (means first, then
deviations), so on the same series the numbers are the same to the last bit as the
established pilot's, and so are its trim decisions even on noise-free synthetic data.

A fit whose slope is exactly 0 is returned (and reported as ``leak=0.00``); older pilot
releases silently dropped it.  Series with a non-finite value give no fit.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MIN_POINTS = 8
ITERATIVE_MIN_POINTS = 100
FINAL_HEAD_DROP = 5
FINAL_TAIL_DROP = 2
TRIM_STEP = 5
MIN_CHI2_IMPROVEMENT = 0.25
LEFT_LIMIT_PER_ITERATION = 10
REPORT_DECIMALS = 2

_TIME_NAMES = ("time",)
_PSS_NAMES = ("pss",)
_SWAP_NAMES = ("swap",)


@dataclass(frozen=True)
class LeakFit:
    """A straight-line fit of PSS+swap (kB) against time (s).

    ``start``/``stop`` give the fitted window as a slice of the input series, so a plot
    can draw the line over exactly the points that were used.
    """

    slope: float  # kB/s
    intercept: float  # kB at x = 0
    chi2: float
    n_points: int
    start: int = 0
    stop: int = 0

    def value(self, x: float) -> float:
        """The fitted line at ``x``."""
        return self.slope * x + self.intercept


@dataclass(frozen=True)
class _Line:
    slope: float
    intercept: float
    chi2: float


def _ols(x: Sequence[float], y: Sequence[float]) -> _Line | None:
    """Least-squares line and relative chi2, or None for fewer than 2 distinct x."""
    n = len(x)
    if n < 2:
        return None
    x_mean = sum(x) / float(n)
    y_mean = sum(y) / float(n)
    sxx = sum((xi - x_mean) ** 2 for xi in x)
    if sxx == 0:
        return None
    sxy = sum((xi - x_mean) * (yi - y_mean) for xi, yi in zip(x, y, strict=True))
    slope = sxy / float(sxx)
    intercept = y_mean - slope * x_mean
    expected = [slope * xi + intercept for xi in x]
    if any(e == 0 for e in expected):
        chi2 = 0.0
    else:
        chi2 = sum((o - e) ** 2 / e ** 2 for o, e in zip(y, expected, strict=True))
    return _Line(slope, intercept, chi2)


def _trim_limit(x: Sequence[float], y: Sequence[float], chi2_all: float, from_right: bool) -> int:
    """One end of the iterative window: the stop index (right) or the start index (left)."""
    n = len(x)
    lo, hi = 0, n
    previous = chi2_all
    iterations = 0
    while hi - lo > 2 * n / 3:  # written this way: (2/3)*n rounds differently when 3 | n
        iterations += 1
        if from_right:
            hi -= TRIM_STEP
        else:
            lo += TRIM_STEP
        line = _ols(x[lo:hi], y[lo:hi])
        if line is None:
            break
        if previous == 0 or (previous - line.chi2) / previous < MIN_CHI2_IMPROVEMENT:
            return hi - 1 if from_right else LEFT_LIMIT_PER_ITERATION * iterations
        previous = line.chi2
    return n - 1 if from_right else 0


def _window(x: Sequence[float], y: Sequence[float], final: bool) -> tuple[int, int] | None:
    n = len(x)
    if n < MIN_POINTS:
        return None
    if n >= ITERATIVE_MIN_POINTS:
        whole = _ols(x, y)
        if whole is None:
            return None
        stop = _trim_limit(x, y, whole.chi2, from_right=True)
        start = _trim_limit(x, y, whole.chi2, from_right=False)
        return start, stop
    if final:
        start, stop = FINAL_HEAD_DROP, n - FINAL_TAIL_DROP
        if stop - start < MIN_POINTS:
            return None
        return start, stop
    return 0, n


def fit_leak(times: Sequence[float], pss_plus_swap: Sequence[float], final: bool) -> LeakFit | None:
    """Fit PSS+swap (kB) against time (s); ``final`` selects the final-update tail handling.

    Returns None when there are too few points (see the module docstring), when the window
    is degenerate, or when a value is not finite.  Raises ValueError when the two series
    differ in length.
    """
    if len(times) != len(pss_plus_swap):
        raise ValueError(f"leak fit: {len(times)} times but {len(pss_plus_swap)} memory values")
    x = [float(v) for v in times]
    y = [float(v) for v in pss_plus_swap]
    if not all(math.isfinite(v) for v in x) or not all(math.isfinite(v) for v in y):
        return None
    window = _window(x, y, final)
    if window is None:
        return None
    start, stop = window
    line = _ols(x[start:stop], y[start:stop])
    if line is None:
        return None
    return LeakFit(line.slope, line.intercept, line.chi2, stop - start, start, stop)


def _column(columns: Mapping[str, Sequence[float]], names: tuple[str, ...]) -> Sequence[float]:
    by_lower = {key.strip().lower(): key for key in columns}
    for name in names:
        key = by_lower.get(name)
        if key is not None:
            return columns[key]
    raise ValueError(f"prmon data has no {names[0]} column (columns: {', '.join(sorted(columns)) or 'none'})")


def fit_prmon(columns: Mapping[str, Sequence[float]], final: bool) -> LeakFit | None:
    """The leak fit of prmon text columns by header name (``Time``, ``pss``/``PSS``, ``swap``/``Swap``).

    Works for every prmon column order and for the old MemoryMonitor upper-case header.
    Raises ValueError naming the missing column, or when columns differ in length.
    """
    times = _column(columns, _TIME_NAMES)
    pss = _column(columns, _PSS_NAMES)
    swap = _column(columns, _SWAP_NAMES)
    if not len(times) == len(pss) == len(swap):
        raise ValueError(f"prmon columns differ in length: Time {len(times)}, pss {len(pss)}, "
                         f"swap {len(swap)}")
    memory = [float(p) + float(s) for p, s in zip(pss, swap, strict=True)]
    return fit_leak(times, memory, final)


def format_metric(value: float) -> str:
    """A fit number as the pilot writes it in jobMetrics.

    The established pilot rounds to 2 *decimal places* (not 2 significant digits, whatever
    its docstring says): the shortest repr of the float is quantized half-to-even, so
    2.675 -> "2.68", 0.125 -> "0.12", and a small negative value gives "-0.00".
    """
    context = decimal.Context(prec=max(60, len(repr(value)) + REPORT_DECIMALS + 2))
    quantum = decimal.Decimal(1).scaleb(-REPORT_DECIMALS)
    return str(decimal.Decimal(repr(float(value))).quantize(quantum, context=context))


def job_metrics_fields(fit: LeakFit | None) -> dict[str, str]:
    """``{"leak": .., "chi2": .., "intersect": ..}`` for jobMetrics; empty when there is no fit."""
    if fit is None:
        return {}
    return {
        "leak": format_metric(fit.slope),
        "chi2": format_metric(fit.chi2),
        "intersect": format_metric(fit.intercept),
    }
