"""The robust Holt-Winters detector (the default until real data showed it did not generalise), with
the default alerting rules, on each kind of synthetic series and anomaly. The default detector is
pinned on real series in ``test_real_series.py`` and in the live path by the AIOps service tests."""

from __future__ import annotations

import numpy as np

from aiops.detection import Alerter, AlertEvent, RobustDetector

STEP = 300.0
T0 = 1_767_225_600.0
DAY = int(86400 / STEP)


def _fired(ts: np.ndarray, values: np.ndarray) -> list[AlertEvent]:
    return [e for e in Alerter(RobustDetector()).alert_series(ts, values) if e.kind == "fired"]


def _index(ts: np.ndarray, event: AlertEvent) -> int:
    return int(np.searchsorted(ts, event.timestamp))


def _noise(n: int, seed: int = 0, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return T0 + STEP * np.arange(n), 50.0 + np.random.default_rng(seed).normal(0.0, sigma, n)


def test_level_shift_alerts_once_within_a_few_points() -> None:
    ts, values = _noise(1500)
    values[1000:1040] += 6.0
    fired = _fired(ts, values)
    assert len(fired) == 1
    assert 1000 <= _index(ts, fired[0]) <= 1005 and fired[0].direction == "up"


def test_spike_and_dip_alert_on_the_point() -> None:
    ts, values = _noise(1500, seed=1)
    values[700] += 10.0
    values[1100] -= 10.0
    fired = _fired(ts, values)
    assert [(_index(ts, e), e.direction) for e in fired] == [(700, "up"), (1100, "down")]


def test_variance_increase_alerts() -> None:
    ts, values = _noise(1500, seed=2)
    values[1000:1060] = 50.0 + np.random.default_rng(3).normal(0.0, 4.0, 60)
    fired = _fired(ts, values)
    assert len(fired) == 1 and 1000 <= _index(ts, fired[0]) <= 1020


def test_slow_drift_is_normal_but_a_sudden_slope_change_alerts() -> None:
    ts, values = _noise(2000, seed=4)
    values += 0.01 * np.arange(2000)  # 20 sigma over a week: normal
    assert _fired(ts, values) == []
    values[1500:] += 0.7 * np.arange(500)  # the slope jumps 70-fold (0.7 sigma per step)
    fired = _fired(ts, values)
    assert fired and 1500 <= _index(ts, fired[0]) <= 1515


def test_flat_series_ignores_tiny_jitter_but_alerts_on_a_real_change() -> None:
    ts = T0 + STEP * np.arange(1500)
    values = 1000.0 + 1e-4 * np.random.default_rng(5).normal(0.0, 1.0, 1500)
    assert _fired(ts, values) == []
    values[1200:1230] += 30.0  # 3% off a series that never moved
    fired = _fired(ts, values)
    assert len(fired) == 1 and _index(ts, fired[0]) == 1200


def test_clean_daily_cycle_over_several_days_raises_no_alert() -> None:
    n = 6 * DAY
    ts = T0 + STEP * np.arange(n)
    phase = 2 * np.pi * ts / 86400
    values = 300 + 60 * np.sin(phase) + 15 * np.sin(2 * phase) + np.random.default_rng(6).normal(0, 3, n)
    assert _fired(ts, values) == []
    values[5 * DAY : 5 * DAY + 24] -= 30  # a dip at a time of day that is normally busy
    fired = _fired(ts, values)
    assert len(fired) == 1 and 5 * DAY <= _index(ts, fired[0]) <= 5 * DAY + 3


def test_nans_gaps_and_irregular_steps_neither_crash_nor_alert() -> None:
    rng = np.random.default_rng(8)
    n = 2000
    ts = T0 + STEP * np.arange(n) + rng.uniform(-0.4, 0.4, n) * STEP
    values = 50.0 + rng.normal(0.0, 1.0, n)
    values[rng.random(n) < 0.05] = np.nan
    values[100:110] = np.inf
    keep = np.ones(n, dtype=bool)
    keep[800:860] = False  # a five-hour gap
    assert _fired(ts[keep], values[keep]) == []


def test_counts_ratios_and_latencies_alert_on_their_anomalies() -> None:
    rng = np.random.default_rng(9)
    n = 1500
    ts = T0 + STEP * np.arange(n)
    counts = rng.poisson(np.where((np.arange(n) >= 1000) & (np.arange(n) < 1030), 40.0, 10.0)).astype(float)
    requests = rng.poisson(500, n) + 1
    ratio = rng.binomial(requests, np.where(np.arange(n) >= 1000, 0.1, 0.01)) / requests
    latency = 0.2 * rng.lognormal(0.0, 0.2, n)
    latency[1000:1020] *= 3.0
    for series in (counts, ratio, latency):
        fired = _fired(ts, series)
        assert len(fired) == 1 and 1000 <= _index(ts, fired[0]) <= 1003
