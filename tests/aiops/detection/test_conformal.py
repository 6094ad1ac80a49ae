"""The conformal detector's own claims on synthetic series: its alert boundary is crossed about as
often as the p-value it stands for, even on the short history of a live series, and a gap or a NaN
in a seasonal series does not shift the phase of every later point."""

from __future__ import annotations

import json

import numpy as np

from aiops.detection import ConformalDetector, ConformalSettings
from aiops.detection.conformal import _simes


def test_alert_rate_on_a_short_history_stays_near_the_alert_p_value() -> None:
    # The live path's regime: a detector with 120-250 points of history judging the p95 of 40
    # requests per step. With an exponential tail fitted to its five largest statistics as if the
    # fit were exact, the boundary was crossed 27 times as often as alert_p (7.9 times at 0.002);
    # the tail that carries the fit's own uncertainty crosses it 1.15 times as often (1.35 at 0.002).
    rng = np.random.default_rng(11)
    settings = ConformalSettings(alert_p=0.0002, suppress_points=0, alert_interval_s=0)  # per point, as live
    crossings = judged = 0
    for _ in range(200):
        values = np.percentile(rng.lognormal(0.0, 0.5, (250, 40)), 95, axis=1)
        scores = ConformalDetector(settings).score_series(2.0 * np.arange(250), values)
        crossings += int(np.sum(scores[120:] >= 0.5))
        judged += 130
    assert crossings / judged <= 2.0 * settings.alert_p


def test_simes_is_bonferroni_for_one_small_p_value_and_smaller_when_several_agree() -> None:
    assert _simes([0.001, 0.5, 0.6, 0.9]) == 4 * 0.001
    assert _simes([0.001, 0.001, 0.001, 0.001]) == 0.001
    assert _simes([0.9, 0.95, 0.99, 1.0]) == 1.0


def test_gaps_and_nans_keep_the_seasonal_phase() -> None:
    rng = np.random.default_rng(3)
    n = 6 * 288
    ts = 1_767_225_600.0 + 300.0 * np.arange(n)
    values = 100.0 + 30.0 * np.sin(2 * np.pi * ts / 86_400.0) + rng.normal(0.0, 1.0, n)
    values[rng.random(n) < 0.02] = np.nan  # in the probe and after it
    values[1300:1324] += 6.0  # a two-hour shift of 6 sigma on day 5
    shifted = np.zeros(n, bool)
    shifted[1300:1324] = True
    keep = np.ones(n, bool)
    keep[100:124] = False  # two hours missing inside the probe
    keep[900:936] = False  # three hours missing after it
    ts, values, shifted = ts[keep], values[keep], shifted[keep]
    detector = ConformalDetector()
    first = detector.score_series(ts[:950], values[:950])
    assert detector.period == 288  # missed steps count: the probe's lags are lags in time (was 273)
    resumed = ConformalDetector.from_state(json.loads(json.dumps(detector.state_dict(), allow_nan=False)))
    scores = np.concatenate([first, resumed.score_series(ts[950:], values[950:])])
    # with the phase slipped by the NaNs and the gaps, the cycle's own slope filled the residual
    # and the shift scored 0.0; in phase it stands out of a clean cycle
    assert scores[shifted].max() >= 0.5
    assert int(np.sum(scores[~shifted] >= 0.5)) <= 2


def test_a_state_saved_before_the_step_was_learnt_still_loads_and_learns_it() -> None:
    # the incident pipeline keeps every series' state in Postgres across upgrades
    rng = np.random.default_rng(4)
    ts = 300.0 * np.arange(800)
    values = rng.normal(0.0, 1.0, 800)
    detector = ConformalDetector()
    detector.score_series(ts[:700], values[:700])
    state = detector.state_dict()
    del state["state"]["step"], state["state"]["last_t"]
    resumed = ConformalDetector.from_state(state)
    resumed.score_series(ts[700:], values[700:])
    assert resumed.step == 300.0


def test_the_alert_boundary_is_per_unit_of_time_so_a_minute_series_alerts_as_often_per_day() -> None:
    # Per point, a series sampled every minute crossed the boundary five times as often per day as
    # one sampled every five minutes (measured 0.0026 of points at 60 s, as at 300 s); per
    # alert_interval_s (300 s) it crosses about alert_p x 60 / 300 of its points.
    rng = np.random.default_rng(8)
    values = rng.normal(0.0, 1.0, 20_000)
    rates = {}
    for step in (60.0, 300.0):
        detector = ConformalDetector(ConformalSettings(suppress_points=0, period_probe_points=0))
        scores = detector.score_series(step * np.arange(values.size), values)
        rates[step] = float(np.mean(scores[1000:] >= 0.5))
    alert_p = ConformalSettings().alert_p
    assert 0 < rates[60.0] <= 2.0 * alert_p * 60.0 / 300.0
    assert rates[300.0] > 2.0 * rates[60.0]
    spike = values.copy()
    spike[15_000] += 30.0  # a large anomaly still alerts at once on the minute series
    scores = ConformalDetector(ConformalSettings(period_probe_points=0)).score_series(60.0 * np.arange(spike.size), spike)
    assert scores[15_000] >= 0.5


def test_a_state_saved_when_the_boundary_was_per_point_keeps_it_per_point() -> None:
    # the incident pipeline's stored series were saved with a boundary per point at 1-60 s steps
    detector = ConformalDetector()
    detector.score_series(60.0 * np.arange(300), np.random.default_rng(9).normal(0.0, 1.0, 300))
    state = json.loads(json.dumps(detector.state_dict()))
    assert ConformalDetector.from_state(state).settings.alert_interval_s == 300.0
    del state["settings"]["alert_interval_s"]
    assert ConformalDetector.from_state(state).settings.alert_interval_s == 0.0
