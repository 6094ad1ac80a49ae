"""Synthetic series of each shape a detector must handle, with anomalies injected at known windows.

Every generator takes a seeded ``numpy.random.Generator`` and returns one ``LabelledSeries``; the
same seed always gives the same series. Anomalies start after two days so that detectors have learned
what normal looks like (including one daily cycle), and are separated by at least a day.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aiops.evaluation.series import AnomalyWindow, LabelledSeries

STEP_S = 300.0
DAY_POINTS = int(86400 / STEP_S)
_T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday


def _daily(n: int, amplitude: float, phase: float = 0.0) -> np.ndarray:
    """A diurnal curve: low at night, a broad daytime peak (fundamental plus a second harmonic)."""
    x = 2.0 * np.pi * (np.arange(n) / DAY_POINTS) + phase
    return amplitude * (np.sin(x - np.pi / 2) + 0.3 * np.sin(2.0 * x))


def _starts(rng: np.random.Generator, n: int, count: int, length: int) -> list[int]:
    """``count`` anomaly starts, one per slot after the first two days, each at a random offset."""
    first = 2 * DAY_POINTS
    slot = (n - first) // count
    return [
        first + k * slot + int(rng.integers(0, max(1, slot - length - DAY_POINTS // 4))) for k in range(count)
    ]


def _timestamps(n: int) -> np.ndarray:
    return _T0 + STEP_S * np.arange(n)


def _series(
    name: str,
    category: str,
    values: np.ndarray,
    windows: list[tuple[int, int, str]],
    ts: np.ndarray | None = None,
) -> LabelledSeries:
    ts = _timestamps(len(values)) if ts is None else ts
    labelled = tuple(AnomalyWindow(float(ts[a]), float(ts[b]), kind) for a, b, kind in windows)
    return LabelledSeries(name, category, ts, values, labelled, STEP_S)


def _shifts(
    rng: np.random.Generator, values: np.ndarray, sigma: float, count: int
) -> list[tuple[int, int, str]]:
    """Add ``count`` temporary level shifts of 4-8 sigma (random sign) lasting 1-4 hours."""
    windows = []
    for start in _starts(rng, len(values), count, 48):
        length = int(rng.integers(12, 49))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        values[start : start + length] += sign * rng.uniform(4.0, 8.0) * sigma
        windows.append((start, start + length - 1, "level_shift"))
    return windows


def level_shift(rng: np.random.Generator, name: str) -> LabelledSeries:
    n, sigma = 7 * DAY_POINTS, rng.uniform(1.0, 10.0)
    values = rng.uniform(50, 500) + rng.normal(0.0, sigma, n)
    return _series(name, "level_shift", values, _shifts(rng, values, sigma, 3))


def spike(rng: np.random.Generator, name: str, direction: float = 1.0) -> LabelledSeries:
    n, sigma = 7 * DAY_POINTS, rng.uniform(1.0, 10.0)
    values = rng.uniform(50, 500) + rng.normal(0.0, sigma, n)
    windows = []
    for start in _starts(rng, n, 4, 1):
        values[start] += direction * rng.uniform(7.0, 12.0) * sigma
        windows.append((start, start, "spike" if direction > 0 else "dip"))
    return _series(name, windows[0][2], values, windows)


def dip(rng: np.random.Generator, name: str) -> LabelledSeries:
    return spike(rng, name, direction=-1.0)


def variance(rng: np.random.Generator, name: str) -> LabelledSeries:
    n, sigma = 7 * DAY_POINTS, rng.uniform(1.0, 10.0)
    noise = rng.normal(0.0, sigma, n)
    windows = []
    for start in _starts(rng, n, 2, 72):
        length = int(rng.integers(24, 73))
        noise[start : start + length] *= rng.uniform(3.0, 5.0)
        windows.append((start, start + length - 1, "variance"))
    return _series(name, "variance", rng.uniform(50, 500) + noise, windows)


def trend(rng: np.random.Generator, name: str) -> LabelledSeries:
    """A slow drift (normal) with sudden slope changes: a ramp of 8 sigma over 2-4 hours, then back."""
    n, sigma = 7 * DAY_POINTS, rng.uniform(1.0, 10.0)
    values = 100.0 + np.linspace(0.0, rng.uniform(-20, 20) * sigma, n) + rng.normal(0.0, sigma, n)
    windows = []
    for start in _starts(rng, n, 3, 48):
        length = int(rng.integers(24, 49))
        values[start : start + length] += np.linspace(0.0, 8.0 * sigma, length) * (
            1 if rng.random() < 0.5 else -1
        )
        windows.append((start, start + length - 1, "trend_change"))
    return _series(name, "trend", values, windows)


def daily(rng: np.random.Generator, name: str) -> LabelledSeries:
    n, sigma = 7 * DAY_POINTS, rng.uniform(1.0, 5.0)
    values = (
        200.0 + _daily(n, rng.uniform(10, 30) * sigma, rng.uniform(-0.5, 0.5)) + rng.normal(0.0, sigma, n)
    )
    return _series(name, "daily", values, _shifts(rng, values, sigma, 3))


def weekly(rng: np.random.Generator, name: str) -> LabelledSeries:
    """Daily traffic that drops by 40% on weekends (the drop eases in and out over a few hours)."""
    n, sigma = 14 * DAY_POINTS, rng.uniform(1.0, 5.0)
    ts = _timestamps(n)
    weekday = ((ts - _T0) / 86400.0 + 3) % 7  # 0 = Monday
    weekend = np.clip(np.minimum(weekday - 5.0, 7.0 - weekday) * 4.0, 0.0, 1.0) * (weekday >= 5.0)
    level = 300.0 + _daily(n, rng.uniform(10, 30) * sigma)
    values = level * (1.0 - 0.4 * weekend) + rng.normal(0.0, sigma, n)
    return _series(name, "weekly", values, _shifts(rng, values, sigma, 4))


def noisy(rng: np.random.Generator, name: str) -> LabelledSeries:
    """Heavy-tailed noise (Student t, 3 degrees of freedom) with large shifts."""
    n, sigma = 7 * DAY_POINTS, rng.uniform(5.0, 20.0)
    values = 500.0 + sigma * rng.standard_t(3, n)
    windows = []
    for start in _starts(rng, n, 3, 48):
        length = int(rng.integers(12, 49))
        values[start : start + length] += (1 if rng.random() < 0.5 else -1) * rng.uniform(8.0, 12.0) * sigma
        windows.append((start, start + length - 1, "level_shift"))
    return _series(name, "noisy", values, windows)


def irregular(rng: np.random.Generator, name: str) -> LabelledSeries:
    """Jittered timestamps, gaps of 1-3 hours, 2% NaNs, a daily cycle, and shifts."""
    n, sigma = 7 * DAY_POINTS, rng.uniform(1.0, 5.0)
    ts = _timestamps(n) + rng.uniform(-0.3, 0.3, n) * STEP_S
    values = 200.0 + _daily(n, 10 * sigma) + rng.normal(0.0, sigma, n)
    windows = _shifts(rng, values, sigma, 3)
    keep = np.ones(n, dtype=bool)
    taken = {i for a, b, _ in windows for i in range(a - 12, b + 13)}
    for start in rng.integers(DAY_POINTS, n - 40, 6):
        if not taken & set(range(start, start + 40)):
            keep[start : start + int(rng.integers(12, 37))] = False
    values[rng.random(n) < 0.02] = np.nan
    index = np.cumsum(keep) - 1
    kept = [(int(index[a]), int(index[b]), kind) for a, b, kind in windows]
    return _series(name, "irregular", values[keep], kept, ts[keep])


def flat(rng: np.random.Generator, name: str) -> LabelledSeries:
    """A gauge flat for days (jitter of a millionth of its value), then real changes of 2-10%."""
    n = 7 * DAY_POINTS
    base = rng.uniform(10, 1000)
    values = base * (1.0 + 1e-6 * rng.normal(0.0, 1.0, n))
    windows = []
    for start in _starts(rng, n, 2, 48):
        length = int(rng.integers(12, 49))
        values[start : start + length] *= 1.0 + (1 if rng.random() < 0.5 else -1) * rng.uniform(0.02, 0.1)
        windows.append((start, start + length - 1, "level_shift"))
    return _series(name, "flat", values, windows)


def counts(rng: np.random.Generator, name: str) -> LabelledSeries:
    """Poisson counts of a low-volume endpoint with a daily cycle; anomalies double it or cut it to 10%."""
    n = 7 * DAY_POINTS
    mean = rng.uniform(20, 60)
    rate = mean * (1.0 + 0.6 * _daily(n, 1.0) / 1.3)
    windows = []
    for start in _starts(rng, n, 3, 36):
        length = int(rng.integers(6, 37))
        factor = 2.5 if rng.random() < 0.5 else 0.1
        rate[start : start + length] *= factor
        windows.append((start, start + length - 1, "level_shift"))
    return _series(name, "counts", rng.poisson(rate).astype(np.float64), windows)


def ratio(rng: np.random.Generator, name: str) -> LabelledSeries:
    """An error ratio in [0, 1]: errors over requests, about 1% normally, 8-20% during an anomaly."""
    n = 7 * DAY_POINTS
    requests = rng.poisson(rng.uniform(200, 1000) * (1.0 + 0.5 * _daily(n, 1.0) / 1.3)) + 1
    p = np.full(n, rng.uniform(0.002, 0.02))
    windows = []
    for start in _starts(rng, n, 3, 36):
        length = int(rng.integers(3, 37))
        p[start : start + length] = rng.uniform(0.08, 0.2)
        windows.append((start, start + length - 1, "error_burst"))
    return _series(name, "ratio", rng.binomial(requests, p) / requests, windows)


def latency(rng: np.random.Generator, name: str) -> LabelledSeries:
    """A p95 latency in seconds: positive, skewed, heavy-tailed; anomalies make it 2-4 times slower."""
    n = 7 * DAY_POINTS
    base = rng.uniform(0.05, 0.5) * (1.0 + 0.2 * _daily(n, 1.0) / 1.3)
    values = base * rng.lognormal(0.0, 0.15, n)
    windows = []
    for start in _starts(rng, n, 3, 36):
        length = int(rng.integers(6, 37))
        values[start : start + length] *= rng.uniform(2.0, 4.0)
        windows.append((start, start + length - 1, "latency_increase"))
    return _series(name, "latency", values, windows)


GENERATORS: dict[str, Callable[[np.random.Generator, str], LabelledSeries]] = {
    "level_shift": level_shift,
    "spike": spike,
    "dip": dip,
    "variance": variance,
    "trend": trend,
    "daily": daily,
    "weekly": weekly,
    "noisy": noisy,
    "irregular": irregular,
    "flat": flat,
    "counts": counts,
    "ratio": ratio,
    "latency": latency,
}
"""Every synthetic series category and its generator."""
