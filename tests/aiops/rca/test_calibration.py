"""The confidence calibrator: logistic fit, reliability table and ECE, the shipped parameters."""

from __future__ import annotations

import numpy as np

import aiops.rca as rca
from aiops.rca import Calibrator, default_calibrator, fit_logistic, reliability


def test_fit_logistic_recovers_the_generating_weights() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(20_000), rng.normal(size=20_000), rng.normal(size=20_000)])
    true = np.array([-0.5, 2.0, -1.0])
    y = (rng.random(20_000) < 1 / (1 + np.exp(-x @ true))).astype(float)
    fitted = fit_logistic(x, y, l2=0.0)
    np.testing.assert_allclose(fitted.weights, true, atol=0.08)


def test_reliability_table_and_ece_by_hand() -> None:
    confidence = np.array([0.05, 0.15, 0.95, 0.95, 0.95, 0.95])
    correct = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    table, ece = reliability(confidence, correct, bins=10)
    assert [(b.low, b.count) for b in table] == [(0.0, 1), (0.1, 1), (0.9, 4)]
    assert table[2].accuracy == 0.75 and table[2].mean_confidence == np.float64(0.95)
    expected = (1 * 0.05 + 1 * 0.85 + 4 * 0.2) / 6
    assert abs(ece - expected) < 1e-9


def test_shipped_calibrator_is_monotone_in_score_margin_and_agreement() -> None:
    calibrator = default_calibrator()
    assert isinstance(calibrator, Calibrator) and len(calibrator.weights) == 4
    weak = calibrator.confidence(np.array([1.0, 0.05, 0.05, 0.25]))
    strong = calibrator.confidence(np.array([1.0, 0.6, 0.8, 1.0]))
    assert 0.0 < weak < 0.5 < strong < 1.0


def test_package_exports() -> None:
    assert set(rca.__all__) >= {"analyze", "rank_services", "RankedCause", "RcaResult", "remember", "similar"}
    assert all(hasattr(rca, name) for name in rca.__all__)
