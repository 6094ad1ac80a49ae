"""The built-in OTLP/HTTP trace receiver (``POST /v1/traces``) and the trace API (``/api/v1/traces``)."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from aiops.traces import store
from aiops.traces.model import SpanKind, SpanStatus
from aiops.traces.otlp import OtlpPayloadError, error_response, export_response, parse_export_request
from aiops.traces.source import make_span_source
from control_plane.api.deps import ControlPlaneDep, require
from control_plane.auth import INGEST_TRACES, READ, Principal
from control_plane.errors import InvalidInput, NotFound

OTLP_TRACES_PATH = "/v1/traces"
"""The OTLP/HTTP path; the app's generic body limit and request tracing leave it alone."""

router = APIRouter(tags=["traces"])

Ingester = Annotated[Principal, Depends(require(INGEST_TRACES))]
Reader = Annotated[Principal, Depends(require(READ))]

_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")


class SpanPublic(BaseModel):
    trace_id: str
    span_id: str
    parent_id: str | None
    service: str
    name: str
    kind: SpanKind
    start_ns: int = Field(description="Unix nanoseconds")
    end_ns: int = Field(description="Unix nanoseconds")
    status: SpanStatus
    attributes: dict[str, Any]


class TracePublic(BaseModel):
    trace_id: str
    spans: list[SpanPublic] = Field(description="by start time")


@router.post(
    OTLP_TRACES_PATH,
    operation_id="ingest_traces",
    summary="OTLP/HTTP trace export (protobuf or JSON, optionally gzip); all spans or none are stored",
    response_class=Response,
)
async def ingest_traces(request: Request, cp: ControlPlaneDep, _: Ingester) -> Response:
    limits = cp.aiops.otlp_limits
    content_type = request.headers.get("content-type")
    try:
        body = await _read_body(request, limits.max_body_bytes)
        spans = await asyncio.to_thread(
            parse_export_request, body, content_type, request.headers.get("content-encoding"), limits
        )
    except OtlpPayloadError as exc:
        payload, media_type = error_response(exc, content_type)
        return Response(payload, status_code=exc.status_code, media_type=media_type)
    async with cp.span_pool.acquire() as conn:
        await store.insert_spans(conn, spans=spans)
    payload, media_type = export_response(content_type)
    return Response(payload, status_code=200, media_type=media_type)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``max_bytes`` (never buffered whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise OtlpPayloadError(413, f"request body is {declared} bytes, over the limit of {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise OtlpPayloadError(413, f"request body is over the limit of {max_bytes} bytes")
    return bytes(body)


@router.get(
    "/api/v1/traces/{trace_id}",
    response_model=TracePublic,
    operation_id="get_trace",
    summary="Every span of one trace, from the configured span source (built-in store or Tempo)",
)
async def get_trace(trace_id: str, cp: ControlPlaneDep, _: Reader) -> TracePublic:
    if not _TRACE_ID.match(trace_id):
        raise InvalidInput("trace_id must be 32 hexadecimal characters", field="trace_id")
    trace_id = trace_id.lower()
    source = make_span_source(cp.aiops, cp.span_pool)
    try:
        spans = await source.trace(trace_id)
    finally:
        await source.aclose()
    if not spans:
        raise NotFound(f"no spans of trace {trace_id}", field="trace_id")
    return TracePublic(
        trace_id=trace_id,
        spans=[
            SpanPublic(
                trace_id=s.trace_id, span_id=s.span_id, parent_id=s.parent_id, service=s.service, name=s.name,
                kind=s.kind, start_ns=s.start_ns, end_ns=s.end_ns, status=s.status, attributes=s.attributes,
            )
            for s in spans
        ],
    )
