"""The lifecycle step against real Postgres: dedup, grouping by call path, silences, windows, auto-resolve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from aiops.incidents import get_incident, store
from aiops.incidents.grouping import CallGraph
from aiops.incidents.lifecycle import LifecyclePolicy, Observation, StepReport, apply_step
from aiops.incidents.model import Direction, Excerpt
from aiops.traces import Span

STEP = 1_000_000_000
T0 = 1_767_225_600 * STEP
POLICY = LifecyclePolicy(step_ns=STEP, correlation_window_ns=5 * STEP, excerpt_max_points=6)


def _obs(
    service: str, step: int, *, fired: Direction | None = None, recovered: bool = False, value: float = 5.0,
    signal: str = "p95", anomalous: bool = True,
) -> Observation:
    ts = [T0 + (step - k) * STEP for k in range(3, -1, -1)]
    return Observation(
        service=service, operation="GET /", signal=signal, value=value, score=0.9 if anomalous else 0.0,
        anomalous=anomalous, fired=fired, recovered=recovered, calm_steps=0 if anomalous else 1,
        baseline=1.0, in_episode=not recovered, recent=Excerpt(timestamps_ns=ts, values=[1.0, 1.0, 1.0, value]),
    )


def _graph(*edges: tuple[str, str]) -> CallGraph:
    graph = CallGraph(ttl_ns=3600 * STEP)
    spans = []
    for n, (caller, callee) in enumerate(edges):
        trace = f"{n + 1:032x}"
        spans.append(Span(trace_id=trace, span_id=f"{2 * n + 1:016x}", parent_id=None, service=caller, name="op",
                          kind="server", start_ns=T0, end_ns=T0 + 10, status="ok", attributes={}))
        spans.append(Span(trace_id=trace, span_id=f"{2 * n + 2:016x}", parent_id=f"{2 * n + 1:016x}", service=callee,
                          name="op", kind="server", start_ns=T0, end_ns=T0 + 5, status="ok", attributes={}))
    graph.observe(spans)
    return graph


async def _step(db: asyncpg.Pool, step: int, graph: CallGraph, *obs: Observation) -> StepReport:
    async with db.acquire() as conn, conn.transaction():
        return await apply_step(conn, step_start_ns=T0 + step * STEP, observations=obs, graph=graph, policy=POLICY)


async def test_related_services_group_repeats_dedupe_unrelated_split_and_all_calm_resolves(db: asyncpg.Pool) -> None:
    graph = _graph(("api", "orders"), ("orders", "db"), ("web", "cache"))
    opened = await _step(db, 0, graph, _obs("db", 0, fired="up"))
    [incident_id] = opened.ids("opened")
    joined = await _step(db, 1, graph, _obs("db", 1), _obs("api", 1, fired="up"), _obs("cache", 1, fired="up"))
    assert joined.ids("updated") == [incident_id]
    [other_id] = joined.ids("opened")  # cache is on no call path with db or api

    incident = await get_incident(db, incident_id)
    assert incident.services == ["api", "db"] and len(incident.anomalies) == 2
    assert incident.started_ns == T0 and incident.last_anomaly_ns == T0 + 2 * STEP
    db_p95 = incident.anomalies[0]
    assert db_p95.baseline == 1.0 and db_p95.peak_value == 5.0 and db_p95.relative_change == 4.0
    assert db_p95.excerpt.timestamps_ns == [T0 + k * STEP for k in range(-3, 2)]  # lead-in, then followed

    # the same fingerprint recovers, then fires again: the same anomaly row, twice
    await _step(db, 2, graph, _obs("db", 2, recovered=True, anomalous=False), _obs("api", 2), _obs("cache", 2))
    refired = await _step(db, 3, graph, _obs("db", 3, fired="up"), _obs("api", 3), _obs("cache", 3))
    assert refired.ids("updated") == [incident_id]
    incident = await get_incident(db, incident_id)
    assert [(a.service, a.occurrences, a.active) for a in incident.anomalies] == [("db", 2, True), ("api", 1, True)]

    async with db.acquire() as conn:
        await store.acknowledge(conn, incident_id=incident_id, by="alice")
    await _step(db, 4, graph, _obs("db", 4, recovered=True, anomalous=False), _obs("api", 4),
                _obs("cache", 4))
    assert (await get_incident(db, incident_id)).status == "acknowledged"
    done = await _step(db, 5, graph, _obs("db", 5, anomalous=False),
                       _obs("api", 5, recovered=True, anomalous=False), _obs("cache", 5))
    assert done.ids("resolved") == [incident_id]
    resolved = await get_incident(db, incident_id)
    assert resolved.status == "resolved" and resolved.resolved_by == "aiops"
    assert resolved.ended_ns == T0 + 5 * STEP  # end of api's last anomalous step (step 4)
    assert (await get_incident(db, other_id)).status == "open"


async def test_outside_the_correlation_window_a_new_incident_opens(db: asyncpg.Pool) -> None:
    graph = _graph(("api", "db"))
    first = (await _step(db, 0, graph, _obs("db", 0, fired="up"))).ids("opened")
    later = await _step(db, 7, graph, _obs("db", 7), _obs("api", 7, fired="up"))
    assert later.ids("opened") and later.ids("opened") != first


async def test_silences_and_maintenance_windows_suppress_opening(db: asyncpg.Pool) -> None:
    graph = _graph(("api", "db"))
    at = datetime.fromtimestamp(T0 / 1e9, UTC)
    async with db.acquire() as conn:
        await store.create_silence(conn, service="db", operation=None, signal="p95", comment="", by="t",
                                   expires_at=at + timedelta(seconds=2), now=at - timedelta(hours=1))
        await store.create_maintenance_window(conn, service="web", comment="", by="t", starts_at=at,
                                              ends_at=at + timedelta(seconds=2), now=at - timedelta(hours=1))
    quiet = await _step(db, 0, graph, _obs("db", 0, fired="up"), _obs("web", 0, fired="up"),
                        _obs("db", 0, fired="up", signal="rate"))
    assert [f.service for f in quiet.suppressed] == ["db", "web"]
    # a silenced anomaly is never raised: its series' episode ends, so its next alert starts afresh
    assert quiet.orphaned == [("db", "GET /", "p95"), ("web", "GET /", "p95")]
    [rate_incident] = quiet.ids("opened")  # the silence names p95 only
    assert (await get_incident(db, rate_incident)).anomalies[0].signal == "rate"
    expired = await _step(db, 3, _graph(), _obs("web", 3, fired="up"))  # both have ended by step 3
    assert expired.ids("opened") and not expired.suppressed


async def test_an_anomaly_of_a_series_no_longer_observed_is_inactive(db: asyncpg.Pool) -> None:
    graph = _graph()
    [incident_id] = (await _step(db, 0, graph, _obs("db", 0, fired="up"))).ids("opened")
    assert (await _step(db, 1, graph)).ids("resolved") == [incident_id]


async def test_a_series_whose_incident_was_resolved_by_hand_ends_its_episode(db: asyncpg.Pool) -> None:
    graph = _graph()
    [incident_id] = (await _step(db, 0, graph, _obs("db", 0, fired="up"))).ids("opened")
    assert (await _step(db, 1, graph, _obs("db", 1))).orphaned == []
    async with db.acquire() as conn:
        await store.resolve(conn, incident_id=incident_id, by="sam")
    assert (await _step(db, 2, graph, _obs("db", 2))).orphaned == [("db", "GET /", "p95")]
