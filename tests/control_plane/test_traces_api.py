"""The OTLP/HTTP receiver (POST /v1/traces), GET /api/v1/traces/{id}, and one trace from the REST
call through the outbox, the agent and the sandbox into the span store."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from agents.sandbox import SandboxSettings
from agents.sdk.telemetry import SANDBOX_SPAN
from agents.shell.agent import build_shell_agent
from aiops.traces import Span, store
from control_plane.service import ControlPlane
from tests.support.system import StartAgent, client, make_token, wait_for

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _request(*spans: dict, service: str = "checkout") -> trace_service_pb2.ExportTraceServiceRequest:
    resource = trace_pb2.ResourceSpans()
    resource.resource.attributes.append(
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service))
    )
    scope = resource.scope_spans.add()
    for fields in spans:
        scope.spans.append(trace_pb2.Span(**fields))
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[resource])


def _span(trace_id: bytes, name: str = "GET /cart", *, start: int = 1_700_000_000_000_000_000,
          end: int | None = None) -> dict:
    return {"trace_id": trace_id, "span_id": uuid.uuid4().bytes[:8], "name": name, "kind": 2,
            "start_time_unix_nano": start, "end_time_unix_nano": start + 5_000_000 if end is None else end}


async def _count(cp: ControlPlane) -> int:
    async with cp.span_pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM spans WHERE service = 'checkout'")


@pytest.fixture
async def agent_client(base_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(base_url, await make_token(database_url, "agent")) as c:
        yield c


async def test_protobuf_export_is_stored_and_readable(
    agent_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    trace_id = uuid.uuid4().bytes
    root = _span(trace_id, "GET /cart")
    child = {**_span(trace_id, "SELECT cart"), "parent_span_id": root["span_id"], "kind": 3}
    response = await agent_client.post("/v1/traces", content=_request(root, child).SerializeToString(),
                                       headers=PROTOBUF)
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == "application/x-protobuf"
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(response.content) == (
        trace_service_pb2.ExportTraceServiceResponse()
    )
    got = await admin.get(f"/api/v1/traces/{trace_id.hex()}")
    assert got.status_code == 200, got.text
    spans = {s["name"]: s for s in got.json()["spans"]}
    assert spans["SELECT cart"]["parent_id"] == root["span_id"].hex()
    assert spans["GET /cart"]["service"] == "checkout" and spans["GET /cart"]["kind"] == "server"
    missing = await admin.get(f"/api/v1/traces/{uuid.uuid4().hex}")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "trace_id"
    bad = await admin.get("/api/v1/traces/not-a-trace-id")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "trace_id"


async def test_json_and_gzip_are_accepted(agent_client: httpx.AsyncClient, cp: ControlPlane) -> None:
    trace_id = uuid.uuid4().hex
    document = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": "0102030405060708", "name": "pay",
                                   "kind": 2, "startTimeUnixNano": "1700000000000000000",
                                   "endTimeUnixNano": "1700000000100000000"}]}],
    }]}
    response = await agent_client.post("/v1/traces", json=document)
    assert response.status_code == 200 and response.json() == {}
    compressed = gzip.compress(_request(_span(uuid.uuid4().bytes)).SerializeToString())
    response = await agent_client.post("/v1/traces", content=compressed,
                                       headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.content
    assert await _count(cp) == 2


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (_request(_span(b"\x01" * 16)).SerializeToString()[:-3], PROTOBUF, 400),
        (_request(_span(b"\x01" * 16)).SerializeToString(), {"Content-Type": "text/plain"}, 415),
        (b"\x00" * 9_000_000, PROTOBUF, 413),
        (_request(_span(b"\x01" * 16, end=1)).SerializeToString(), PROTOBUF, 400),
        (_request(_span(b"\x02" * 16), _span(b"\x02" * 16, start=5, end=1)).SerializeToString(), PROTOBUF, 400),
    ],
    ids=["truncated-protobuf", "wrong-content-type", "oversized", "end-before-start", "one-bad-span-in-batch"],
)
async def test_bad_payloads_are_refused_and_nothing_is_stored(
    agent_client: httpx.AsyncClient, cp: ControlPlane, body: bytes, headers: dict, status: int
) -> None:
    response = await agent_client.post("/v1/traces", content=body, headers=headers)
    assert response.status_code == status, response.content
    assert response.content  # a google.rpc.Status saying why
    assert await _count(cp) == 0


async def test_ingest_needs_a_token_with_the_permission(base_url: str, database_url: str) -> None:
    body = _request(_span(uuid.uuid4().bytes)).SerializeToString()
    async with client(base_url, None) as anonymous:
        assert (await anonymous.post("/v1/traces", content=body, headers=PROTOBUF)).status_code == 401
    async with client(base_url, await make_token(database_url, "viewer")) as viewer:
        assert (await viewer.post("/v1/traces", content=body, headers=PROTOBUF)).status_code == 403
    async with client(base_url, await make_token(database_url, "agent", "agent-2")) as agent:
        # agent tokens may ingest traces and nothing else
        assert (await agent.get("/api/v1/tasks")).status_code == 403


async def test_one_trace_from_the_rest_call_to_the_sandboxed_process(
    admin: httpx.AsyncClient, cp: ControlPlane, start_agent: StartAgent, tmp_path
) -> None:
    await start_agent(build_shell_agent(slots=1, settings=SandboxSettings(root=tmp_path)))
    created = await admin.post("/api/v1/tasks", json={
        "type": "shell", "requires": ["shell"], "input": {"script": 'echo "$TRACEPARENT"'},
    })
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    async def finished() -> dict | None:
        task = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
        return task if task["status"] in ("succeeded", "failed", "dead", "timed_out") else None

    task = await wait_for(finished, timeout_s=30, what="the shell task to finish")
    assert task["status"] == "succeeded", task
    echoed = (await admin.get(f"/api/v1/tasks/{task_id}/logs")).json()["lines"][0]["line"]
    _, trace_id, echoed_parent, _ = echoed.split("-")
    assert task["trace_id"] == trace_id

    async def chain() -> list[Span]:
        async with cp.span_pool.acquire() as conn:
            spans = await store.trace(conn, trace_id=trace_id)
        return spans if {"task shell", SANDBOX_SPAN, "apply started", "apply succeeded"} <= {s.name for s in spans} else []

    spans = await wait_for(chain, timeout_s=15, what="the consumer, sandbox.run and apply spans in the store")
    by_id = {s.span_id: s for s in spans}
    server = next(s for s in spans if s.name == "POST /api/v1/tasks")
    publish = next(s for s in spans if s.name == f"publish {cp.topology.tasks}")
    consume = next(s for s in spans if s.name == "task shell")
    sandbox = next(s for s in spans if s.name == SANDBOX_SPAN)
    assert server.parent_id is None and server.kind == "server"
    assert publish.parent_id == server.span_id and publish.kind == "producer", [(x.name, x.span_id, x.parent_id) for x in spans]
    assert consume.parent_id == publish.span_id and consume.kind == "consumer"
    assert sandbox.parent_id == consume.span_id
    assert echoed_parent == sandbox.span_id
    assert consume.start_ns <= sandbox.start_ns <= sandbox.end_ns <= consume.end_ns
    # the request's own queries are client spans inside it, with the statement but not its arguments
    queries = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    insert = next(q for q in queries if q.attributes["db.statement"].startswith("WITH RECURSIVE kind AS"))  # the create
    ancestors = [insert]
    while ancestors[-1].parent_id in by_id:
        ancestors.append(by_id[ancestors[-1].parent_id])
    assert ancestors[-1] is server and insert.kind == "client"
    assert server.start_ns <= insert.start_ns <= insert.end_ns <= server.end_ns
    # the agent's events during the attempt are published under its consumer span
    events = [s for s in spans if s.kind == "producer" and s.parent_id == consume.span_id]
    assert events, [(s.name, by_id.get(s.parent_id or "")) for s in spans]
    # and the control plane applies each one under a consumer span continuing that publish (the
    # batch's set-based statements are shared by its events, so they are no one event's children)
    for name in ("apply started", "apply succeeded"):
        applied = next(s for s in spans if s.name == name)
        assert applied.kind == "consumer" and applied.parent_id in {e.span_id for e in events}, name
        assert applied.service == server.service
        assert applied.attributes["messaging.batch.message_count"] >= 1


async def test_a_request_span_continues_the_callers_trace_under_its_route_template(
    admin: httpx.AsyncClient, cp: ControlPlane
) -> None:
    trace_id, caller = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    traceparent = {"traceparent": f"00-{trace_id}-{caller}-01"}
    created = await admin.post("/api/v1/tasks", json={"type": "noop"}, headers=traceparent)
    assert created.status_code == 201, created.text
    assert created.json()["trace_id"] == trace_id  # the task joins the caller's trace
    missing = await admin.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=traceparent)
    assert missing.status_code == 404

    async def servers() -> list[Span]:
        async with cp.span_pool.acquire() as conn:
            spans = await store.trace(conn, trace_id=trace_id)
        return found if len(found := [s for s in spans if s.kind == "server"]) == 2 else []

    submit, read = sorted(await wait_for(servers, timeout_s=15, what="both request spans in the store"),
                          key=lambda s: s.start_ns)
    assert submit.name == "POST /api/v1/tasks" and read.name == "GET /api/v1/tasks/{task_id}"
    for span, status in ((submit, 201), (read, 404)):
        assert span.parent_id == caller and span.status == "unset"
        assert span.attributes["http.response.status_code"] == status
        assert span.attributes["http.request.method"] == span.name.split()[0]
        assert span.attributes["http.route"] == span.name.split()[1]
    assert submit.attributes["url.path"] == "/api/v1/tasks"
    assert read.attributes["url.path"] == missing.request.url.path
