"""A detector whose score is a calibrated tail probability: conformal p-values with an
extreme-value tail, at two time scales, with suppression of repeated alerts.

Period. The first ``period_probe_points`` steps are kept and their autocorrelation computed once,
each lag's mean product over the pairs of values it has (a step missed by a gap or a NaN keeps its
place and pairs with nothing): the top of the first hump above ``_SEASONAL_ACF`` at a lag of at
least ``min_period_points`` is the series' period (a daily cycle at any sampling step, a weekly one,
a job's cadence). The sampling step is learnt from the times between points, so a gap or a NaN
later still leaves every value at its phase. With a period,
the detector judges the *seasonal residual*, the value minus the median of the same phase over the
last ``_SEASONAL_CYCLES`` cycles; the state learnt until then is dropped, since it described raw
values, and rebuilt at once by replaying the probe's residuals (so finding a period does not start
a second warm-up). Without one it judges the values themselves.

Residual. Each input is compared with the median of the previous ``window_points`` inputs, in
units of their interquartile spread (robust to the outliers it is looking for), floored at a small
share of the series' typical magnitude so a flat series does not turn noise into huge z-scores.

Four statistics per point: ``|z|`` of the point itself (spikes, dips); ``|sum of the last k z| /
sqrt(k)`` at two time scales, ``k = shift_points`` and ``long_shift_points`` (a sustained moderate
shift no single point shows, and a slower drift); and the mean of ``min(|z|, 3)`` over the last
``burst_points`` (a burst of variance: many moderately unusual points, on both sides, whose sum
cancels; each point says less about a variance than about a mean, so it is judged over twice the
long shift's points).

Calibration. Each statistic's p-value is its rank among the last ``history_points`` values of the
same statistic on this series (a conformal p-value: under exchangeability of normal points it is
uniform, whatever the series' distribution). Beyond the ``tail_share`` largest values seen the
empirical rank runs out of resolution, so the tail is extrapolated with an exponential law (the
generalised Pareto law with zero shape, as in SPOT, Siffer et al. 2017) over those largest values'
excesses, through its predictive law: with k excesses summing to S a new excess passes x with
probability (1 + x/S)^-k, which is exact whatever the law's scale, where plugging in the fitted scale
(exp(-k x/S)) treated a fit to five or ten values as exact and crossed the alert boundary 2.5 to 27
times as often as it said. The four p-values are combined by Simes' rule (valid for positively
dependent statistics, as overlapping sums of the same z-scores are; Bonferroni's four times the
smallest when one statistic stands out, less when several agree).

Score. ``-log10(p)`` mapped to [0, 1] with 0.5 at the alert boundary (the detector's own, as for
every detector here), rising steeply around it. The boundary is ``alert_p`` per ``alert_interval_s``
of the series' learnt step, so a series sampled every minute crosses it as often per day as one
sampled every five minutes (never more than ``alert_p`` per point). After a point reaches the boundary, the next
``suppress_points`` points score 0 unless they are ``escalation`` times less likely still: one
anomaly, one alert (a consumer with its own alerting rules, such as the incident pipeline, sets
``suppress_points`` to 0). No score during the first ``warmup_points`` points, nor before
``min_history_points`` statistics are known, none for NaN or infinite values (they change nothing).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiops.detection.base import StreamingDetector

_IQR_PER_SIGMA = 1.349
"""Interquartile range of a normal law in sigmas: turns the window's IQR into a sigma."""
_MIN_HISTORY = 20
"""Fewest past statistics ``min_history_points`` may allow: with fewer the tail fit has almost nothing to fit."""
_MIN_TAIL = 5
"""Fewest largest values the exponential tail is fitted to."""
_P_FLOOR = 1e-15
"""Smallest p-value reported: keeps -log10(p) finite and scores below 1.0 in floating point."""
_HILL_ORDER = 4.0
"""Steepness of the score curve around its 0.5 point, shared with ``squash``."""
_SEASONAL_ACF = 0.5
"""Autocorrelation a lag needs to be a period: more than half the variance repeats one cycle later."""
_SEASONAL_CYCLES = 3
"""Past cycles whose same-phase median is the seasonal expectation: the median of 3 ignores one outlier."""
_DAY_S = 86_400.0
"""A calendar day: an autocorrelation peak within ``_CALENDAR_TOLERANCE`` of one day's points is one day."""
_CALENDAR_TOLERANCE = 0.05
"""Relative error of a period read off a probe of about two cycles (measured: 280-282 points for a
288-point day); a seasonal expectation six points out of phase leaves a large share of the cycle in
the residual, so a near-day peak snaps to the day given by the series' own sampling step."""
_GAP_STEPS = 1.5
"""A time between points longer than this many steps holds missed steps: it does not teach the step."""
_STEP_RATE = 0.05
"""Weight of each new time between points in the learnt step: a few dozen points settle it, jitter averages out."""
_BURST_CLIP = 3.0
"""|z| above which a point adds no more to the burst statistic: single large points are the point
statistic's; the burst counts how many moderately unusual points gather."""


