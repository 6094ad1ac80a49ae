"""The NAB scorer in ``bench/nab.py``: it reproduces the published detectors' normalised scores on
nab-dev exactly as NAB computes them, and its rules hold on a hand-made corpus."""

from __future__ import annotations

import numpy as np
import pytest

from bench.datasets import (
    datasets_root,
    expected_scores,
    load_nab,
    load_reference_scores,
    nab_profiles,
    reference_detectors,
)
from bench.nab import Profile, probation_rows, scaled_sigmoid, score_corpus, series_stats, sweep_scores

STANDARD = Profile(1.0, 0.11, 1.0)


def test_reproduces_the_published_scores_of_every_reference_detector() -> None:
    root = datasets_root()
    series = load_nab(root)
    expected = expected_scores(root)
    detectors = reference_detectors(root)
    assert set(detectors) == set(expected) and len(detectors) >= 4
    for detector in detectors:
        data = [(load_reference_scores(root, detector, s.name), s.windows) for s in series]
        for name, weights in nab_profiles(root).items():
            got = score_corpus(data, Profile(*weights)).score
            assert got == pytest.approx(expected[detector][name], abs=0.006), (detector, name)


def test_sigmoid_edges() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == -1.0
    assert probation_rows(1000) == 150 and probation_rows(10_000) == 750


def test_earliest_detection_in_a_window_counts_and_false_positives_cost() -> None:
    n = 1000
    windows = [(400, 499)]
    null = np.zeros(n)
    early, late, noisy = null.copy(), null.copy(), null.copy()
    early[400] = 1.0
    late[490] = 1.0
    noisy[400] = 1.0
    noisy[[200, 300, 950]] = 1.0
    assert score_corpus([(null, windows)], STANDARD).score == 0.0
    assert score_corpus([(early, windows)], STANDARD).score == pytest.approx(100.0)
    assert 0 < score_corpus([(late, windows)], STANDARD).score < score_corpus([(early, windows)], STANDARD).score
    # Three false positives far from the window: -0.11 each, i.e. 100 * (1 - 0.33) / 2 above null.
    assert score_corpus([(noisy, windows)], STANDARD).score == pytest.approx(100 * (2 - 0.33) / 2)
    # Detections in the probationary period are ignored.
    sweep, window = sweep_scores(n, windows, STANDARD)
    assert (window[: probation_rows(n)] == -2).all() and sweep[450] > 0 > sweep[800]


def test_series_stats_count_windows_once_and_measure_delay() -> None:
    scores = np.zeros(1000)
    scores[[410, 420, 800]] = 0.9
    stats = series_stats(scores, [(400, 499)], threshold=0.5)
    assert (stats.detected, stats.false_positives, stats.mean_delay_rows) == (1, 1, 10.0)
    assert stats.recall == 1.0 and stats.precision == 0.5
