"""Calibrated confidence for the top-ranked cause: logistic (Platt) scaling on ranking features.

Features: the top score, its relative margin over the runner-up, and the share of views that
agree on the top service. Parameters are fitted by ``bench.rca --fit`` on simulated scenarios and
stored in ``aiops/rca/calibration_params.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_AGREEING_VIEWS = ("latency", "spectrum", "structure", "errors", "truncation")
FEATURES = ("bias", "top_score", "margin", "agreement")


def ranking_features(
    sorted_scores: np.ndarray, views: dict[str, np.ndarray], order: Sequence[int]
) -> np.ndarray:
    """``[1, top score, (top - second) / top, share of non-silent views whose best is the top]``."""
    top = float(sorted_scores[0])
    second = float(sorted_scores[1]) if len(sorted_scores) > 1 else 0.0
    margin = (top - second) / top if top > 0 else 0.0
    voting = [v for v in _AGREEING_VIEWS if v in views and float(views[v].max()) > 0]
    agree = sum(int(np.argmax(views[v])) == order[0] for v in voting) / len(voting) if voting else 0.0
    return np.array([1.0, top, margin, agree])


@dataclass(frozen=True)
class Calibrator:
    """``p = sigmoid(weights . features)``."""

    weights: tuple[float, ...]

    def confidence(self, features: np.ndarray) -> float:
        return float(1.0 / (1.0 + np.exp(-float(np.dot(self.weights, features)))))


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iterations: int = 50) -> Calibrator:
    """Newton-Raphson on the L2-penalised log-loss; ``x`` has the bias column first."""
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        gradient = x.T @ (p - y) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Calibrator(tuple(float(v) for v in w))


@dataclass(frozen=True)
class ReliabilityBin:
    """Predictions with confidence in ``[low, high)``: how many, their mean confidence, their accuracy."""

    low: float
    high: float
    count: int
    mean_confidence: float
    accuracy: float


def reliability(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> tuple[list[ReliabilityBin], float]:
    """Reliability table and expected calibration error (count-weighted |accuracy - confidence|)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = index == b
        n = int(sel.sum())
        if n == 0:
            continue
        conf, acc = float(confidence[sel].mean()), float(correct[sel].mean())
        table.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n, conf, acc))
        ece += n / confidence.size * abs(acc - conf)
    return table, ece


@lru_cache(maxsize=1)
def default_calibrator() -> Calibrator:
    """The calibrator fitted on the simulator's labelled scenarios (see docs/rca.md)."""
    from aiops.rca.calibration_params import WEIGHTS

    return Calibrator(tuple(WEIGHTS))
