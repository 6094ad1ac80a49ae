"""OpenTelemetry for every devart process: resource, providers, exporters, sampling, propagation.

One process, one role: :func:`start_telemetry` installs the global tracer and meter providers once
(later calls return the same :class:`Telemetry`). Where spans go:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: OTLP/HTTP to ``<endpoint>/v1/traces`` (and metrics to
  ``<endpoint>/v1/metrics``), e.g. an OpenTelemetry Collector;
* otherwise ``DEVART_API_URL`` set (agents): OTLP/HTTP to the control plane's built-in receiver
  ``<api>/v1/traces`` with ``Authorization: Bearer $DEVART_OTLP_TOKEN``;
* otherwise nowhere until a processor is attached with :meth:`Telemetry.add_span_processor` (the
  control plane attaches its in-process exporter into the span store).

Span names and attributes used across devart are documented in docs/observability.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("devart.telemetry")

API_SERVICE = "devart-api"
AIOPS_SERVICE = "devart-aiops"
SANDBOX_SPAN = "sandbox.run"
HEARTBEAT_SPAN = "agent heartbeat"
ROUTING_KEY_ATTRIBUTE = "messaging.rabbitmq.destination.routing_key"

# Downward-API variables (set them with fieldRef in the pod spec) -> resource attribute.
K8S_ENV = {
    "K8S_POD_NAME": "k8s.pod.name",
    "K8S_POD_UID": "k8s.pod.uid",
    "K8S_NAMESPACE_NAME": "k8s.namespace.name",
    "K8S_NODE_NAME": "k8s.node.name",
    "K8S_CONTAINER_NAME": "k8s.container.name",
    "K8S_DEPLOYMENT_NAME": "k8s.deployment.name",
}

_propagator = TraceContextTextMapPropagator()


def agent_service(name: str) -> str:
    """``service.name`` of an agent process: ``devart-agent-<name>``."""
    return f"devart-agent-{name}"


class TelemetrySettings(BaseSettings):
    """Where a process sends its telemetry and how it batches it (prefix ``DEVART_TELEMETRY_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_TELEMETRY_", extra="ignore", populate_by_name=True)

    enabled: bool = Field(default=True, description="create and export spans and metrics at all")
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "DEVART_TELEMETRY_OTLP_ENDPOINT", "otlp_endpoint"),
        description="OTLP/HTTP base URL (a Collector, e.g. http://otel-collector:4318); wins over the built-in receiver",
    )
    api_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEVART_API_URL", "api_url"),
        description="control plane base URL; agents export spans to its built-in receiver <api>/v1/traces",
    )
    otlp_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEVART_OTLP_TOKEN", "otlp_token"),
        description="bearer token (role agent or admin) sent to the built-in receiver",
    )
    service_version: str = Field(default="0.1.0", description="the resource attribute service.version")
    instance_id: str | None = Field(
        default=None, description="service.instance.id; unset = the pod name when known, else a random UUID"
    )
    batch_delay_s: float = Field(default=2.0, gt=0, description="longest time a finished span waits for export")
    batch_max_spans: int = Field(default=512, ge=1, description="spans per export request at most")
    queue_max_spans: int = Field(
        default=4096, ge=1, description="finished spans buffered for export; more are dropped (never blocks)"
    )
    export_timeout_s: float = Field(default=10.0, gt=0, description="timeout of one export, seconds")
    metric_interval_s: float = Field(default=30.0, gt=0, description="period of metric export, seconds")


def build_resource(
    service_name: str, settings: TelemetrySettings, environ: Mapping[str, str] | None = None
) -> Resource:
    """service.name/version/instance.id plus ``k8s.*`` from the downward-API variables present
    (``OTEL_RESOURCE_ATTRIBUTES`` is merged in by the SDK; ours win)."""
    env = os.environ if environ is None else environ
    attributes: dict[str, str] = {
        key: env[name] for name, key in K8S_ENV.items() if env.get(name)
    }
    attributes["service.name"] = service_name
    attributes["service.version"] = settings.service_version
    attributes["service.instance.id"] = (
        settings.instance_id or attributes.get("k8s.pod.name") or str(uuid.uuid4())
    )
    return Resource.create(attributes)


