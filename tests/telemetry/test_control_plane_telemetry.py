"""The control plane's in-process span exporter, the span retention loop and the Postgres metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from agents.sdk.telemetry import Telemetry, TelemetrySettings, batch_processor
from aiops.settings import AiopsSettings
from aiops.traces import Span, store
from control_plane.span_retention import SpanRetention
from control_plane.telemetry import ControlPlaneMetrics, SpanStoreExporter
from tests.support.system import wait_for

_tracer = trace.get_tracer("tests.control_plane_telemetry")


async def test_finished_spans_land_in_the_store_off_the_loop(telemetry: Telemetry, db: asyncpg.Pool) -> None:
    settings = TelemetrySettings(batch_delay_s=0.05)
    exporter = SpanStoreExporter(db, asyncio.get_running_loop(), timeout_s=5)
    processor = batch_processor(exporter, settings)
    telemetry.add_span_processor(processor)
    try:
        with _tracer.start_as_current_span("parent", kind=trace.SpanKind.SERVER) as parent:
            with _tracer.start_as_current_span("child", attributes={"devart.task_id": "t-1"}) as child:
                child.set_status(trace.StatusCode.ERROR, "boom")
        trace_id = f"{parent.get_span_context().trace_id:032x}"

        async def stored() -> list[Span]:
            async with db.acquire() as conn:
                spans = await store.trace(conn, trace_id=trace_id)
            return spans if len(spans) == 2 else []

        spans = {s.name: s for s in await wait_for(stored, timeout_s=10, what="two spans in the store")}
    finally:
        telemetry.remove_span_processor(processor)
        await asyncio.to_thread(processor.shutdown)
    assert spans["parent"].parent_id is None and spans["parent"].kind == "server"
    assert spans["child"].parent_id == spans["parent"].span_id
    assert spans["child"].status == "error"
    assert spans["child"].attributes["devart.task_id"] == "t-1"
    assert spans["child"].service == telemetry.service_name
    assert spans["child"].attributes["otel.scope.name"] == "tests.control_plane_telemetry"


def _span(start: datetime, name: str) -> Span:
    start_ns = int(start.timestamp() * 1e9)
    return Span(trace_id=uuid.uuid4().hex, span_id=uuid.uuid4().hex[:16], parent_id=None, service="svc",
                name=name, kind="server", start_ns=start_ns, end_ns=start_ns + 1000)


async def test_retention_deletes_only_spans_older_than_the_period(db: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    async with db.acquire() as conn:
        await store.insert_spans(conn, spans=[
            _span(now - timedelta(days=3), "old-1"), _span(now - timedelta(days=2, hours=1), "old-2"),
            _span(now - timedelta(hours=47), "recent"), _span(now, "now"),
        ])
    retention = SpanRetention(db, AiopsSettings(retention_days=2, retention_batch_size=1), interval_s=60)
    await retention.run_once()
    async with db.acquire() as conn:
        left = sorted(r["name"] for r in await conn.fetch("SELECT name FROM spans"))
    assert left == ["now", "recent"]
    assert retention.deleted == 2


async def _task(conn: asyncpg.Connection, *, type: str, pool: str | None, status: str, age_s: float) -> uuid.UUID:
    task_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO tasks (id, type, requires, input, sandbox, status, status_reason, max_attempts, timeout_s,
                              backoff, request_hash, created_by, pool_id, created_at)
           VALUES ($1, $2, '{}', '{}', '{}', $3, '', 3, 60, '{}', 'h', 'test', $4,
                   now() - make_interval(secs => $5))""",
        task_id, type, status, pool, age_s,
    )
    return task_id


async def _transition(conn: asyncpg.Connection, task_id: uuid.UUID, from_status: str | None, to_status: str) -> None:
    await conn.execute(
        "INSERT INTO task_transitions (task_id, attempt, from_status, to_status, actor) VALUES ($1, 1, $2, $3, 'test')",
        task_id, from_status, to_status,
    )


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = json.loads(reader.get_metrics_data().to_json())
    return {
        metric["name"]: metric["data"]["data_points"]
        for resource in data["resource_metrics"] for scope in resource["scope_metrics"] for metric in scope["metrics"]
    }


async def test_metrics_come_from_postgres(db: asyncpg.Pool) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    metrics = ControlPlaneMetrics(db, interval_s=60, meter=meter)
    async with db.acquire() as conn:
        await conn.execute("INSERT INTO pools (id, skills, types) VALUES ('pool-a', '{}', '{shell}'), "
                           "('pool-b', '{}', '{build}')")
        before = await _task(conn, type="shell", pool="pool-a", status="succeeded", age_s=100)
        await _transition(conn, before, "running", "succeeded")
    await metrics.run_once()  # history before the first round is not counted
    async with db.acquire() as conn:
        done = await _task(conn, type="shell", pool="pool-a", status="succeeded", age_s=30)
        await _transition(conn, done, "pending", "queued")
        await _transition(conn, done, "running", "succeeded")
        for _ in range(3):
            await _task(conn, type="shell", pool="pool-a", status="queued", age_s=1)
        await _task(conn, type="build", pool="pool-b", status="queued", age_s=1)
        await conn.execute(
            "INSERT INTO outbox (exchange, routing_key, body, available_at) VALUES ('x', 'k', '', now() - interval '42 seconds')"
        )
    started = time.monotonic()
    await metrics.run_once()
    points = _points(reader)
    depth = {p["attributes"]["devart.pool"]: p["value"] for p in points["devart.pool.queue.depth"]}
    assert depth == {"pool-a": 3, "pool-b": 1}
    (lag,) = points["devart.outbox.lag"]
    assert 42 <= lag["value"] < 42 + (time.monotonic() - started) + 5
    (duration,) = points["devart.task.duration"]
    assert duration["count"] == 1 and 29 < duration["sum"] < 60
    assert duration["attributes"] == {"devart.task.type": "shell", "devart.pool": "pool-a",
                                      "devart.task.status": "succeeded"}
    (dispatch,) = points["devart.task.dispatch.duration"]
    assert dispatch["count"] == 1 and 29 < dispatch["sum"] < 60


def test_the_control_plane_never_exports_its_spans_to_its_own_receiver(database_url: str) -> None:
    """DEVART_API_URL in the control plane's environment (set for its agents) must not make it post
    its own spans to itself over HTTP without a token (401: the spans were lost)."""
    from agents.sdk import BrokerSettings
    from agents.sdk.telemetry import TelemetrySettings
    from control_plane.service import ControlPlane
    from control_plane.settings import Settings

    plane = ControlPlane(Settings(database_url=database_url, broker=BrokerSettings()),
                         telemetry=TelemetrySettings(DEVART_API_URL="http://127.0.0.1:8000"))
    assert plane.telemetry_settings.api_url is None
