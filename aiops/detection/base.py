"""The streaming detector interface every detector implements, and the score calibration they share.

A detector sees one series, one point at a time, in time order. ``update(t, v)`` returns an anomaly
score in [0, 1] for that point computed from points up to and including it (no look-ahead), and
``score_series`` scores a whole array with the very same per-point code, so both agree exactly. State
is a fixed set of floats plus bounded buffers (constant memory per series) and round-trips through
``state_dict()`` / ``load_detector(state)`` as plain JSON.

Scores are calibrated the same way everywhere: 0.5 is the detector's own alert boundary, so one
alerting threshold means the same thing on top of every detector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import numpy as np
from pydantic_settings import BaseSettings

STATE_VERSION = 1

_KINDS: dict[str, type[StreamingDetector]] = {}


def squash(z: float, z_half: float) -> float:
    """Map a non-negative deviation (a robust z-score or a ratio) to [0, 1): 0 at 0, 0.5 at ``z_half``,
    rising steeply around it (a Hill curve of order 4), so scores far below the boundary stay near 0."""
    q = (z / z_half) ** 4
    return q / (1.0 + q)


class StreamingDetector(ABC):
    """Base of every detector: subclasses implement ``_run`` (the per-point loop) and their state."""

    kind: ClassVar[str]
    settings_type: ClassVar[type[BaseSettings]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _KINDS[cls.kind] = cls

    def __init__(self, settings: BaseSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_type()
        self.last_sign = 0
        """+1 when the last scored point was above what the detector expected, -1 below, 0 none."""

    @abstractmethod
    def _run(self, timestamps: list[float], values: list[float]) -> list[float]:
        """Score points in order, updating the state; return signed scores in [-1, 1]."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The mutable state as JSON-compatible values (no NaN or infinity)."""

    @abstractmethod
    def _restore(self, state: dict[str, Any]) -> None:
        """Set the mutable state from what ``_state`` returned."""

    def update(self, timestamp: float, value: float) -> float:
        """Score one point (Unix seconds, value); NaN or infinite values score 0 and change nothing."""
        return abs(self._run([float(timestamp)], [float(value)])[0])

    def signed_scores(self, timestamps: Any, values: Any) -> np.ndarray:
        """Like ``score_series`` but signed: positive where the value is above what was expected."""
        ts, vs = _as_series(timestamps, values)
        return np.asarray(self._run(ts, vs), dtype=np.float64)

    def score_series(self, timestamps: Any, values: Any) -> np.ndarray:
        """Score a whole series in order, continuing from the current state; equal to repeated
        ``update`` calls, point for point."""
        return np.abs(self.signed_scores(timestamps, values))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this detector elsewhere, as JSON-compatible data."""
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "settings": self.settings.model_dump(mode="json"),
            "state": self._state(),
        }

    @classmethod
    def _stored_settings(cls, settings: dict[str, Any]) -> BaseSettings:
        """The settings a stored state was saved with (a detector whose settings gained a field
        says here what a state saved without it meant)."""
        return cls.settings_type.model_validate(settings)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a detector of this class from ``state_dict()`` output."""
        detector = load_detector(state)
        if not isinstance(detector, cls):
            raise ValueError(f"state.kind: {state['kind']!r} is not a {cls.kind!r} detector")
        return detector


def load_detector(state: dict[str, Any]) -> StreamingDetector:
    """Rebuild whichever detector wrote ``state`` (the output of ``state_dict()``)."""
    if not isinstance(state, dict):
        raise ValueError("state: expected a dict from state_dict()")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"state.version: expected {STATE_VERSION}, got {state.get('version')!r}")
    kind = state.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"state.kind: unknown detector kind {kind!r}; known: {sorted(_KINDS)}")
    cls = _KINDS[kind]
    detector = cls(cls._stored_settings(state.get("settings", {})))
    if not isinstance(state.get("state"), dict):
        raise ValueError("state.state: expected a dict")
    detector._restore(state["state"])
    return detector


def _as_series(timestamps: Any, values: Any) -> tuple[list[float], list[float]]:
    ts = np.asarray(timestamps, dtype=np.float64)
    vs = np.asarray(values, dtype=np.float64)
    if ts.ndim != 1:
        raise ValueError(f"timestamps: expected a 1-D array, got shape {ts.shape}")
    if vs.ndim != 1:
        raise ValueError(f"values: expected a 1-D array, got shape {vs.shape}")
    if ts.shape != vs.shape:
        raise ValueError(f"values: length {vs.shape[0]} differs from timestamps length {ts.shape[0]}")
    return ts.tolist(), vs.tolist()
