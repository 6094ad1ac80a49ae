"""The evaluation set is reproducible and labelled, scoring counts what it says, and the default
detector keeps its measured quality (floors a little under the worst of several seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from aiops.detection import EwmaDetector, make_detector
from aiops.evaluation import (
    GENERATORS,
    AnomalyWindow,
    LabelledSeries,
    build_evaluation_set,
    evaluate,
    outcome,
    summarise,
)


@pytest.fixture(scope="module")
def dataset() -> list[LabelledSeries]:
    return build_evaluation_set(seed=0, copies=2)


def test_set_is_deterministic_and_covers_every_category(dataset: list[LabelledSeries]) -> None:
    again = build_evaluation_set(seed=0, copies=2)
    assert all(
        np.array_equal(a.values, b.values, equal_nan=True) for a, b in zip(dataset, again, strict=True)
    )
    other = build_evaluation_set(seed=1, copies=2)
    assert not np.array_equal(dataset[0].values, other[0].values)
    categories = {s.category for s in dataset}
    assert categories == set(GENERATORS) | {"red_rate", "red_errors", "red_p95"}
    for series in dataset:
        assert len(series.timestamps) == len(series.values)
        for w in series.windows:
            assert series.timestamps[0] <= w.start <= w.end <= series.timestamps[-1]
    assert sum(len(s.windows) for s in dataset if s.category.startswith("red_")) >= 6


def test_outcome_counts_detections_delays_repeats_and_false_alerts() -> None:
    ts = np.arange(100, dtype=float)
    series = LabelledSeries(
        "s", "c", ts, np.zeros(100), (AnomalyWindow(10, 20, "x"), AnomalyWindow(50, 50, "y")), 1.0
    )
    result = outcome(series, [5.0, 12.0, 15.0, 52.0, 60.0], tolerance_points=3)
    assert (result.detected, result.repeats, result.false_alerts, result.delays) == (2, 1, 2, (2.0, 2.0))


FLOOR_SEEDS = range(5)
"""The floors must hold on every one of these evaluation sets, not just on the one they were read from."""


def test_default_detector_quality_floor_holds_for_the_worst_of_several_seeds() -> None:
    # The default became the conformal detector because the robust one, tuned on this simulator
    # (precision 0.67-0.77, recall 0.93-0.97 here), scored 8.1 NAB standard on the 28 real nab-dev
    # series against 59.4 for the conformal one (`python -m bench.real --split all`). The simulator
    # is our own upper bound, not evidence, so these floors record what the real-data choice costs here rather than a target: measured over
    # seeds 0-4 (copies=2) precision 0.459-0.583, recall 0.653-0.737, median delay 0, 0.37-0.54
    # false alerts per 1000 points (with the alert boundary per point rather than per five minutes,
    # and the burst over 24 points, precision 0.290-0.363, recall 0.621-0.695 and 0.87-1.04 false
    # alerts per 1000: the 1-minute RED series alerted five times as often per day); the floors sit
    # just under the worst seed. In the live path the incident layer's debounce
    # (`incident_min_anomalous_steps`) and the alerting hysteresis keep the rest from opening incidents.
    overall = [
        summarise("default", evaluate(make_detector, build_evaluation_set(seed=seed, copies=2)))[-1]
        for seed in FLOOR_SEEDS
    ]
    assert all(o.group == "all" for o in overall)
    assert min(o.recall for o in overall) >= 0.64
    assert min(o.precision for o in overall) >= 0.44
    assert max(o.median_delay for o in overall) <= 1.0
    assert max(o.false_per_1k for o in overall) <= 0.6


def test_default_beats_the_ewma_baseline(dataset: list[LabelledSeries]) -> None:
    default = summarise("default", evaluate(make_detector, dataset))[-1]
    ewma = summarise("ewma", evaluate(EwmaDetector, dataset))[-1]
    assert default.f1 > ewma.f1 + 0.1  # measured 0.560 against 0.170 (seed 0)
