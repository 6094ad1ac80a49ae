"""Two textbook detectors the default is measured against: a rolling-window 3-sigma rule and a plain
EWMA z-score. Both learn every point as normal (no robustness, no seasonality, no trend)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiops.detection.base import StreamingDetector, squash


class RollingSigmaSettings(BaseSettings):
    """Settings of the rolling 3-sigma baseline (env prefix ``DEVART_DETECTION_ROLLING_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_DETECTION_ROLLING_", extra="ignore")

    window_points: int = Field(default=60, ge=3, le=100_000, description="points in the rolling window")
    sigmas: float = Field(default=3.0, gt=0, description="z-score (against the window) that scores 0.5")
    scale_floor: float = Field(
        default=1e-9, gt=0, description="smallest standard deviation, in the series' unit"
    )


class EwmaSettings(BaseSettings):
    """Settings of the EWMA z-score baseline (env prefix ``DEVART_DETECTION_EWMA_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_DETECTION_EWMA_", extra="ignore")

    alpha: float = Field(
        default=0.05, gt=0, le=1, description="EWMA weight of a new point in mean and variance"
    )
    sigmas: float = Field(default=3.0, gt=0, description="z-score that scores 0.5")
    warmup_points: int = Field(default=30, ge=2, description="points seen before any score above 0")
    scale_floor: float = Field(
        default=1e-9, gt=0, description="smallest standard deviation, in the series' unit"
    )


class RollingSigmaDetector(StreamingDetector):
    """z-score of a point against the mean and standard deviation of the previous ``window_points``."""

    kind = "rolling_sigma"
    settings_type = RollingSigmaSettings
    settings: RollingSigmaSettings

    def __init__(self, settings: RollingSigmaSettings | None = None) -> None:
        super().__init__(settings)
        self.window: list[float] = []
        self.head = 0

    def _state(self) -> dict[str, Any]:
        return {"window": list(self.window), "head": self.head, "last_sign": self.last_sign}

    def _restore(self, state: dict[str, Any]) -> None:
        window = [float(v) for v in state["window"]]
        if len(window) > self.settings.window_points:
            raise ValueError(
                f"state.window: {len(window)} points, settings allow {self.settings.window_points}"
            )
        head = int(state["head"])
        if not 0 <= head < max(len(window), 1):
            raise ValueError(f"state.head: {head} is outside the window of {len(window)} points")
        self.window, self.head, self.last_sign = window, head, int(state["last_sign"])

    def _run(self, timestamps: list[float], values: list[float]) -> list[float]:
        size, sigmas, floor = self.settings.window_points, self.settings.sigmas, self.settings.scale_floor
        window, head, sign = self.window, self.head, self.last_sign
        out: list[float] = []
        for t, x in zip(timestamps, values, strict=True):
            if not (math.isfinite(x) and math.isfinite(t)):
                out.append(0.0)
                continue
            score = 0.0
            if len(window) == size:
                mean = math.fsum(window) / size
                std = math.sqrt(math.fsum((v - mean) ** 2 for v in window) / (size - 1))
                r = x - mean
                score = squash(abs(r) / max(std, floor), sigmas)
                sign = 1 if r >= 0.0 else -1
                window[head] = x
                head = (head + 1) % size
            else:
                window.append(x)
            out.append(score * sign)
        self.head, self.last_sign = head, sign
        return out


class EwmaDetector(StreamingDetector):
    """z-score of a point against an exponentially weighted mean and variance of the points before it."""

    kind = "ewma"
    settings_type = EwmaSettings
    settings: EwmaSettings

    def __init__(self, settings: EwmaSettings | None = None) -> None:
        super().__init__(settings)
        self.n = 0
        self.mean = 0.0
        self.var = 0.0

    def _state(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "var": self.var, "last_sign": self.last_sign}

    def _restore(self, state: dict[str, Any]) -> None:
        self.n, self.mean, self.var = int(state["n"]), float(state["mean"]), float(state["var"])
        self.last_sign = int(state["last_sign"])

    def _run(self, timestamps: list[float], values: list[float]) -> list[float]:
        cfg = self.settings
        n, mean, var, sign = self.n, self.mean, self.var, self.last_sign
        out: list[float] = []
        for t, x in zip(timestamps, values, strict=True):
            if not (math.isfinite(x) and math.isfinite(t)):
                out.append(0.0)
                continue
            n += 1
            r = x - mean
            score = 0.0
            if n > cfg.warmup_points:
                score = squash(abs(r) / max(math.sqrt(var), cfg.scale_floor), cfg.sigmas)
                sign = 1 if r >= 0.0 else -1
            a = max(cfg.alpha, 1.0 / n)
            mean += a * r
            var = (1.0 - a) * (var + a * r * r)
            out.append(score * sign)
        self.n, self.mean, self.var, self.last_sign = n, mean, var, sign
        return out
