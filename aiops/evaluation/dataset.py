"""The evaluation set: every synthetic category plus simulated RED series, rebuilt from one seed."""

from __future__ import annotations

import numpy as np

from aiops.evaluation.series import LabelledSeries
from aiops.evaluation.synthetic import GENERATORS
from aiops.evaluation.workload import simulate


def build_evaluation_set(seed: int = 0, copies: int = 2) -> list[LabelledSeries]:
    """``copies`` series of each synthetic category and ``copies`` simulated workloads (nine RED
    series each), all derived deterministically from ``seed``."""
    if copies < 1:
        raise ValueError(f"copies: expected at least 1, got {copies}")
    out: list[LabelledSeries] = []
    for index, (category, generate) in enumerate(GENERATORS.items()):
        for copy in range(copies):
            out.append(generate(np.random.default_rng([seed, index, copy]), f"{category}-{copy}"))
    for copy in range(copies):
        out.extend(simulate(np.random.default_rng([seed, len(GENERATORS), copy]), f"workload-{copy}"))
    return out
