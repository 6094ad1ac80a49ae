"""Turning a detector's scores into discrete alerts: one ``fired`` event per anomaly, one ``resolved``.

An alert fires when the score reaches ``threshold`` in an allowed direction for ``min_points``
consecutive points. While it is active nothing else fires (one alert per event, however long the
anomaly lasts); it resolves once the score has stayed below ``clear_threshold`` for
``recovery_points`` consecutive points (hysteresis), and only then can the next alert fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiops.detection.base import StreamingDetector, load_detector

Direction = Literal["up", "down", "both"]


class AlerterSettings(BaseSettings):
    """When scores become alerts (env prefix ``DEVART_ALERTING_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_ALERTING_", extra="ignore")

    threshold: float = Field(
        default=0.5, gt=0, le=1, description="score at or above which a point is anomalous"
    )
    clear_threshold: float = Field(
        default=0.2, ge=0, le=1, description="score below which a point counts towards recovery"
    )
    min_points: int = Field(default=1, ge=1, description="consecutive anomalous points before an alert fires")
    recovery_points: int = Field(
        default=5, ge=1, description="consecutive calm points before an active alert resolves"
    )
    direction: Direction = Field(
        default="both", description="which deviations alert: above expected (up), below (down) or both"
    )

    @model_validator(mode="after")
    def _clear_below_threshold(self) -> AlerterSettings:
        if self.clear_threshold > self.threshold:
            raise ValueError("clear_threshold: must not exceed threshold")
        return self


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert starting (``fired``) or ending (``resolved``) at ``timestamp``."""

    kind: Literal["fired", "resolved"]
    timestamp: float
    score: float
    direction: Literal["up", "down"]


class Alerter:
    """A detector plus alerting rules, for one series; its state persists like a detector's."""

    def __init__(self, detector: StreamingDetector, settings: AlerterSettings | None = None) -> None:
        self.detector = detector
        self.settings = settings if settings is not None else AlerterSettings()
        self.active = False
        self.direction: Literal["up", "down"] = "up"
        self.above = 0
        self.calm = 0

    def update(self, timestamp: float, value: float) -> AlertEvent | None:
        """Score one point and return the alert event it causes, if any."""
        score = self.detector.update(timestamp, value)
        return self.feed(timestamp, score * self.detector.last_sign)

    def alert_series(self, timestamps: Any, values: Any) -> list[AlertEvent]:
        """Run a whole series through the detector and the rules; the events in time order."""
        signed = self.detector.signed_scores(timestamps, values)
        ts = np.asarray(timestamps, dtype=np.float64).tolist()
        events = (self.feed(t, s) for t, s in zip(ts, signed.tolist(), strict=True))
        return [event for event in events if event is not None]

    def feed(self, timestamp: float, signed_score: float) -> AlertEvent | None:
        """Apply the rules to one signed score (positive: above expected) from the detector."""
        cfg = self.settings
        score = abs(signed_score)
        direction: Literal["up", "down"] = "up" if signed_score >= 0.0 else "down"
        if self.active:
            self.calm = self.calm + 1 if score < cfg.clear_threshold else 0
            if self.calm >= cfg.recovery_points:
                self.active, self.calm = False, 0
                return AlertEvent("resolved", timestamp, score, self.direction)
            return None
        if score >= cfg.threshold and cfg.direction in ("both", direction):
            self.above += 1
            if self.above >= cfg.min_points:
                self.active, self.above, self.calm, self.direction = True, 0, 0, direction
                return AlertEvent("fired", timestamp, score, direction)
        else:
            self.above = 0
        return None

    def state_dict(self) -> dict[str, Any]:
        """The detector's state and the rules' state, JSON-compatible."""
        return {
            "detector": self.detector.state_dict(),
            "settings": self.settings.model_dump(mode="json"),
            "active": self.active,
            "direction": self.direction,
            "above": self.above,
            "calm": self.calm,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Alerter:
        """Rebuild an alerter (and its detector) from ``state_dict()`` output."""
        alerter = cls(load_detector(state["detector"]), AlerterSettings.model_validate(state["settings"]))
        alerter.active, alerter.direction = bool(state["active"]), state["direction"]
        alerter.above, alerter.calm = int(state["above"]), int(state["calm"])
        return alerter
