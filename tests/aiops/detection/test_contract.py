"""The interface every detector promises: range, no look-ahead, batch == streaming, bounded state,
JSON round-trip, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aiops.detection as detection
from aiops.detection import (
    ConformalDetector,
    EwmaDetector,
    RobustDetector,
    RobustSettings,
    RollingSigmaDetector,
    StreamingDetector,
    load_detector,
    make_detector,
)

DETECTORS = [RobustDetector, RollingSigmaDetector, EwmaDetector, ConformalDetector]


def _mixed_series(n: int = 3000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Daily cycle, noise, a shift, a spike, NaNs and a gap: every code path of the detectors."""
    rng = np.random.default_rng(seed)
    ts = 1_767_225_600.0 + 300.0 * np.arange(n)
    ts[2000:] += 3 * 3600.0
    values = 100 + 20 * np.sin(2 * np.pi * ts / 86400) + rng.normal(0, 2, n)
    values[1200:1260] += 25
    values[1500] -= 40
    values[rng.random(n) < 0.01] = np.nan
    return ts, values


@pytest.mark.parametrize("cls", DETECTORS)
def test_scores_in_unit_interval_and_batch_equals_streaming(cls: type[StreamingDetector]) -> None:
    ts, values = _mixed_series()
    batch = cls().score_series(ts, values)
    stream = cls()
    streamed = np.array([stream.update(t, v) for t, v in zip(ts, values, strict=True)])
    assert np.all((batch >= 0.0) & (batch <= 1.0))
    assert np.array_equal(batch, streamed)
    assert batch.max() > 0.5  # the shift and the spike are scored, so the range check is not vacuous


@pytest.mark.parametrize("cls", DETECTORS)
def test_future_points_never_change_past_scores(cls: type[StreamingDetector]) -> None:
    ts, values = _mixed_series()
    altered = values.copy()
    altered[1800:] = 1e6 * np.random.default_rng(1).random(len(values) - 1800)
    original, changed = cls().score_series(ts, values), cls().score_series(ts, altered)
    assert np.array_equal(original[:1800], changed[:1800])
    assert not np.array_equal(original[1800:], changed[1800:])


@pytest.mark.parametrize("cls", DETECTORS)
def test_state_round_trips_mid_series_through_json(cls: type[StreamingDetector]) -> None:
    ts, values = _mixed_series()
    whole = cls().score_series(ts, values)
    first = cls()
    head = first.score_series(ts[:1230], values[:1230])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = cls.from_state(state)
    tail = resumed.score_series(ts[1230:], values[1230:])
    assert np.array_equal(np.concatenate([head, tail]), whole)
    assert type(load_detector(state)) is cls


@pytest.mark.parametrize("cls", [c for c in DETECTORS if c is not ConformalDetector])
def test_state_size_does_not_grow_with_series_length(cls: type[StreamingDetector]) -> None:
    ts, values = _mixed_series(n=6000)
    short, long = cls(), cls()
    short.score_series(ts[:500], values[:500])
    long.score_series(ts, values)
    assert len(json.dumps(long.state_dict())) <= len(json.dumps(short.state_dict())) * 1.05


def test_conformal_state_stops_growing_once_its_buffers_are_full() -> None:
    ts, values = _mixed_series(n=6000)
    settings = ConformalDetector().settings
    full = settings.period_probe_points + settings.window_points + settings.history_points + 10
    short, long = ConformalDetector(), ConformalDetector()
    short.score_series(ts[:full], values[:full])
    long.score_series(ts, values)
    assert len(json.dumps(long.state_dict())) <= len(json.dumps(short.state_dict())) * 1.05


def test_make_detector_returns_the_default_with_environment_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_DETECTION_CONFORMAL_WARMUP_POINTS", "77")
    detector = make_detector()
    assert isinstance(detector, ConformalDetector)
    assert detector.settings.warmup_points == 77


def test_bad_input_names_the_field() -> None:
    detector = make_detector()
    with pytest.raises(ValueError, match="values: length 2 differs from timestamps length 3"):
        detector.score_series([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="timestamps: expected a 1-D array"):
        detector.score_series([[1.0]], [1.0])
    with pytest.raises(ValueError, match="state.kind: unknown detector kind 'nope'"):
        load_detector({"kind": "nope", "version": 1, "settings": {}, "state": {}})
    with pytest.raises(ValueError, match="state.kind: 'ewma' is not a 'robust' detector"):
        RobustDetector.from_state(EwmaDetector().state_dict())
    state = RobustDetector().state_dict()
    state["state"]["profile"] = [0.0]
    with pytest.raises(ValueError, match="state.profile: 1 buckets"):
        load_detector(state)
    with pytest.raises(ValueError, match="level_alpha"):
        RobustSettings(level_alpha=0.0)


def test_package_exports() -> None:
    assert sorted(detection.__all__) == sorted(
        [
            "AlertEvent",
            "ConformalDetector",
            "ConformalSettings",
            "Alerter",
            "AlerterSettings",
            "EwmaDetector",
            "EwmaSettings",
            "RobustDetector",
            "RobustSettings",
            "RollingSigmaDetector",
            "RollingSigmaSettings",
            "StreamingDetector",
            "load_detector",
            "make_alerter",
            "make_detector",
            "squash",
        ]
    )