class ConformalSettings(BaseSettings):
    """Settings of the conformal detector (env prefix ``DEVART_DETECTION_CONFORMAL_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_DETECTION_CONFORMAL_", extra="ignore")

    window_points: int = Field(
        default=288, ge=10, le=20_000, description="points whose median and spread a point is compared with"
    )
    history_points: int = Field(
        default=1000, ge=_MIN_HISTORY, le=50_000, description="past statistics a p-value is ranked among"
    )
    shift_points: int = Field(
        default=6, ge=2, le=1000, description="points summed into the sustained-shift statistic"
    )
    long_shift_points: int = Field(
        default=24, ge=2, le=1000, description="points summed into the slow-shift statistic"
    )
    burst_points: int = Field(
        default=48, ge=2, le=1000, description="points of the variance-burst statistic"
    )
    tail_share: float = Field(
        default=0.01, gt=0, lt=0.5, description="share of the largest past statistics the tail is fitted to"
    )
    alert_p: float = Field(
        default=0.002, gt=0, lt=0.5, description="p-value that scores 0.5 (and starts suppression), per alert_interval_s"
    )
    alert_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="time alert_p is per: a series sampled more often gets alert_p x step / interval per point (0: per point)",
    )
    suppress_points: int = Field(
        default=100, ge=0, description="points after an alert that score 0 unless far less likely"
    )
    escalation: float = Field(
        default=0.01, gt=0, le=1, description="p-value ratio by which a suppressed point must beat the alert"
    )
    warmup_points: int = Field(default=30, ge=10, description="points seen before any score above 0")
    min_history_points: int = Field(
        default=30, ge=_MIN_HISTORY, description="past statistics needed before a p-value is given"
    )
    period_probe_points: int = Field(
        default=600, ge=0, le=20_000, description="first points whose autocorrelation finds the period (0: never)"
    )
    min_period_points: int = Field(
        default=48, ge=2, description="shortest lag accepted as a period (shorter ones are noise correlation)"
    )
    relative_scale_floor: float = Field(
        default=1e-3, ge=0, description="smallest spread, as a fraction of the series' typical magnitude"
    )
    absolute_scale_floor: float = Field(default=1e-9, gt=0, description="smallest spread, in the series' unit")


class _Ranked:
    """A bounded FIFO of floats kept sorted too, for ranks and quantiles in O(log n + n) per point."""

    def __init__(self, size: int, values: list[float] | None = None) -> None:
        self.size = size
        self.fifo: deque[float] = deque(values or ())
        self.sorted = sorted(self.fifo)

    def push(self, value: float) -> None:
        self.fifo.append(value)
        bisect.insort(self.sorted, value)
        if len(self.fifo) > self.size:
            old = self.fifo.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def p_value(self, value: float, tail_share: float) -> float:
        """Share of past values at or above ``value`` (plus one, conformal); beyond the largest
        ``tail_share`` the predictive tail of an exponential law fitted to their excesses."""
        s = self.sorted
        n = len(s)
        top = max(int(tail_share * n), _MIN_TAIL)
        u = s[n - top - 1]
        if value > u:
            # With k excesses of an exponential law summing to S, a new excess x has
            # P(X > x) = (1 + x/S)^-k whatever the law's scale: the scale's own uncertainty is in it.
            excess = max(math.fsum(s[n - top :]) - top * u, 1e-12)
            return top / (n + 1) * (1.0 + (value - u) / excess) ** -top
        return (n - bisect.bisect_left(s, value) + 1) / (n + 1)


def _simes(p_values: list[float]) -> float:
    """Simes' combination: the smallest ``m * p_(i) / i`` over the sorted p-values, a valid p-value
    for "all null" when the statistics are positively dependent (as overlapping sums of the same z
    are), and smaller than Bonferroni's ``m * p_(1)`` when several statistics agree."""
    ordered = sorted(p_values)
    m = len(ordered)
    return min(1.0, min(m * p / i for i, p in enumerate(ordered, start=1)))


