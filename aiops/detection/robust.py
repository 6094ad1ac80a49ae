"""The default detector: a robust Holt-Winters forecast with three calibrated scores on its residuals.

Forecast. ``level + damping * slope + season(time of day)``: a damped linear trend (so a slow drift is
normal) plus a seasonal profile of ``season_buckets`` buckets over ``season_period_s``, indexed by the
timestamp (not the point count, so gaps and irregular sampling keep their phase) and interpolated
between bucket centres. The profile learns each bucket's deviation from a slow cycle mean (an EWMA
with a time constant of one cycle), so a series without seasonality just gets a near-zero profile.

Robustness. A point that is anomalous (its residual beyond ``clip_z`` robust sigmas, or its score at
or above ``learn_below_score``) moves neither the forecast nor the spreads, so an anomaly is not
learned as normal while it lasts. After ``accept_after_points`` consecutive anomalous points the new
behaviour is accepted: the level jumps to the mean of those points, the slope restarts at 0 and the
spread grows to theirs if it was larger. A permanent shift thus raises one alert and is normal again
``accept_after_points`` points later.

Scale. Residual spread is tracked separately above and below the forecast (mean absolute residual,
clipped at ``clip_z``), so skewed series (latency) are judged on the side that matters. A floor of
``relative_scale_floor`` times the series' typical magnitude keeps a flat series (zero variance) from
turning a tiny change into a huge z-score, while a real change from flat still scores high. A running
estimate of the 99th percentile of |z| raises the bar for single points on heavy-tailed series.

Scores, each mapped to [0, 1] with 0.5 at its own boundary, combined by taking the largest:
- point: the residual's robust z-score (spikes, dips, the first points of a shift);
- shift: an EWMA of clipped z-scores over its null spread (a sustained moderate shift, a change of
  slope that no single point reveals);
- variance: the short-term mean absolute residual over the long-term one (a burst of noise).

No scores before ``warmup_points`` points, nor for ``rewarm_points`` after a gap longer than
``gap_factor`` typical steps (the level restarts from the first point after the gap). NaN and infinite
values score 0 and leave the state untouched.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiops.detection.base import StreamingDetector

_SIGMA_PER_MEAN_ABS = 1.2533  # sigma / E|r| for a normal residual
_TAIL_P = 0.01  # the tail quantile tracked: |z| exceeded by 1% of residuals
_NORMAL_TAIL_Z = 2.5758  # that quantile for normal residuals


class RobustSettings(BaseSettings):
    """Settings of the default detector (env prefix ``DEVART_DETECTION_``); the defaults are meant to
    work on any series without tuning."""

    model_config = SettingsConfigDict(env_prefix="DEVART_DETECTION_", extra="ignore")

    warmup_points: int = Field(default=30, ge=2, description="points seen before any score above 0")
    level_alpha: float = Field(default=0.1, gt=0, le=1, description="EWMA weight of a new point in the level")
    slope_beta: float = Field(default=0.02, ge=0, le=1, description="EWMA weight of a residual in the slope")
    slope_damping: float = Field(
        default=0.9, ge=0, le=1, description="factor applied to the slope each step (1 = undamped trend)"
    )
    season_period_s: float = Field(default=86400.0, gt=0, description="length of the seasonal cycle, seconds")
    season_buckets: int = Field(default=48, ge=2, le=10_000, description="buckets in one seasonal cycle")
    season_gamma: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="weight of one cycle's residuals in its seasonal bucket(s); 0 disables seasonality",
    )
    scale_alpha: float = Field(
        default=0.02, gt=0, le=1, description="EWMA weight of a residual in the spread"
    )
    burst_alpha: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="EWMA weight of a residual in the short-term spread (variance score)",
    )
    clip_z: float = Field(
        default=3.0,
        gt=0,
        description="robust z above which a point is an outlier and does not update the forecast",
    )
    accept_after_points: int = Field(
        default=60,
        ge=1,
        description="consecutive anomalous points after which the new behaviour is accepted as normal",
    )
    learn_below_score: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="points scoring at or above this do not update the forecast or spreads",
    )
    tail_rate: float = Field(
        default=0.01,
        ge=0,
        description="step of the running estimate of the 99th percentile of |z| (0 = assume normal tails)",
    )
    point_z: float = Field(default=6.0, gt=0, description="robust z of one point that scores 0.5")
    shift_alpha: float = Field(
        default=0.15, gt=0, le=1, description="EWMA weight of a z-score in the shift score"
    )
    shift_z: float = Field(
        default=5.0, gt=0, description="shift statistic (EWMA of z over its null spread) that scores 0.5"
    )
    variance_ratio: float = Field(
        default=2.2, gt=1, description="short-term over long-term residual spread that scores 0.5"
    )
    relative_scale_floor: float = Field(
        default=0.005, ge=0, description="smallest spread, as a fraction of the series' typical magnitude"
    )
    absolute_scale_floor: float = Field(
        default=1e-9, gt=0, description="smallest spread, in the series' unit"
    )
    gap_factor: float = Field(
        default=6.0, gt=1, description="a time step longer than this many typical steps is a gap (re-warm)"
    )
    rewarm_points: int = Field(default=10, ge=0, description="points not scored after a gap")


_FLOATS = (
    "last_t",
    "step",
    "level",
    "slope",
    "up",
    "down",
    "spread",
    "burst",
    "magnitude",
    "shift",
    "run_sum",
    "run_sq",
    "profile_sum",
    "cycle_mean",
    "tail",
)
_INTS = ("n", "hold", "run_n")


class RobustDetector(StreamingDetector):
    """Robust Holt-Winters forecast + point, shift and variance scores (the default detector)."""

    kind = "robust"
    settings_type = RobustSettings
    settings: RobustSettings

    def __init__(self, settings: RobustSettings | None = None) -> None:
        super().__init__(settings)
        self.n = 0
        self.hold = 0
        self.run_n = 0
        self.run_sq = 0.0
        self.last_t = 0.0
        self.step = 0.0
        self.level = 0.0
        self.slope = 0.0
        self.up = 0.0
        self.down = 0.0
        self.spread = 0.0
        self.burst = 0.0
        self.magnitude = 0.0
        self.shift = 0.0
        self.run_sum = 0.0
        self.profile_sum = 0.0
        self.cycle_mean = 0.0
        self.tail = _NORMAL_TAIL_Z
        self.profile = [0.0] * self.settings.season_buckets

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in _FLOATS + _INTS}
        state["profile"] = list(self.profile)
        state["last_sign"] = self.last_sign
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        for name in _FLOATS:
            setattr(self, name, float(state[name]))
        for name in _INTS:
            setattr(self, name, int(state[name]))
        profile = [float(v) for v in state["profile"]]
        if len(profile) != self.settings.season_buckets:
            raise ValueError(
                f"state.profile: {len(profile)} buckets, settings say {self.settings.season_buckets}"
            )
        self.profile = profile
        self.last_sign = int(state["last_sign"])

    def _run(self, timestamps: list[float], values: list[float]) -> list[float]:
        cfg = self.settings
        isfinite = math.isfinite
        warmup, rewarm = cfg.warmup_points, cfg.rewarm_points
        alpha, beta, phi = cfg.level_alpha, cfg.slope_beta, cfg.slope_damping
        period, buckets, gamma = cfg.season_period_s, cfg.season_buckets, cfg.season_gamma
        scale_alpha, burst_alpha, clip = cfg.scale_alpha, cfg.burst_alpha, cfg.clip_z
        accept_after, shift_alpha, learn_below = (
            cfg.accept_after_points,
            cfg.shift_alpha,
            cfg.learn_below_score,
        )
        inv_point = 1.0 / cfg.point_z
        # The EWMA of unit-variance z-scores has a null standard deviation of sqrt(a / (2 - a)).
        inv_shift = 1.0 / (cfg.shift_z * math.sqrt(shift_alpha / (2.0 - shift_alpha)))
        inv_var = 1.0 / cfg.variance_ratio
        rel_floor, abs_floor, gap_factor = cfg.relative_scale_floor, cfg.absolute_scale_floor, cfg.gap_factor
        profile, profile_sum, inv_buckets = self.profile, self.profile_sum, 1.0 / buckets
        cycle_mean = self.cycle_mean
        points_per_bucket_dt, inv_period = buckets / period, 1.0 / period
        n, hold, run_n, run_sq = self.n, self.hold, self.run_n, self.run_sq
        last_t, step, level, slope = self.last_t, self.step, self.level, self.slope
        up, down, spread, burst = self.up, self.down, self.spread, self.burst
        magnitude, shift, run_sum, sign = self.magnitude, self.shift, self.run_sum, self.last_sign
        tail, tail_rate = self.tail, cfg.tail_rate
        out: list[float] = []
        append = out.append
        for t, x in zip(timestamps, values, strict=True):
            if not (isfinite(x) and isfinite(t)):
                append(0.0)
                continue
            n += 1
            season = frac = 0.0
            i0 = i1 = 0
            if gamma > 0.0:
                pos = (t % period) * buckets / period - 0.5
                i0 = math.floor(pos)
                frac = pos - i0
                i0 %= buckets
                i1 = i0 + 1 if i0 + 1 < buckets else 0
                season = profile[i0] + frac * (profile[i1] - profile[i0]) - profile_sum * inv_buckets
            if n == 1:
                level, magnitude, last_t = x - season, abs(x), t
                sign = 0
                append(0.0)
                continue
            dt = t - last_t
            last_t = max(t, last_t)
            if n == 2:
                step = dt if dt > 0.0 else 0.0
            elif step > 0.0 and dt > gap_factor * step:
                level, slope, shift, hold = x - season, 0.0, 0.0, rewarm
                run_n, run_sum, run_sq = 0, 0.0, 0.0
                burst = spread
                sign = 0
                append(0.0)
                continue
            elif dt > 0.0:
                step += 0.05 * (dt - step) if step > 0.0 else dt
            warm = n <= warmup
            forecast = level + phi * slope + season
            r = x - forecast
            ar = r if r >= 0.0 else -r
            floor = rel_floor * magnitude
            if floor < abs_floor:
                floor = abs_floor
            side = (up if r >= 0.0 else down) * _SIGMA_PER_MEAN_ABS
            if side < floor:
                side = floor
            z = r / side
            az = ar / side
            zc = z if az <= clip else (clip if z > 0.0 else -clip)
            if warm or hold > 0:
                if hold > 0:
                    hold -= 1
                score = 0.0
                sign = 0
            else:
                shift += shift_alpha * (zc - shift)
                # squash() inlined: this loop is the hot path of every series. Heavier tails than normal
                # (a higher tracked quantile of |z|) raise the bar for a single point.
                q = az * inv_point * (_NORMAL_TAIL_Z / tail if tail > _NORMAL_TAIL_Z else 1.0)
                q *= q
                q *= q
                score = q / (1.0 + q)
                sign = 1 if r >= 0.0 else -1
                q = (shift if shift >= 0.0 else -shift) * inv_shift
                q *= q
                q *= q
                q = q / (1.0 + q)
                if q > score:
                    score = q
                    sign = 1 if shift >= 0.0 else -1
                base = spread if spread * _SIGMA_PER_MEAN_ABS > floor else floor / _SIGMA_PER_MEAN_ABS
                q = burst / base * inv_var
                q *= q
                q *= q
                q = q / (1.0 + q)
                if q > score:
                    score = q
            append(score * sign)
            # Updates. Anomalous points leave the forecast and the spreads alone, so an anomaly is not
            # learned as normal while it lasts; a long enough run of them is accepted as the new normal.
            if warm:
                a = 1.0 / (n - 1) if scale_alpha * (n - 1) < 1.0 else scale_alpha
                spread += a * (ar - spread)
                up = down = burst = spread
                magnitude += a * ((x if x >= 0.0 else -x) - magnitude)
            else:
                magnitude += scale_alpha * ((x if x >= 0.0 else -x) - magnitude)
                cap = clip * side
                tail += tail_rate * ((1.0 - _TAIL_P) if az > tail else -_TAIL_P)
                burst += burst_alpha * ((ar if ar < cap else cap) - burst)
                if az > clip or score >= learn_below:
                    slope *= phi
                    level += slope
                    d = x - season - level
                    run_n += 1
                    run_sum += d
                    run_sq += d * d
                    if run_n >= accept_after:
                        d = run_sum / run_n
                        level += d
                        cycle_mean += d
                        slope = shift = 0.0
                        d = math.sqrt(max(run_sq / run_n - d * d, 0.0)) / _SIGMA_PER_MEAN_ABS
                        spread, up, down = max(spread, d), max(up, d), max(down, d)
                        burst = spread
                        run_n, run_sum, run_sq = 0, 0.0, 0.0
                    continue
                rc = ar if ar < cap else cap
                spread += scale_alpha * (rc - spread)
                if r >= 0.0:
                    up += scale_alpha * (rc - up)
                else:
                    down += scale_alpha * (rc - down)
            run_n, run_sum, run_sq = 0, 0.0, 0.0
            a = alpha if not warm or alpha * n >= 1.0 else 1.0 / n
            level += phi * slope + a * r
            slope = phi * slope + beta * r
            if warm:
                cycle_mean += (x - season - cycle_mean) / n
            elif dt > 0.0:
                w = dt * inv_period
                cycle_mean += (w if w < 1.0 else 1.0) * (x - season - cycle_mean)
                if gamma > 0.0:
                    # The profile learns deviations from the slow cycle mean, not from the fast level
                    # (which would absorb the season itself); gamma is spread over a bucket's points.
                    w = dt * points_per_bucket_dt
                    g = gamma * (w if w < 1.0 else 1.0) * (x - cycle_mean - season)
                    profile[i0] += g * (1.0 - frac)
                    profile[i1] += g * frac
                    profile_sum += g
        self.n, self.hold, self.run_n, self.run_sq = n, hold, run_n, run_sq
        self.last_t, self.step, self.level, self.slope = last_t, step, level, slope
        self.up, self.down, self.spread, self.burst = up, down, spread, burst
        self.magnitude, self.shift, self.run_sum, self.last_sign = magnitude, shift, run_sum, sign
        self.profile_sum, self.cycle_mean, self.tail = profile_sum, cycle_mean, tail
        return out
