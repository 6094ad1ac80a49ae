"""A tracked series: one detector + alerting rules and its recent values, persisted between runs."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from aiops.detection import Alerter
from aiops.incidents.lifecycle import Observation
from aiops.incidents.model import Excerpt

SeriesKey = tuple[str, str, str]
_PROGRESS = "incidents"


class TrackedSeries:
    """The state of one ``(service, operation, signal)`` series between steps."""

    def __init__(self, key: SeriesKey, alerter: Alerter, *, recent_points: int) -> None:
        self.key = key
        self.alerter = alerter
        self.recent: deque[tuple[int, float | None]] = deque(maxlen=recent_points)
        self.last_seen_ns = 0

    def observe(self, timestamp_ns: int, value: float) -> Observation:
        """Score one step's value and apply the alerting rules; NaN (no requests) scores 0."""
        detector = self.alerter.detector
        score = detector.update(timestamp_ns / 1e9, value)
        event = self.alerter.feed(timestamp_ns / 1e9, score * detector.last_sign)
        self.recent.append((timestamp_ns, value if math.isfinite(value) else None))
        self.last_seen_ns = timestamp_ns
        service, operation, signal = self.key
        return Observation(
            service=service,
            operation=operation,
            signal=signal,
            value=value,
            score=score,
            anomalous=score >= self.alerter.settings.clear_threshold,
            fired=event.direction if event is not None and event.kind == "fired" else None,
            recovered=event is not None and event.kind == "resolved",
            calm_steps=self.alerter.calm,
            recent=Excerpt(timestamps_ns=[t for t, _ in self.recent], values=[v for _, v in self.recent]),
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-compatible state: the alerter (with its detector) and the recent values."""
        return {"alerter": self.alerter.state_dict(), "recent": list(self.recent), "last_seen_ns": self.last_seen_ns}

    @classmethod
    def from_state(cls, key: SeriesKey, state: dict[str, Any], *, recent_points: int) -> TrackedSeries:
        """Rebuild from :meth:`state_dict` output."""
        series = cls(key, Alerter.from_state(state["alerter"]), recent_points=recent_points)
        series.recent.extend((int(t), v) for t, v in state["recent"])
        series.last_seen_ns = int(state["last_seen_ns"])
        return series


async def load_series(conn: asyncpg.Connection, *, recent_points: int) -> list[TrackedSeries]:
    """Every stored series, least recently seen first."""
    rows = await conn.fetch("SELECT series_key, state::text AS state FROM aiops_series_state ORDER BY last_seen_ns")
    return [
        TrackedSeries.from_state(tuple(json.loads(r["series_key"])), json.loads(r["state"]), recent_points=recent_points)
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
