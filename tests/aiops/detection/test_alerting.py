"""Alerting rules: one alert per event, hysteresis, direction, minimum duration, persistence."""

from __future__ import annotations

import json

import pytest

from aiops.detection import Alerter, AlerterSettings, EwmaDetector, make_alerter


def _feed(alerter: Alerter, signed_scores: list[float]) -> list[tuple[int, str, str]]:
    events = ((i, alerter.feed(float(i), s)) for i, s in enumerate(signed_scores))
    return [(i, e.kind, e.direction) for i, e in events if e is not None]


def test_one_alert_per_event_until_the_score_recovers() -> None:
    scores = [0.0, 0.9, 0.8, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, -0.7]
    assert _feed(Alerter(EwmaDetector()), scores) == [
        (1, "fired", "up"),
        (9, "resolved", "up"),
        (11, "fired", "down"),
    ]


def test_min_points_and_direction_filter() -> None:
    alerter = Alerter(EwmaDetector(), AlerterSettings(min_points=2, direction="up"))
    assert _feed(alerter, [0.9, 0.0, -0.9, -0.9, -0.9, 0.6, 0.7]) == [(6, "fired", "up")]


def test_clear_threshold_above_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="clear_threshold"):
        AlerterSettings(threshold=0.4, clear_threshold=0.6)


def test_update_matches_alert_series_and_state_round_trips() -> None:
    ts = [300.0 * i for i in range(400)]
    values = [10.0 + (i % 7) * 0.1 + (5.0 if 300 <= i < 320 else 0.0) for i in range(400)]
    batch = make_alerter().alert_series(ts, values)
    first = make_alerter()
    streamed = [e for t, v in zip(ts[:302], values[:302], strict=True) if (e := first.update(t, v))]
    resumed = Alerter.from_state(json.loads(json.dumps(first.state_dict())))
    assert resumed.active
    streamed += [e for t, v in zip(ts[302:], values[302:], strict=True) if (e := resumed.update(t, v))]
    assert streamed == batch
    assert [e.kind for e in batch] == ["fired", "resolved"]
