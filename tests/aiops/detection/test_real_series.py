"""Detectors on a few real NAB series (read from the datasets dir), scored as NAB scores them."""

from __future__ import annotations

import numpy as np

from aiops.detection import ConformalDetector
from bench.datasets import datasets_root, load_nab
from bench.nab import series_stats

SERIES = [
    "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
    "realAWSCloudwatch/rds_cpu_utilization_e47b3b.csv",
    "artificialNoAnomaly/art_daily_small_noise.csv",
]


def test_conformal_detector_finds_the_labelled_windows_with_few_false_alerts() -> None:
    found = windows = false = 0
    for series in load_nab(datasets_root(), SERIES):
        scores = ConformalDetector().score_series(series.timestamps, series.values)
        stats = series_stats(scores, series.windows, threshold=0.5)
        found, windows, false = found + stats.detected, windows + stats.windows, false + stats.false_positives
    assert windows == 4 and found == 4
    assert false <= 6  # over ~12,000 rows: one alert per anomaly, not one per noisy point


def test_conformal_scores_of_a_noise_only_series_mostly_stay_below_the_boundary() -> None:
    series = load_nab(datasets_root(), ["artificialNoAnomaly/art_noisy.csv"])[0]
    scores = ConformalDetector().score_series(series.timestamps, series.values)
    assert float(np.mean(scores >= 0.5)) < 0.003 and scores[:288].max() == 0.0
