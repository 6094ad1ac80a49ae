"""A series' episode: from the alert that starts an anomaly to the signal's return to its lead-in baseline.

The detector learns as it does everywhere else, so a lasting fault becomes normal to it after a
while and its scores go quiet while the fault goes on (on a short history within a few steps).
Whether the anomaly is still there is therefore judged against the series' own past: the band
around the baseline it had *before* the alert.

- An alert (the detector crossing its boundary) starts a *candidate* episode. It is confirmed, and
  the anomaly raised, once the series has been anomalous for ``confirm_steps`` steps in a row (the
  debounce): a step counts when the detector still alerts the same way or the value is still beyond
  the band on the alert's side. Otherwise the candidate is dropped: a one-step blip.
- A confirmed episode ends only when the value has been back within the band for
  ``recovery_steps`` steps in a row. Alerts of the series during the episode belong to it.
- A fault the detector has learnt leaves one more artefact: when it ends, the detector sees the
  return as a move the other way and may alert on it. An alert in the other direction whose value
  lies within the band of the episode that just ended, while the detector still remembers the fault
  (``memory_steps``), is that return, not a new anomaly.

The band comes from the series itself: its lead-in's median and robust spread (MAD), and the
episode's own size.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiops.incidents.model import Direction

MAD_PER_SIGMA = 1.4826
"""A normal law's sigma over its median absolute deviation: turns the lead-in's MAD into a sigma."""


@dataclass(frozen=True, slots=True)
class RecoveryRules:
    """When an episode is raised and when it ends (from :class:`aiops.settings.AiopsSettings` and the
    detector's window)."""

    confirm_steps: int
    """Consecutive anomalous steps, the alert's included, before the anomaly is raised (the debounce)."""
    recovery_steps: int
    band_sigmas: float
    return_share: float
    memory_steps: int
    """How long the detector remembers a fault's values (its window): the span of a return swing."""


@dataclass(slots=True)
class Episode:
    """An anomaly of one series (a candidate until confirmed), judged against the baseline it had before."""

    direction: Direction
    baseline: float
    spread: float
    peak: float
    anomalous_steps: int = 1
    confirmed: bool = False
    calm: int = 0

    def tolerance(self, rules: RecoveryRules) -> float:
        """Half-width of the band: the lead-in's normal jitter, or a share of the way back from the
        largest deviation when the lead-in was flat (a zero error ratio has no jitter to speak of)."""
        return max(rules.band_sigmas * self.spread, rules.return_share * self.peak)

    def within(self, value: float, rules: RecoveryRules) -> bool:
        """Whether a finite value is back within the band."""
        return abs(value - self.baseline) <= self.tolerance(rules)

    def confirm(self, value: float, alerting: bool, rules: RecoveryRules) -> bool | None:
        """One more step of a candidate: True once it has been anomalous for ``confirm_steps``
        steps, False when this step was not (the candidate is dropped), None while undecided. A
        missing value (no requests) with no alert is no evidence either way."""
        finite = math.isfinite(value)
        beyond = finite and (value - self.baseline if self.direction == "up" else self.baseline - value) > self.tolerance(rules)
        if not (alerting or beyond):
            return None if not finite else False
        if finite:
            self.peak = max(self.peak, abs(value - self.baseline))
        self.anomalous_steps += 1
        self.confirmed = self.anomalous_steps >= rules.confirm_steps
        return True if self.confirmed else None

    def follow(self, value: float, rules: RecoveryRules) -> bool:
        """Count one step's value of a confirmed episode; True once it has been within the band for
        ``recovery_steps`` steps. A missing value (no requests) is no evidence and changes nothing."""
        if not math.isfinite(value):
            return False
        if self.within(value, rules):
            self.calm += 1
        else:
            self.calm = 0
            self.peak = max(self.peak, abs(value - self.baseline))
        return self.calm >= rules.recovery_steps


@dataclass(slots=True)
class Returned:
    """The band an episode ended in, remembered while the detector may still alert on the return."""

    direction: Direction
    baseline: float
    tolerance: float
    age: int = 0

    def explains(self, direction: Direction, value: float, rules: RecoveryRules) -> bool:
        """Whether an alert is the detector's view of the return from the episode that ended."""
        return (
            self.age <= rules.memory_steps
            and direction != self.direction
            and abs(value - self.baseline) <= self.tolerance
        )


def start(direction: Direction, value: float, lead_in: Sequence[float | None], rules: RecoveryRules) -> Episode | None:
    """The candidate episode an alert at ``value`` starts, from the values before it (confirmed at
    once when ``confirm_steps`` is 1); None without a finite value before it (nothing to return to)."""
    finite = [v for v in lead_in if v is not None and math.isfinite(v)]
    if not finite:
        return None
    baseline = statistics.median(finite)
    spread = MAD_PER_SIGMA * statistics.median(abs(v - baseline) for v in finite)
    peak = abs(value - baseline) if math.isfinite(value) else 0.0
    return Episode(direction, baseline, spread, peak, confirmed=rules.confirm_steps <= 1)


def episode_state(episode: Episode | None) -> dict[str, Any] | None:
    """JSON-compatible form of an episode (or of None)."""
    return None if episode is None else asdict(episode)


def returned_state(returned: Returned | None) -> dict[str, Any] | None:
    """JSON-compatible form of a remembered return band (or of None)."""
    return None if returned is None else asdict(returned)
