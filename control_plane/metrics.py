"""Prometheus metrics of the control plane, read from Postgres when ``GET /metrics`` is scraped.

Gauges are the database's current answer (the same in every replica): tasks by state, queued tasks,
live agents and free slots per pool, agents by state, the outbox's backlog and lag, incidents by
status. The dispatch latency histogram (queued -> started, per attempt) counts the attempts that
started since this process first served ``/metrics``: it reads the new ``running`` transitions past a
watermark at each scrape, so scrape one replica (or take the max across replicas), not the sum.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
STATES = ("pending", "queued", "running", "succeeded", "failed", "dead", "cancelled", "timed_out")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    """The gauge families of the current scrape."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class PrometheusMetrics:
    def __init__(self, *, batch: int = 10_000) -> None:
        self._batch = batch
        self.registry = CollectorRegistry(auto_describe=False)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self._dispatch = Histogram(
            "devart_dispatch_latency_seconds", "time from an attempt being queued (or due, for a delayed retry) "
            "to its start on an agent", ["pool"], buckets=DISPATCH_BUCKETS, registry=self.registry,
        )
        self._watermark: int | None = None
        self._lock = asyncio.Lock()

    async def render(self, conn: asyncpg.Connection) -> bytes:
        async with self._lock:
            await self._observe_started(conn)
            self._snapshot.families = await _gauges(conn)
            return generate_latest(self.registry)

    async def _observe_started(self, conn: asyncpg.Connection) -> None:
        if self._watermark is None:
            self._watermark = await conn.fetchval("SELECT coalesce(max(id), 0) FROM task_transitions")
            return
        while True:
            rows = await conn.fetch(
                """SELECT tr.id, coalesce(a.pool_id, '') AS pool,
                          greatest(0, extract(epoch FROM tr.at - coalesce(a.retry_at, a.queued_at)))::float8 AS seconds
                   FROM task_transitions tr
                   JOIN attempts a ON a.task_id = tr.task_id AND a.attempt = tr.attempt
                   WHERE tr.id > $1 AND tr.to_status = 'running' AND tr.from_status = 'queued'
                   ORDER BY tr.id LIMIT $2""",
                self._watermark, self._batch,
            )
            for row in rows:
                self._dispatch.labels(row["pool"]).observe(row["seconds"])
            if rows:
                self._watermark = rows[-1]["id"]
            if len(rows) < self._batch:
                return


async def _gauges(conn: asyncpg.Connection) -> list[Metric]:
    tasks = GaugeMetricFamily("devart_tasks", "tasks by state", labels=["state"])
    counts = {r["status"]: r["n"] for r in await conn.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")}
    for state in STATES:
        tasks.add_metric([state], counts.get(state, 0))

    queued = GaugeMetricFamily("devart_pool_queue_depth", "tasks queued on each pool", labels=["pool"])
    live = GaugeMetricFamily("devart_pool_live_agents", "live agents of each pool", labels=["pool"])
    free = GaugeMetricFamily("devart_pool_free_slots", "free slots of each pool's active agents", labels=["pool"])
    for row in await conn.fetch(
        """SELECT p.id,
                  (SELECT count(*) FROM tasks t WHERE t.pool_id = p.id AND t.status = 'queued') AS queued,
                  count(a.id) FILTER (WHERE a.state IN ('active', 'paused')) AS live,
                  coalesce(sum(a.free_slots) FILTER (WHERE a.state = 'active'), 0) AS free
           FROM pools p LEFT JOIN agents a ON a.pool_id = p.id AND a.state <> 'gone'
           GROUP BY p.id ORDER BY p.id"""
    ):
        queued.add_metric([row["id"]], row["queued"])
        live.add_metric([row["id"]], row["live"])
        free.add_metric([row["id"]], row["free"])

    agents = GaugeMetricFamily("devart_agents", "agents by state", labels=["state"])
    by_state = {r["state"]: r["n"] for r in await conn.fetch("SELECT state, count(*) AS n FROM agents GROUP BY state")}
    for state in ("active", "paused", "draining", "gone"):
        agents.add_metric([state], by_state.get(state, 0))

    outbox = await conn.fetchrow(
        """SELECT count(*) AS pending,
                  coalesce(extract(epoch FROM now() - min(available_at) FILTER (WHERE available_at <= now())),
                           0)::float8 AS lag
           FROM outbox"""
    )
    pending = GaugeMetricFamily("devart_outbox_pending", "messages written but not yet published", value=outbox["pending"])
    lag = GaugeMetricFamily("devart_outbox_lag_seconds", "age of the oldest due outbox message (relay lag)",
                            value=max(0.0, outbox["lag"]))

    incidents = GaugeMetricFamily("devart_incidents", "incidents by status", labels=["status"])
    by_status = {r["status"]: r["n"] for r in await conn.fetch("SELECT status, count(*) AS n FROM incidents GROUP BY status")}
    for status in ("open", "acknowledged", "resolved"):
        incidents.add_metric([status], by_status.get(status, 0))
    return [tasks, queued, live, free, agents, pending, lag, incidents]