class DropHeartbeats(Sampler):
    """Parent-based always-on, except agent heartbeats (a span per heartbeat is noise): spans named
    ``agent heartbeat`` and publish spans whose routing key ends in ``.heartbeat`` are dropped."""

    def __init__(self) -> None:
        self._inner = ParentBased(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        routing_key = (attributes or {}).get(ROUTING_KEY_ATTRIBUTE)
        if name == HEARTBEAT_SPAN or (isinstance(routing_key, str) and routing_key.endswith(".heartbeat")):
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return "DropHeartbeats{ParentBased{AlwaysOn}}"


class _Fanout(SpanProcessor):
    """Span processors that can be attached and detached while the provider lives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processors: tuple[SpanProcessor, ...] = ()

    def add(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = (*self._processors, processor)

    def remove(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = tuple(p for p in self._processors if p is not processor)

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self._processors)


class Telemetry:
    """The process's providers; made by :func:`start_telemetry`."""

    def __init__(
        self, service_name: str, settings: TelemetrySettings, readers: Sequence[MetricReader] = ()
    ) -> None:
        self.service_name = service_name
        self.settings = settings
        self.resource = build_resource(service_name, settings)
        self._fanout = _Fanout()
        self.tracer_provider = TracerProvider(resource=self.resource, sampler=DropHeartbeats())
        self.tracer_provider.add_span_processor(self._fanout)
        self.meter_provider = MeterProvider(resource=self.resource, metric_readers=list(readers))
        self.exports_remotely = False

    def add_span_processor(self, processor: SpanProcessor) -> None:
        self._fanout.add(processor)

    def remove_span_processor(self, processor: SpanProcessor) -> None:
        """Detach ``processor`` (it is not shut down: the caller owns it)."""
        self._fanout.remove(processor)

    def shutdown(self) -> None:
        """Flush and stop exporting (blocking: call it through ``asyncio.to_thread``)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def batch_processor(exporter: SpanExporter, settings: TelemetrySettings) -> BatchSpanProcessor:
    """A batching processor for ``exporter`` with the limits of ``settings``: spans are queued in
    ``on_end`` and exported from the processor's own thread, never on the event loop."""
    return BatchSpanProcessor(
        exporter,
        max_queue_size=settings.queue_max_spans,
        schedule_delay_millis=settings.batch_delay_s * 1000,
        max_export_batch_size=min(settings.batch_max_spans, settings.queue_max_spans),
        export_timeout_millis=settings.export_timeout_s * 1000,
    )


_installed: Telemetry | None = None
_install_lock = threading.Lock()


def start_telemetry(service_name: str, settings: TelemetrySettings | None = None) -> Telemetry:
    """Install the global providers for this process (first call) and return them.

    A second call, e.g. an in-process agent started next to the control plane in a test, returns
    the first one: a process has one resource.
    """
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        settings = settings or TelemetrySettings()
        telemetry = _build(service_name, settings)
        if settings.enabled:
            trace.set_tracer_provider(telemetry.tracer_provider)
            metrics.set_meter_provider(telemetry.meter_provider)
        _installed = telemetry
        return telemetry


def _build(service_name: str, settings: TelemetrySettings) -> Telemetry:
    readers: list[MetricReader] = []
    span_exporter: SpanExporter | None = None
    if settings.enabled and settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = settings.otlp_endpoint.rstrip("/")
        span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=settings.export_timeout_s)
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=settings.export_timeout_s),
                export_interval_millis=settings.metric_interval_s * 1000,
            )
        )
    elif settings.enabled and settings.api_url:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = {"Authorization": f"Bearer {settings.otlp_token}"} if settings.otlp_token else {}
        span_exporter = OTLPSpanExporter(
            endpoint=f"{settings.api_url.rstrip('/')}/v1/traces",
            headers=headers,
            timeout=settings.export_timeout_s,
        )
    telemetry = Telemetry(service_name, settings, readers)
    if span_exporter is not None:
        telemetry.add_span_processor(batch_processor(span_exporter, settings))
        telemetry.exports_remotely = True
    return telemetry


# --- W3C propagation --------------------------------------------------------------------------------


def inject_headers(headers: MutableMapping[str, Any], context: otel_context.Context | None = None) -> None:
    """Write ``traceparent``/``tracestate`` of ``context`` (default: the current one) into AMQP
    headers; nothing is written when there is no valid span."""
    _propagator.inject(headers, context=context)


def extract_context(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """The remote parent carried by AMQP headers (bytes values are decoded)."""
    carrier = {
        key: value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        for key, value in (headers or {}).items()
        if isinstance(value, str | bytes)
    }
    return _propagator.extract(carrier)


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C ``traceparent`` naming ``span`` as the parent, None when its context is invalid (no
    recording provider and no remote parent).

    What the propagator's ``inject`` writes for it, without a context and a carrier built for the
    purpose: the agent names two spans per task this way. A child span's ``tracestate`` is its
    parent's, which the agent's headers carry on already.
    """
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def record_failure(span: trace.Span, exc: BaseException) -> None:
    """Mark ``span`` failed by ``exc``, as ``start_as_current_span`` does for what it lets through."""
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, None when there is none."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


# --- sandboxes --------------------------------------------------------------------------------------

_sandbox_tracer = trace.get_tracer("devart.sandbox")
_sandbox_meter = metrics.get_meter("devart.sandbox")
_sandbox_start = _sandbox_meter.create_histogram(
    "devart.sandbox.start.duration",
    unit="s",
    description="time from a sandbox run request until the command was launched",
)


@dataclass
class SandboxRun:
    """The ``sandbox.run`` span as a sandbox sees it."""

    span: trace.Span
    traceparent: str | None
    kind: str
    started: float

    def launched(self) -> None:
        """The command is starting now: records the sandbox start time."""
        _sandbox_start.record(time.monotonic() - self.started, {"devart.sandbox.kind": self.kind})

    def finished(self, outcome: str, exit_code: int | None) -> None:
        self.span.set_attribute("devart.sandbox.outcome", outcome)
        if exit_code is not None:
            self.span.set_attribute("process.exit.code", exit_code)
        if outcome != "succeeded":
            self.span.set_status(trace.StatusCode.ERROR, outcome)


@contextmanager
def sandbox_span(kind: str, *, task_id: str, attempt: int, traceparent: str | None) -> Iterator[SandboxRun]:
    """A ``sandbox.run`` span, child of ``traceparent`` (or of the current span when None); the
    yielded ``traceparent`` is the one to hand to the sandboxed process as ``TRACEPARENT``."""
    parent = extract_context({"traceparent": traceparent}) if traceparent else None
    with _sandbox_tracer.start_as_current_span(
        SANDBOX_SPAN,
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes={"devart.sandbox.kind": kind, "devart.task_id": task_id, "devart.attempt": attempt},
    ) as span:
        yield SandboxRun(span, current_traceparent() or traceparent, kind, time.monotonic())
