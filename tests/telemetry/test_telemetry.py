"""agents.sdk.telemetry: resource, heartbeat sampling, W3C propagation, the sandbox.run span."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.sandbox import LocalSandbox, SandboxSettings, SandboxSpec
from agents.sdk.telemetry import (
    HEARTBEAT_SPAN,
    ROUTING_KEY_ATTRIBUTE,
    SANDBOX_SPAN,
    TelemetrySettings,
    agent_service,
    build_resource,
    current_traceparent,
    extract_context,
    inject_headers,
)

_tracer = trace.get_tracer("tests.telemetry")
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_resource_names_the_role_and_reads_the_downward_api() -> None:
    settings = TelemetrySettings(service_version="9.9.9")
    env = {"K8S_POD_NAME": "agent-shell-7f9c", "K8S_NAMESPACE_NAME": "devart", "K8S_NODE_NAME": "node-1"}
    attributes = build_resource(agent_service("shell"), settings, env).attributes
    assert attributes["service.name"] == "devart-agent-shell"
    assert attributes["service.version"] == "9.9.9"
    assert attributes["service.instance.id"] == "agent-shell-7f9c"
    assert attributes["k8s.namespace.name"] == "devart" and attributes["k8s.node.name"] == "node-1"
    assert "k8s.pod.uid" not in attributes
    bare = build_resource("devart-api", settings, {}).attributes
    assert not any(key.startswith("k8s.") for key in bare)
    assert len(str(bare["service.instance.id"])) == 36  # a random UUID when no pod name is known


def test_settings_read_the_standard_variables(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("DEVART_API_URL", "http://devart:8000")
    monkeypatch.setenv("DEVART_OTLP_TOKEN", "dvt_secret")
    settings = TelemetrySettings()
    assert settings.otlp_endpoint == "http://collector:4318"
    assert (settings.api_url, settings.otlp_token) == ("http://devart:8000", "dvt_secret")
    assert all(field.description for field in TelemetrySettings.model_fields.values())


def test_heartbeat_spans_are_not_exported(exported: InMemorySpanExporter) -> None:
    with _tracer.start_as_current_span(HEARTBEAT_SPAN):
        pass
    with _tracer.start_as_current_span(
        "publish devart.events", attributes={ROUTING_KEY_ATTRIBUTE: "agent.a1.heartbeat"}
    ):
        pass
    with _tracer.start_as_current_span(
        "publish devart.events", attributes={ROUTING_KEY_ATTRIBUTE: "task.t1.started"}
    ):
        pass
    spans = exported.get_finished_spans()
    assert [(s.name, s.attributes[ROUTING_KEY_ATTRIBUTE]) for s in spans] == [
        ("publish devart.events", "task.t1.started")
    ]


def test_amqp_headers_carry_the_context_both_ways(exported: InMemorySpanExporter) -> None:
    with _tracer.start_as_current_span("producer") as span:
        headers: dict[str, object] = {"x-other": 1}
        inject_headers(headers)
        assert current_traceparent() == headers["traceparent"]
    context = span.get_span_context()
    assert str(headers["traceparent"]).startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    # AMQP hands header values back as bytes
    wire = {"traceparent": str(headers["traceparent"]).encode(), "x-other": 1}
    with _tracer.start_as_current_span("consumer", context=extract_context(wire)) as child:
        pass
    assert child.parent is not None and child.parent.span_id == context.span_id
    assert child.get_span_context().trace_id == context.trace_id
    assert current_traceparent() is None


async def test_sandboxed_process_gets_the_sandbox_span_as_traceparent(
    exported: InMemorySpanExporter, tmp_path: Path
) -> None:
    sandbox = LocalSandbox(SandboxSettings(root=tmp_path))
    lines: list[str] = []

    async def on_log(stream: str, line: str) -> None:
        lines.append(line)

    spec = SandboxSpec(task_id="t-1", script='echo "$TRACEPARENT"', timeout_s=20, traceparent=PARENT)
    result = await sandbox.run(spec, on_log=on_log, cancel=asyncio.Event())
    assert result.outcome == "succeeded"
    (run,) = [s for s in exported.get_finished_spans() if s.name == SANDBOX_SPAN]
    _, trace_id, parent_id, _ = lines[0].split("-")
    assert trace_id == f"{run.context.trace_id:032x}" == PARENT.split("-")[1]
    assert parent_id == f"{run.context.span_id:016x}"
    assert run.parent is not None and f"{run.parent.span_id:016x}" == PARENT.split("-")[2]
    assert run.attributes["devart.sandbox.outcome"] == "succeeded"
    assert run.attributes["devart.sandbox.kind"] == "local"


async def test_a_failed_command_marks_the_sandbox_span(exported: InMemorySpanExporter, tmp_path: Path) -> None:
    sandbox = LocalSandbox(SandboxSettings(root=tmp_path))

    async def on_log(stream: str, line: str) -> None:
        return None

    spec = SandboxSpec(task_id="t-2", script="exit 3", timeout_s=20)
    result = await sandbox.run(spec, on_log=on_log, cancel=asyncio.Event())
    assert result.outcome == "failed"
    (run,) = [s for s in exported.get_finished_spans() if s.name == SANDBOX_SPAN]
    assert run.status.status_code == trace.StatusCode.ERROR
    assert run.attributes["process.exit.code"] == 3
