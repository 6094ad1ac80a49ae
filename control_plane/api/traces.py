"""The built-in OTLP/HTTP trace receiver (``POST /v1/traces``) and the trace API (``/api/v1/traces``).

The receiver's bounds, each an ``AiopsSettings.otlp_*`` setting: a body over the limit is refused
(413) from its declared length or as soon as the stream passes it, a gzip body stops inflating at
the decompressed limit (413), and at most ``otlp_max_concurrent_decodes`` requests per process read,
decode and store at once; one more is refused at once with 503 and ``Retry-After`` (OTLP exporters
retry it). Decoding runs in a worker thread, so the event loop serves other requests meanwhile; a
slot is freed only when its thread has finished, even if the client left.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from aiops.traces import store
from aiops.traces.model import Span, SpanKind, SpanStatus
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
    slots: DecodeSlots = request.app.state.otlp_slots
    try:
        _check_declared_length(request, limits.max_body_bytes)
        if not slots.try_acquire():
            raise OtlpPayloadError(
                503, f"all {slots.limit} OTLP decode slots of this server are busy; retry after "
                     f"{cp.aiops.otlp_retry_after_s} s"
            )
    except OtlpPayloadError as exc:
        return _error(exc, content_type, cp.aiops.otlp_retry_after_s)
    decoding: asyncio.Future[list[Span]] | None = None
    try:
        try:
            body = await _read_body(request, limits.max_body_bytes)
            decoding = asyncio.get_running_loop().run_in_executor(
                None, parse_export_request, body, content_type, request.headers.get("content-encoding"), limits
            )
            del body  # the thread holds it as long as it needs it
            spans = await asyncio.shield(decoding)
        except OtlpPayloadError as exc:
            return _error(exc, content_type, cp.aiops.otlp_retry_after_s)
        async with cp.span_pool.acquire() as conn:
            await store.insert_spans(conn, spans=spans)
    finally:
        slots.release_after(decoding)
    payload, media_type = export_response(content_type)
    return Response(payload, status_code=200, media_type=media_type)


class DecodeSlots:
    """The process's OTLP decode slots: taken without waiting, given back when the request is done
    and its decoding thread (if any) has finished."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._busy = 0

    def try_acquire(self) -> bool:
        if self._busy >= self.limit:
            return False
        self._busy += 1
        return True

    def release_after(self, decoding: asyncio.Future[Any] | None) -> None:
        if decoding is None or decoding.done():
            self._release()
        else:  # the client left mid-decode: the thread still holds the memory
            decoding.add_done_callback(self._release)

    def _release(self, _decoding: object = None) -> None:
        self._busy -= 1


def _error(exc: OtlpPayloadError, content_type: str | None, retry_after_s: int) -> Response:
    payload, media_type = error_response(exc, content_type)
    headers = {"Retry-After": str(retry_after_s)} if exc.status_code == 503 else None
    return Response(payload, status_code=exc.status_code, media_type=media_type, headers=headers)


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise OtlpPayloadError(413, f"request body is {declared} bytes, over the limit of {max_bytes}")


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``max_bytes`` (never buffered whole)."""
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
