"""The second stage of verification: the signal that opened the incident, one point per interval.

Like an Argo Rollouts analysis: ``count`` points ``interval`` apart; more than ``failure_limit``
failed points fail the remediation. A point with no data counts neither way; a run of only such
points is inconclusive. devart's own targets (pools, agents) are judged by their task failures,
Kubernetes targets by the incident's anomalous series against its baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from aiops.signals import SpanColumns, compute_signals
from aiops.traces.source import SpanSource

_S = 1_000_000_000
TOLERANCE = 1.5
"""A point passes when the signal is back within this factor of its baseline."""


@dataclass(frozen=True)
class Point:
    ok: bool | None
    detail: str

    def json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "at": time.time()}


async def task_failures(conn: asyncpg.Connection, *, pool: str | None, agents: list[str], window_s: float) -> Point:
    """Attempts of the pool (or of the agents) that failed in the last ``window_s``: none is a pass."""
    failed, total = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE status IN ('failed', 'timed_out')), count(*) FROM attempts
           WHERE finished_at > now() - make_interval(secs => $3)
             AND (pool_id = $1 OR agent_id = ANY($2::text[]))""",
        pool, agents, window_s,
    )
    if failed:
        return Point(False, f"{failed} of {total} attempts failed in the last {window_s:.0f}s")
    return Point(True, f"no failed attempt in the last {window_s:.0f}s ({total} finished)")


async def incident_signal(conn: asyncpg.Connection, source: SpanSource, incident_id: Any, *, window_s: float) -> Point:
    """The incident's anomalous series over the last ``window_s``, each against its baseline."""
    anomalies = await conn.fetch(
        "SELECT service, operation, signal, direction, baseline FROM incident_anomalies WHERE incident_id = $1",
        incident_id,
    )
    if not anomalies:
        return Point(None, "the incident has no anomalous series to check")
    end = time.time_ns()
    start = end - int(window_s * _S)
    spans = await source.spans_between(start, end)
    if not spans:
        return Point(None, "no spans in the window")
    frame = compute_signals(SpanColumns.from_spans(spans), step_ns=end - start, start_ns=start, end_ns=end)
    bad, seen = [], 0
    for a in anomalies:
        try:
            _, values = frame.series(a["service"], a["operation"], a["signal"])
        except KeyError:
            continue
        value, baseline = float(values[-1]), a["baseline"]
        if value != value or baseline is None:  # NaN: no requests in the window
            continue
        seen += 1
        recovered = value <= baseline * TOLERANCE + 1e-9 if a["direction"] == "up" else value >= baseline / TOLERANCE
        if not recovered:
            bad.append(f"{a['service']} {a['operation']} {a['signal']} {value:.4g} vs baseline {baseline:.4g}")
    if not seen:
        return Point(None, "none of the incident's series had requests in the window")
    if bad:
        return Point(False, "still anomalous: " + "; ".join(bad))
    return Point(True, f"{seen} series back within {TOLERANCE}x of their baseline")
