"""The control plane's own telemetry: request spans, its in-process exporter into the span store,
and the metrics it derives from Postgres.

The exporter sits behind the SDK's ``BatchSpanProcessor``: ending a span only queues it, and the
processor's worker thread converts the batch into the span model as the receiver stores an OTLP
request (``spans_from_sdk``) and hands the insert to the event loop, waiting for it in that thread.
The loop never waits for telemetry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar

import asyncpg
from asyncpg.connection import LoggedQuery
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.sdk.telemetry import extract_context
from aiops.traces import store
from aiops.traces.model import Span
from aiops.traces.otlp import spans_from_sdk
from control_plane.loops import LoopService

log = logging.getLogger("devart.telemetry")

_tracer = trace.get_tracer("devart.api")
_db_tracer = trace.get_tracer("devart.db")
_TERMINAL = ("succeeded", "failed", "dead", "cancelled", "timed_out")
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_server_traceparent: ContextVar[str | None] = ContextVar("devart_server_traceparent", default=None)


def trace_query(record: LoggedQuery) -> None:
    """An asyncpg query logger: one client span per finished query, under the span that ran it.

    asyncpg calls it with ``call_soon`` from the querying task, so the current span is that task's;
    by then that span may have ended (a request's last query), which still makes it the right parent.
    Queries outside a sampled trace (background sweeps) make no span. The statement is recorded
    without its arguments, so no value a client sent ends up in a span.
    """
    parent = trace.get_current_span().get_span_context()
    if not (parent.is_valid and parent.trace_flags.sampled):
        return
    end_ns = time.time_ns()
    name, statement = _statement(record.query)
    span = _db_tracer.start_span(
        name,
        kind=trace.SpanKind.CLIENT,
        start_time=end_ns - int(record.elapsed * 1e9),
        attributes={"db.system": "postgresql", "db.statement": statement},
    )
    if record.exception is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(record.exception).__name__))
    span.end(end_time=end_ns)


@functools.lru_cache(maxsize=512)
def _statement(query: str) -> tuple[str, str]:
    """A query's span name and its whitespace-collapsed text (the same few queries run all the time)."""
    statement = " ".join(query.split())[:500]
    return f"postgres {statement.split(' ', 1)[0].upper()}", statement


def server_traceparent() -> str | None:
    """The ``traceparent`` of the SERVER span of the request being handled (None outside one).

    Not simply the current span: code under the request may make a span of its own current.
    """
    return _server_traceparent.get()


class ObservabilitySettings(BaseSettings):
    """The control plane's telemetry loops (prefix ``DEVART_OBSERVABILITY_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_OBSERVABILITY_", extra="ignore")

    metrics_poll_s: float = Field(
        default=15.0, gt=0, description="period of the Postgres reads behind the control plane's metrics"
    )
    span_pool_max: int = Field(
        default=4, ge=1, description="connections of the span store's own pool (receiver, exporter, retention)"
    )
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="period of the span retention job (DEVART_AIOPS_RETENTION_DAYS)"
    )


class SpanStoreExporter(SpanExporter):
    """Writes finished spans of this process into the span store (table ``spans``)."""

    def __init__(self, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop, *, timeout_s: float) -> None:
        self._pool = pool
        self._loop = loop
        self._timeout_s = timeout_s

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        parsed = spans_from_sdk(spans)
        if self._loop.is_closed():
            return SpanExportResult.FAILURE
        future = asyncio.run_coroutine_threadsafe(self._insert(parsed), self._loop)
        try:
            future.result(self._timeout_s)
        except FutureTimeout:
            future.cancel()
            log.warning("span export timed out after %.1fs; %d span(s) dropped", self._timeout_s, len(spans))
            return SpanExportResult.FAILURE
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            log.warning("span export failed; %d span(s) dropped: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    async def _insert(self, spans: list[Span]) -> None:
        async with self._pool.acquire() as conn:
            await store.insert_spans(conn, spans=spans)

    def shutdown(self) -> None:
        """Nothing to release: the pool belongs to the control plane."""


class RequestSpans:
    """ASGI middleware: one SERVER span per HTTP request, child of the caller's ``traceparent``.

    The span is named ``<METHOD> <route template>`` (``POST /api/v1/tasks``, ``GET
    /api/v1/tasks/{task_id}``) once routing is known. Paths in ``untraced`` get no span: tracing the
    OTLP receiver would add a span per export it receives.
    """

    def __init__(self, app: ASGIApp, untraced: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.untraced = untraced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.untraced:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        span = _tracer.start_span(
            f"{method} {path}",
            context=_remote_parent(scope["headers"]),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        # What start_as_current_span does, without its two generator-based context managers
        context_token = otel_context.attach(trace.set_span_in_context(span))
        traceparent_token = _server_traceparent.set(_traceparent(span.get_span_context()))

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            _server_traceparent.reset(traceparent_token)
            otel_context.detach(context_token)
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.set_attribute("http.route", route)
                span.update_name(f"{method} {route}")
            span.end()


def _remote_parent(headers: Iterable[tuple[bytes, bytes]]) -> otel_context.Context:
    """The caller's trace context from the request's ``traceparent``/``tracestate`` headers (an empty
    context, so a root span, without them); the other headers are never decoded."""
    carrier = {name.decode("latin-1"): value.decode("latin-1")
               for name, value in headers if name in _TRACE_HEADERS}
    return extract_context(carrier) if carrier else otel_context.Context()


def _traceparent(context: trace.SpanContext) -> str | None:
    """W3C ``traceparent`` of ``context``, as the propagator writes it (None for an invalid one:
    telemetry off)."""
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


class ControlPlaneMetrics(LoopService):
    """Metrics read from Postgres on an interval, so no hot path pays for them.

    * ``devart.task.duration`` (histogram, s): created -> terminal, by type, pool and status;
    * ``devart.task.dispatch.duration`` (histogram, s): created -> first queued, by type and pool;
    * ``devart.pool.queue.depth`` (gauge): queued tasks per pool;
    * ``devart.outbox.lag`` (gauge, s): age of the oldest outbox row that is due but unpublished.

    Histograms read new rows of ``task_transitions`` past a watermark (the newest id seen), starting
    at the newest row when the loop starts, so a restart does not count history twice.
    """

    name = "control-plane-metrics"

    def __init__(
        self, pool: asyncpg.Pool, *, interval_s: float, batch: int = 5000, meter: Meter | None = None
    ) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._batch = batch
        self._watermark: int | None = None
        self._depth: dict[str, int] = {}
        self._lag_s = 0.0
        meter = meter or metrics.get_meter("devart.control_plane")
        self._task_duration = meter.create_histogram(
            "devart.task.duration", unit="s", description="task latency from creation to its terminal state"
        )
        self._dispatch_duration = meter.create_histogram(
            "devart.task.dispatch.duration", unit="s", description="time from task creation to its first queuing"
        )
        meter.create_observable_gauge(
            "devart.pool.queue.depth", [self._observe_depth], description="tasks queued per pool"
        )
        meter.create_observable_gauge(
            "devart.outbox.lag", [self._observe_lag], unit="s",
            description="age of the oldest due outbox row not yet published",
        )

    async def run_once(self) -> None:
        async with self._pool.acquire() as conn:
            depth = await conn.fetch(
                "SELECT pool_id, count(*) AS n FROM tasks WHERE status = 'queued' AND pool_id IS NOT NULL "
                "GROUP BY pool_id"
            )
            lag = await conn.fetchval(
                "SELECT extract(epoch FROM now() - available_at)::float8 FROM outbox "
                "WHERE available_at <= now() ORDER BY available_at, id LIMIT 1"
            )
            if self._watermark is None:
                self._watermark = await conn.fetchval("SELECT coalesce(max(id), 0) FROM task_transitions")
            rows = await conn.fetch(
                """SELECT tr.id, tr.to_status, t.type, coalesce(t.pool_id, '') AS pool_id,
                          extract(epoch FROM tr.at - t.created_at)::float8 AS seconds
                   FROM task_transitions tr JOIN tasks t ON t.id = tr.task_id
                   WHERE tr.id > $1 AND (tr.to_status = ANY($2::text[])
                                         OR (tr.to_status = 'queued' AND tr.from_status = 'pending'))
                   ORDER BY tr.id LIMIT $3""",
                self._watermark, list(_TERMINAL), self._batch,
            )
        self._depth = {row["pool_id"]: row["n"] for row in depth}
        self._lag_s = lag or 0.0
        self._record(rows)

    def _record(self, rows: Iterable[asyncpg.Record]) -> None:
        for row in rows:
            attributes = {"devart.task.type": row["type"], "devart.pool": row["pool_id"]}
            if row["to_status"] == "queued":
                self._dispatch_duration.record(max(row["seconds"], 0.0), attributes)
            else:
                self._task_duration.record(
                    max(row["seconds"], 0.0), {**attributes, "devart.task.status": row["to_status"]}
                )
            self._watermark = row["id"]

    def _observe_depth(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"devart.pool": pool}) for pool, n in self._depth.items()]

    def _observe_lag(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._lag_s)]
