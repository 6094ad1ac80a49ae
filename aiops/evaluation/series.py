"""The labelled series model of the evaluation set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class AnomalyWindow:
    """An injected anomaly: it starts at ``start`` and lasts to ``end`` (Unix seconds, inclusive)."""

    start: float
    end: float
    kind: str


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """One series with its anomaly windows; ``category`` names what kind of series it is, ``step`` its
    nominal sampling interval in seconds."""

    name: str
    category: str
    timestamps: np.ndarray
    values: np.ndarray
    windows: tuple[AnomalyWindow, ...]
    step: float
