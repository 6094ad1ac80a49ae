"""A tracked series: one detector + alerting rules, its recent values and its episode, persisted between runs."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from aiops.detection import Alerter, AlerterSettings
from aiops.incidents.episode import (
    Episode,
    RecoveryRules,
    Returned,
    episode_state,
    returned_state,
    start,
)
from aiops.incidents.lifecycle import Observation
from aiops.incidents.model import Direction, Excerpt

SeriesKey = tuple[str, str, str]
_PROGRESS = "incidents"


class TrackedSeries:
    """The state of one ``(service, operation, signal)`` series between steps: its detector and
    alerting rules, its recent values, and its episode (see :mod:`aiops.incidents.episode`)."""

    def __init__(self, key: SeriesKey, alerter: Alerter, *, recent_points: int, rules: RecoveryRules) -> None:
        self.key = key
        self.alerter = alerter
        self.rules = rules
        self.recent: deque[tuple[int, float | None]] = deque(maxlen=recent_points)
        self.last_seen_ns = 0
        self.episode: Episode | None = None
        self.returned: Returned | None = None

    def observe(self, timestamp_ns: int, value: float) -> Observation:
        """Score one step's value, apply the alerting rules and follow the episode; NaN (no
        requests) scores 0. ``fired`` is set when an episode is confirmed (the anomaly is raised),
        ``recovered`` when its value has been back near its baseline for the recovery steps."""
        detector = self.alerter.detector
        score = detector.update(timestamp_ns / 1e9, value)
        event = self.alerter.feed(timestamp_ns / 1e9, score * detector.last_sign)
        lead_in = [v for _, v in self.recent]
        self.recent.append((timestamp_ns, value if math.isfinite(value) else None))
        self.last_seen_ns = timestamp_ns
        if self.returned is not None:
            self.returned.age += 1
        fired: Direction | None = None
        recovered = False
        episode = self.episode
        if episode is not None and episode.confirmed:
            recovered = episode.follow(value, self.rules)
            if recovered:
                self.returned = Returned(episode.direction, episode.baseline, episode.tolerance(self.rules))
                self.episode = None
        elif episode is not None:
            direction = "up" if detector.last_sign >= 0 else "down"
            alerting = score >= self.alerter.settings.threshold and direction == episode.direction
            verdict = episode.confirm(value, alerting, self.rules)
            if verdict is False:
                self.episode = episode = None
            elif verdict:
                fired = episode.direction
        elif event is not None and event.kind == "fired":
            if self.returned is None or not self.returned.explains(event.direction, value, self.rules):
                self.episode = episode = start(event.direction, value, lead_in, self.rules)
                fired = event.direction if episode is not None and episode.confirmed else None
        confirmed = episode if episode is not None and episode.confirmed else None
        service, operation, signal = self.key
        return Observation(
            service=service,
            operation=operation,
            signal=signal,
            value=value,
            score=score,
            anomalous=confirmed is not None and math.isfinite(value) and not confirmed.within(value, self.rules),
            fired=fired,
            recovered=recovered,
            calm_steps=confirmed.calm if confirmed is not None else 0,
            baseline=confirmed.baseline if confirmed is not None else None,
            in_episode=self.episode is not None and self.episode.confirmed,
            recent=Excerpt(timestamps_ns=[t for t, _ in self.recent], values=[v for _, v in self.recent]),
        )

    def end_episode(self) -> None:
        """Forget the episode without a return band: its anomaly was resolved by hand or never
        raised (silenced), so the series' next alert starts afresh."""
        self.episode = None

    def forget_alerts(self, alerter_settings: AlerterSettings) -> None:
        """Keep what the detector learnt, drop every alert and episode (after the warm-up history)."""
        self.alerter = Alerter(self.alerter.detector, alerter_settings)
        self.episode = self.returned = None

    def state_dict(self) -> dict[str, Any]:
        """JSON-compatible state: the alerter (with its detector), the recent values, the episode."""
        return {
            "alerter": self.alerter.state_dict(),
            "recent": list(self.recent),
            "last_seen_ns": self.last_seen_ns,
            "episode": episode_state(self.episode),
            "returned": returned_state(self.returned),
        }

    @classmethod
    def from_state(
        cls, key: SeriesKey, state: dict[str, Any], *, recent_points: int, rules: RecoveryRules
    ) -> TrackedSeries:
        """Rebuild from :meth:`state_dict` output (a state stored before episodes existed has none)."""
        series = cls(key, Alerter.from_state(state["alerter"]), recent_points=recent_points, rules=rules)
        series.recent.extend((int(t), v) for t, v in state["recent"])
        series.last_seen_ns = int(state["last_seen_ns"])
        if state.get("episode") is not None:
            series.episode = Episode(**state["episode"])
        if state.get("returned") is not None:
            series.returned = Returned(**state["returned"])
        return series


async def load_series(conn: asyncpg.Connection, *, recent_points: int, rules: RecoveryRules) -> list[TrackedSeries]:
    """Every stored series, least recently seen first."""
    rows = await conn.fetch("SELECT series_key, state::text AS state FROM aiops_series_state ORDER BY last_seen_ns")
    return [
        TrackedSeries.from_state(
            tuple(json.loads(r["series_key"])), json.loads(r["state"]), recent_points=recent_points, rules=rules
        )
        for r in rows
    ]


async def save_series(conn: asyncpg.Connection, series: Iterable[TrackedSeries]) -> None:
    """Insert or replace the stored state of each series."""
    await conn.executemany(
        """INSERT INTO aiops_series_state (series_key, state, last_seen_ns, updated_at)
           VALUES ($1, $2::text::jsonb, $3, now())
           ON CONFLICT (series_key) DO UPDATE SET state = $2::text::jsonb, last_seen_ns = $3, updated_at = now()""",
        [(_key_text(s.key), json.dumps(s.state_dict()), s.last_seen_ns) for s in series],
    )


async def delete_series(conn: asyncpg.Connection, keys: Sequence[SeriesKey]) -> None:
    """Forget the stored state of evicted series."""
    await conn.execute("DELETE FROM aiops_series_state WHERE series_key = ANY($1::text[])", [_key_text(k) for k in keys])


async def get_progress(conn: asyncpg.Connection) -> int | None:
    """Start of the last step processed (Unix ns), None before the first."""
    return await conn.fetchval("SELECT last_step_ns FROM aiops_progress WHERE name = $1", _PROGRESS)


async def set_progress(conn: asyncpg.Connection, step_start_ns: int) -> None:
    """Record that the step starting at ``step_start_ns`` is processed."""
    await conn.execute(
        """INSERT INTO aiops_progress (name, last_step_ns) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET last_step_ns = $2, updated_at = now()""",
        _PROGRESS, step_start_ns,
    )


def _key_text(key: SeriesKey) -> str:
    return json.dumps(list(key))