def _missed_as_none(values: Iterable[float]) -> list[float | None]:
    """A missed step (NaN) as JSON null: states must survive ``json.dumps(allow_nan=False)``."""
    return [None if math.isnan(v) else v for v in values]


class ConformalDetector(StreamingDetector):
    """Conformal, tail-extrapolated p-values of point, shift and burst statistics, with alert suppression."""

    kind = "conformal"
    settings_type = ConformalSettings
    settings: ConformalSettings

    def __init__(self, settings: ConformalSettings | None = None) -> None:
        super().__init__(settings)
        cfg = self.settings
        self.n = 0
        self.hold = 0
        self.alert_p = 1.0
        self.magnitude = 0.0
        self.window = _Ranked(cfg.window_points)
        self.recent: deque[float] = deque(maxlen=self._recent_size)
        self.clipped: deque[float] = deque(maxlen=self._recent_size)
        """``min(|z|, _BURST_CLIP)`` of each recent z-score, what the burst averages (derived, not stored)."""
        self.points = _Ranked(cfg.history_points)
        self.shifts = _Ranked(cfg.history_points)
        self.long_shifts = _Ranked(cfg.history_points)
        self.bursts = _Ranked(cfg.history_points)
        self.probe: list[float] = []
        self.probe_t0 = 0.0
        self.last_t = -math.inf
        self.step = 0.0
        """The series' sampling step in seconds, learnt from the times between points (gaps left out)."""
        self.period = 0
        """0 until the probe is full, then the period in points, or -1 when there is none."""
        self.cycles: deque[float] = deque()

    @property
    def _recent_size(self) -> int:
        cfg = self.settings
        return max(cfg.shift_points, cfg.long_shift_points, cfg.burst_points)

    @classmethod
    def _stored_settings(cls, settings: dict[str, Any]) -> BaseSettings:
        # a state saved before the boundary was per unit of time had it per point
        return cls.settings_type.model_validate({"alert_interval_s": 0.0, **settings})

    def _clear(self) -> None:
        """Forget the window, the recent z-scores and the statistics' history (and the point count)."""
        cfg = self.settings
        self.window = _Ranked(cfg.window_points)
        self.recent.clear()
        self.clipped.clear()
        self.points, self.shifts = _Ranked(cfg.history_points), _Ranked(cfg.history_points)
        self.long_shifts, self.bursts = _Ranked(cfg.history_points), _Ranked(cfg.history_points)
        self.n = 0

    def _state(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "hold": self.hold,
            "alert_p": self.alert_p,
            "magnitude": self.magnitude,
            "last_sign": self.last_sign,
            "window": list(self.window.fifo),
            "recent": list(self.recent),
            "points": list(self.points.fifo),
            "shifts": list(self.shifts.fifo),
            "long_shifts": list(self.long_shifts.fifo),
            "bursts": list(self.bursts.fifo),
            "probe": _missed_as_none(self.probe),
            "probe_t0": self.probe_t0,
            "last_t": self.last_t if math.isfinite(self.last_t) else None,
            "step": self.step,
            "period": self.period,
            "cycles": _missed_as_none(self.cycles),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        cfg = self.settings
        for name, limit in (
            ("window", cfg.window_points),
            ("recent", self._recent_size),
            ("points", cfg.history_points),
            ("shifts", cfg.history_points),
            ("long_shifts", cfg.history_points),
            ("bursts", cfg.history_points),
            ("probe", cfg.period_probe_points),
            ("cycles", _SEASONAL_CYCLES * cfg.period_probe_points),
        ):
            if len(state[name]) > limit:
                raise ValueError(f"state.{name}: {len(state[name])} values, settings allow {limit}")
        self.n, self.hold = int(state["n"]), int(state["hold"])
        self.alert_p, self.magnitude = float(state["alert_p"]), float(state["magnitude"])
        self.last_sign = int(state["last_sign"])
        self.window = _Ranked(cfg.window_points, [float(v) for v in state["window"]])
        self.recent = deque((float(v) for v in state["recent"]), maxlen=self._recent_size)
        self.clipped = deque((min(abs(v), _BURST_CLIP) for v in self.recent), maxlen=self._recent_size)
        self.points = _Ranked(cfg.history_points, [float(v) for v in state["points"]])
        self.shifts = _Ranked(cfg.history_points, [float(v) for v in state["shifts"]])
        self.long_shifts = _Ranked(cfg.history_points, [float(v) for v in state["long_shifts"]])
        self.bursts = _Ranked(cfg.history_points, [float(v) for v in state["bursts"]])
        self.probe = [math.nan if v is None else float(v) for v in state["probe"]]
        self.probe_t0 = float(state["probe_t0"])
        # states saved before the step was learnt have neither: the step is then learnt from here on
        last_t = state.get("last_t")
        self.last_t = -math.inf if last_t is None else float(last_t)
        self.step = float(state.get("step", 0.0))
        self.period = int(state["period"])
        self.cycles = deque(math.nan if v is None else float(v) for v in state["cycles"])

    def _find_period(self, step_s: float) -> None:
        """Set ``period`` from the probe's autocorrelation and, when there is one, start afresh on the
        seasonal residual: the probe's first cycle seeds the cycles and the rest is replayed through
        the detector (scores discarded), so it goes on from the probe's end without a new warm-up."""
        probe, self.probe = self.probe, []
        x = np.asarray(probe)
        seen = (~np.isnan(x)).astype(float)
        x = np.nan_to_num(x - float(np.nanmean(x)))  # a missed step adds nothing to any lag
        variance = float(np.dot(x, x)) / max(float(seen.sum()), 1.0)
        n = x.size
        if variance > 0:
            # the mean product over the pairs a lag has (fewer at longer lags, fewer with missed
            # steps), so a daily cycle reads as strongly at lag 288 of 600 points as at lag 10
            pairs = np.correlate(seen, seen, "full")[n - 1 :]
            acf = np.correlate(x, x, "full")[n - 1 :] / np.maximum(pairs, 1.0) / variance
            for lag in range(max(self.settings.min_period_points, 1), n // 2):
                if acf[lag] > _SEASONAL_ACF and acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]:
                    # the top of the whole hump above the threshold, not its first noisy local maximum
                    end = lag
                    while end + 1 < n // 2 and acf[end + 1] > _SEASONAL_ACF:
                        end += 1
                    self.period = lag + int(np.argmax(acf[lag : end + 1]))
                    break
        day = round(_DAY_S / step_s) if step_s > 0 else 0
        if self.period > 0 and abs(self.period - day) <= _CALENDAR_TOLERANCE * day and day < n:
            self.period = day
        if self.period <= 0:
            self.period = -1
            return
        self._clear()
        self.hold, self.alert_p = 0, 1.0
        self.cycles = deque(probe[: self.period])
        rest = probe[self.period :]
        # the rest on the learnt time grid, so its missed steps keep their places in the cycles
        end = self.last_t
        self._run([end - (len(rest) - 1 - i) * step_s for i in range(len(rest))], rest)

    def _seasonal(self, x: float, missed: int) -> float:
        """The value minus the median of the same phase over the past cycles (then remember it);
        ``missed`` steps without a value since the last one keep their places in the cycles as NaN,
        so a gap or a NaN does not shift the phase of every later point."""
        p = self.period
        for _ in range(min(missed, _SEASONAL_CYCLES * p)):
            self.cycles.append(math.nan)
        while len(self.cycles) > _SEASONAL_CYCLES * p:
            self.cycles.popleft()
        past = sorted(v for v in (self.cycles[len(self.cycles) - k * p] for k in range(1, _SEASONAL_CYCLES + 1)
                                  if len(self.cycles) >= k * p) if not math.isnan(v))
        self.cycles.append(x)
        if len(self.cycles) > _SEASONAL_CYCLES * p:
            self.cycles.popleft()
        return x - past[len(past) // 2] if past else 0.0

    def _learn_step(self, t: float) -> int:
        """Learn the sampling step from the time since the last point and return how many steps
        passed without a value (a NaN, a gap). A time longer than ``_GAP_STEPS`` steps, or a
        repeated timestamp, teaches the step nothing."""
        dt, self.last_t = t - self.last_t, t
        if not (dt > 0 and math.isfinite(dt)):
            return 0
        if self.step <= 0:
            self.step = dt
            return 0
        if dt <= _GAP_STEPS * self.step:
            self.step += _STEP_RATE * (dt - self.step)
        return max(round(dt / self.step) - 1, 0)

    def _alert_p(self) -> float:
        """The per-point alert boundary: ``alert_p`` per ``alert_interval_s``, so a series sampled
        every minute alerts as often per day as one sampled every five (never more than ``alert_p``
        per point: a sparse series does not get a looser boundary)."""
        cfg = self.settings
        if cfg.alert_interval_s <= 0 or self.step <= 0:
            return cfg.alert_p
        return cfg.alert_p * min(1.0, self.step / cfg.alert_interval_s)

    def _run(self, timestamps: list[float], values: list[float]) -> list[float]:
        cfg = self.settings
        k, root_k = cfg.shift_points, math.sqrt(cfg.shift_points)
        long_k, root_long = cfg.long_shift_points, math.sqrt(cfg.long_shift_points)
        burst_k = cfg.burst_points
        out: list[float] = []
        for t, x in zip(timestamps, values, strict=True):
            if not (math.isfinite(x) and math.isfinite(t)):
                out.append(0.0)
                continue
            missed = self._learn_step(t)
            alert_p = self._alert_p()
            if self.period > 0:
                x = self._seasonal(x, missed)
            elif self.period == 0 and cfg.period_probe_points:
                if not self.probe:
                    self.probe_t0 = t
                self.probe.extend([math.nan] * min(missed, cfg.period_probe_points - 1 - len(self.probe)))
                self.probe.append(x)
                if len(self.probe) == cfg.period_probe_points:
                    # the probe's span over its steps (missed ones included): the step without the jitter
                    self._find_period((t - self.probe_t0) / max(len(self.probe) - 1, 1))
                    if self.period > 0:
                        out.append(0.0)
                        continue
            self.n += 1
            score, sign = 0.0, 0
            window = self.window.sorted
            if len(window) >= 10:
                m = len(window)
                median = window[m // 2]
                spread = (window[(3 * m) // 4] - window[m // 4]) / _IQR_PER_SIGMA
                floor = max(cfg.relative_scale_floor * max(abs(median), self.magnitude), cfg.absolute_scale_floor)
                z = (x - median) / max(spread, floor)
                recent = self.recent
                recent.append(z)
                self.clipped.append(min(abs(z), _BURST_CLIP))
                filled = len(recent)
                point = abs(z)
                shift = abs(math.fsum(islice(recent, filled - k, None))) / root_k if filled >= k else 0.0
                long_shift = abs(math.fsum(islice(recent, filled - long_k, None))) / root_long if filled >= long_k else 0.0
                # over the points there are until there are burst_k: a burst of 0 while the other
                # statistics start would leave the first real one above a history of zeros
                burst_n = min(filled, burst_k)
                burst = math.fsum(islice(self.clipped, filled - burst_n, None)) / burst_n
                p = 1.0
                if len(self.points.fifo) >= cfg.min_history_points:
                    tail_share = cfg.tail_share
                    p = _simes([
                        self.points.p_value(point, tail_share),
                        self.shifts.p_value(shift, tail_share),
                        self.long_shifts.p_value(long_shift, tail_share),
                        self.bursts.p_value(burst, tail_share),
                    ])
                if self.n > cfg.warmup_points and len(self.points.fifo) >= cfg.min_history_points:
                    if self.hold > 0:
                        self.hold -= 1
                        if p < self.alert_p * cfg.escalation:
                            self.alert_p, self.hold = p, cfg.suppress_points
                        else:
                            p = 1.0
                    elif p <= alert_p:
                        self.alert_p, self.hold = p, cfg.suppress_points
                    q = (math.log10(max(p, _P_FLOOR)) / math.log10(alert_p)) ** _HILL_ORDER
                    score = q / (1.0 + q)
                    sign = 1 if z >= 0.0 else -1
                self.points.push(point)
                self.shifts.push(shift)
                self.long_shifts.push(long_shift)
                self.bursts.push(burst)
            self.last_sign = sign
            out.append(score * sign)
            a = 1.0 / self.n if self.n < 100 else 0.01
            self.magnitude += a * (abs(x) - self.magnitude)
            self.window.push(x)
        return out
