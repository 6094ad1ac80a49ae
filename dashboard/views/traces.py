"""Traces: one trace as a span waterfall, from the configured span source (built-in store or Tempo)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from control_plane.api import traces as api_traces
from control_plane.api.traces import SpanPublic
from dashboard.svg import Bar, waterfall
from dashboard.web import CP, ConsoleRoute, back, reader, render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Reader = reader("get_trace")


def tree_order(spans: list[SpanPublic]) -> list[tuple[SpanPublic, int]]:
    """Spans depth first (children by start time under their parent), with their depth. A span whose
    parent is not in the trace is a root."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanPublic]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        children.setdefault(span.parent_id if span.parent_id in ids else None, []).append(span)
    ordered: list[tuple[SpanPublic, int]] = []
    stack = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        ordered.append((span, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(span.span_id, [])))
    return ordered


@router.get("/traces")
async def find(request: Request, who: Reader, trace_id: str | None = None) -> Response:
    if trace_id:
        return back(f"/traces/{quote(trace_id.strip(), safe='')}")
    return render(request, who, "traces.html", nav="traces")


@router.get("/traces/{trace_id}")
async def trace(trace_id: str, request: Request, cp: CP, who: Reader) -> Response:
    found = await api_traces.get_trace(trace_id, cp, who.principal)
    ordered = tree_order(found.spans)
    bars = [Bar(f"{s.service}: {s.name}", s.start_ns, s.end_ns, depth, s.status == "error") for s, depth in ordered]
    return render(request, who, "trace.html", nav="traces", trace=found, spans=ordered,
                  figure=waterfall(bars, title=f"trace {found.trace_id}: {len(bars)} spans"))
