"""Build real opentelemetry-proto messages (and Tempo's JSON renderings of them) from spans."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from aiops.traces import Span

KINDS = ["unspecified", "internal", "server", "client", "producer", "consumer"]
STATUSES = ["unset", "ok", "error"]


def any_value(value: Any) -> common_pb2.AnyValue:
    if value is None:
        return common_pb2.AnyValue()
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, str):
        return common_pb2.AnyValue(string_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=key_values(value)))
    raise TypeError(value)


def key_values(attributes: dict[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def export_request(spans: list[Span]) -> trace_service_pb2.ExportTraceServiceRequest:
    """One ResourceSpans per service (resource attributes: service.name only)."""
    by_service: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_service[span.service].append(span)
    request = trace_service_pb2.ExportTraceServiceRequest()
    for service, group in by_service.items():
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(key_values({"service.name": service}))
        scope_spans = resource_spans.scope_spans.add()
        for span in group:
            scope_spans.spans.append(
                trace_pb2.Span(
                    trace_id=bytes.fromhex(span.trace_id),
                    span_id=bytes.fromhex(span.span_id),
                    parent_span_id=bytes.fromhex(span.parent_id) if span.parent_id else b"",
                    name=span.name,
                    kind=KINDS.index(span.kind),
                    start_time_unix_nano=span.start_ns,
                    end_time_unix_nano=span.end_ns,
                    attributes=key_values(span.attributes),
                    status=trace_pb2.Status(code=STATUSES.index(span.status)),
                )
            )
    return request


def as_parsed(span: Span) -> Span:
    """What the parser returns for a span built by :func:`export_request`."""
    return Span(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_id=span.parent_id,
        service=span.service,
        name=span.name,
        kind=span.kind,
        start_ns=span.start_ns,
        end_ns=span.end_ns,
        status=span.status,
        attributes={"resource.service.name": span.service, **span.attributes},
    )


def protojson(spans: list[Span]) -> dict[str, Any]:
    """The protobuf JSON mapping Tempo answers with: base64 ids, enum names, int64 as strings."""
    return json_format.MessageToDict(export_request(spans))


def tempo_v1(spans: list[Span]) -> dict[str, Any]:
    return {"batches": protojson(spans).get("resourceSpans", [])}


def tempo_v2(spans: list[Span]) -> dict[str, Any]:
    return {"trace": protojson(spans)}
