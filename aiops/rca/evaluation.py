"""Scoring RCA on labelled simulated scenarios: AC@k, Avg@5 and the calibration data set."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from aiops.rca.calibration import FEATURES, Calibrator
from aiops.rca.ranking import analyze
from aiops.simulation.faults import FaultKind
from aiops.simulation.scenarios import make_scenario


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one scenario went: the rank of the true cause (None when not ranked) and the features."""

    topology: str
    kind: FaultKind
    seed: int
    strip_status: bool
    rank: int | None
    confidence: float
    features: tuple[float, ...]
    seconds: float


def run_scenarios(
    topologies: Iterable[str],
    kinds: Iterable[FaultKind],
    seeds: Iterable[int],
    *,
    calibrator: Calibrator | None = None,
) -> list[Outcome]:
    """Analyse each (topology, kind, seed) scenario. Window sizes vary with the seed (40, 150 or 300
    traces) and even seeds strip all status codes, so the set covers small and status-free windows."""
    outcomes = []
    seeds = list(seeds)
    for topology in topologies:
        for kind in kinds:
            for seed in seeds:
                strip = seed % 2 == 0
                scenario = make_scenario(
                    topology, kind, seed, n_traces=(40, 150, 300)[seed % 3], strip_status=strip
                )
                result = analyze(
                    scenario.incident, scenario.baseline, changes=scenario.changes, calibrator=calibrator
                )
                names = [c.service for c in result.causes]
                rank = names.index(scenario.root_cause) + 1 if scenario.root_cause in names else None
                features = (1.0, *(result.stats.get(f"feature_{f}", 0.0) for f in FEATURES[1:]))
                outcomes.append(
                    Outcome(
                        topology,
                        kind,
                        seed,
                        strip,
                        rank,
                        result.causes[0].confidence if result.causes else 0.0,
                        features,
                        result.stats.get("seconds", 0.0),
                    )
                )
    return outcomes


def accuracy_at(outcomes: list[Outcome], k: int) -> float:
    """AC@k: the share of scenarios whose true cause is among the top ``k``."""
    if not outcomes:
        return 0.0
    return sum(o.rank is not None and o.rank <= k for o in outcomes) / len(outcomes)


def average_at_5(outcomes: list[Outcome]) -> float:
    """Avg@5: the mean of AC@1 .. AC@5."""
    return float(np.mean([accuracy_at(outcomes, k) for k in range(1, 6)]))


def calibration_data(outcomes: list[Outcome]) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix and 0/1 "top cause was right" labels of the scenarios that produced a ranking."""
    ranked = [o for o in outcomes if o.features[1] > 0]
    x = np.array([o.features for o in ranked]).reshape(-1, len(FEATURES))
    y = np.array([float(o.rank == 1) for o in ranked])
    return x, y
