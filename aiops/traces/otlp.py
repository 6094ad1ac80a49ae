"""OTLP trace payloads (protobuf and OTLP/JSON, plus Tempo's JSON shapes) turned into :class:`Span`.

The receiver's single entry point is :func:`parse_export_request`; :func:`spans_from_otlp_json`
converts an already decoded OTLP/JSON or Tempo document, and :func:`spans_from_sdk` the SDK's own
finished spans (a process storing its spans directly, with no encoding in between). Parsing is
all-or-nothing: the first bad span rejects the whole batch with an :class:`OtlpPayloadError`
naming the span and the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk.trace import ReadableSpan

from aiops.traces.model import Span, SpanKind, SpanStatus

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
UNKNOWN_SERVICE = "unknown_service"

_Encoding = Literal["protobuf", "json"]
_MEDIA_TYPES: dict[str, _Encoding] = {
    "application/x-protobuf": "protobuf",
    "application/protobuf": "protobuf",
    "application/json": "json",
}
_KINDS: tuple[SpanKind, ...] = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUSES: tuple[SpanStatus, ...] = ("unset", "ok", "error")
_TRACE_ID_BYTES = 16
_SPAN_ID_BYTES = 8
_HEX = frozenset("0123456789abcdefABCDEF")
_NON_FINITE = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


class OtlpPayloadError(ValueError):
    """A request the receiver refuses; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True, slots=True)
class OtlpLimits:
    """Size limits of one export request (see ``AiopsSettings.otlp_*``)."""

    max_body_bytes: int
    max_decompressed_bytes: int
    max_spans: int


def parse_export_request(
    body: bytes, content_type: str | None, content_encoding: str | None, limits: OtlpLimits
) -> list[Span]:
    """Decode one OTLP/HTTP ``ExportTraceServiceRequest`` body into spans, or raise OtlpPayloadError.

    CPU-bound: an async caller should run it through ``asyncio.to_thread`` for large bodies.
    """
    encoding = _media_encoding(content_type)
    if len(body) > limits.max_body_bytes:
        raise OtlpPayloadError(
            413, f"request body is {len(body)} bytes, over the limit of {limits.max_body_bytes}"
        )
    payload = _decode_content(body, content_encoding, limits.max_decompressed_bytes)
    if encoding == "protobuf":
        try:
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
        except DecodeError as exc:
            raise OtlpPayloadError(
                400, f"invalid or truncated protobuf ExportTraceServiceRequest: {exc}"
            ) from None
        return _spans_from_proto(request, limits.max_spans)
    try:
        return spans_from_otlp_json(json.loads(payload), max_spans=limits.max_spans)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OtlpPayloadError(400, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise OtlpPayloadError(400, "JSON nested too deeply") from None


def spans_from_otlp_json(document: Any, *, max_spans: int | None = None) -> list[Span]:
    """Spans of an OTLP/JSON document: ``{"resourceSpans": ...}``, Tempo v1 ``{"batches": ...}``
    or Tempo v2 ``{"trace": {...}}``; ``instrumentationLibrarySpans`` is read like ``scopeSpans``."""
    if not isinstance(document, Mapping):
        raise OtlpPayloadError(400, "the OTLP/JSON document must be an object")
    if "trace" in document:
        return spans_from_otlp_json(document["trace"] or {}, max_spans=max_spans)
    key = "batches" if "batches" in document else "resourceSpans"
    spans: list[Span] = []
    for r, raw_resource_spans in enumerate(_list(document.get(key), key)):
        where_r = f"{key}[{r}]"
        resource_spans = _object(raw_resource_spans, where_r)
        resource = _object(resource_spans.get("resource"), f"{where_r}.resource")
        resource_attrs = _json_attributes(resource.get("attributes"), f"{where_r}.resource.attributes")
        service, merged = _resource_view(resource_attrs)
        scope_key = "scopeSpans" if "scopeSpans" in resource_spans else "instrumentationLibrarySpans"
        for s, raw_scope_spans in enumerate(_list(resource_spans.get(scope_key), f"{where_r}.{scope_key}")):
            where_s = f"{where_r}.{scope_key}[{s}]"
            scope_spans = _object(raw_scope_spans, where_s)
            scope_field = "scope" if "scope" in scope_spans else "instrumentationLibrary"
            scope = _object(scope_spans.get(scope_field), f"{where_s}.{scope_field}")
            scope_attrs = _scope_attributes(scope.get("name"), scope.get("version"))
            for k, raw in enumerate(_list(scope_spans.get("spans"), f"{where_s}.spans")):
                index = len(spans)
                where = f"span {index} ({where_s}.spans[{k}])"
                _check_count(index, max_spans)
                span = _object(raw, where)
                spans.append(
                    _make_span(
                        where,
                        trace_id=_json_id(span.get("traceId"), "traceId", where),
                        span_id=_json_id(span.get("spanId"), "spanId", where),
                        parent_id=_json_id(span.get("parentSpanId"), "parentSpanId", where),
                        service=service,
                        name=span.get("name", ""),
                        kind=_json_enum(span.get("kind", 0), "kind", "SPAN_KIND_", _KINDS, where),
                        start_ns=_json_int(span.get("startTimeUnixNano", 0), "startTimeUnixNano", where),
                        end_ns=_json_int(span.get("endTimeUnixNano", 0), "endTimeUnixNano", where),
                        status=_json_status(span.get("status"), where),
                        attributes={
                            **merged,
                            **scope_attrs,
                            **_status_message(_object(span.get("status"), f"{where}.status").get("message")),
                            **_json_attributes(span.get("attributes"), f"{where}.attributes"),
                        },
                    )
                )
    return spans


def spans_from_sdk(finished: Sequence[ReadableSpan]) -> list[Span]:
    """This process's finished spans, as the receiver would store them after an OTLP round trip."""
    # A batch shares one resource and a few scopes: each is converted once, not once per span.
    prefixes: dict[tuple[int, int], tuple[str, dict[str, Any]]] = {}
    spans = []
    for span in finished:
        context = span.get_span_context()
        resource, scope = span.resource, span.instrumentation_scope
        key = (id(resource), id(scope))
        if (prefix := prefixes.get(key)) is None:
            service, merged = _resource_view(_sdk_attributes(resource.attributes))
            if scope is not None:
                merged |= _scope_attributes(scope.name, scope.version)
            prefix = prefixes[key] = (service, merged)
        service, merged = prefix
        status = span.status
        spans.append(Span(
            trace_id=f"{context.trace_id:032x}",
            span_id=f"{context.span_id:016x}",
            parent_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
            service=service,
            name=span.name,
            kind=span.kind.name.lower(),  # type: ignore[arg-type]  # the SDK's names are the model's
            start_ns=span.start_time or 0,
            end_ns=span.end_time or span.start_time or 0,
            status=status.status_code.name.lower(),  # type: ignore[arg-type]
            attributes={
                **merged,
                **_status_message(status.description),
                **_sdk_attributes(span.attributes or {}),
            },
        ))
    return spans


def _sdk_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _sdk_value(value) for key, value in attributes.items()}


def _sdk_value(value: Any) -> Any:
    if isinstance(value, float):
        return _finite_or_name(value)
    if isinstance(value, (tuple, list)):
        return [_sdk_value(item) for item in value]
    return value


def export_response(content_type: str | None) -> tuple[bytes, str]:
    """The success body (an empty ``ExportTraceServiceResponse``) in the request's encoding, with
    its media type."""
    message = trace_service_pb2.ExportTraceServiceResponse()
    return _encode(message, content_type)


def error_response(error: OtlpPayloadError, content_type: str | None) -> tuple[bytes, str]:
    """The failure body OTLP/HTTP asks for: a ``google.rpc.Status`` in the request's encoding
    (JSON when the request's own media type was refused)."""
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=error.message)
    return _encode(status, content_type)


def _encode(message: Any, content_type: str | None) -> tuple[bytes, str]:
    if _MEDIA_TYPES.get(_bare_media_type(content_type)) == "protobuf":
        return message.SerializeToString(), PROTOBUF
    return json_format.MessageToJson(message, indent=None).encode(), JSON


def _bare_media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _media_encoding(content_type: str | None) -> _Encoding:
    bare = _bare_media_type(content_type)
    if bare not in _MEDIA_TYPES:
        raise OtlpPayloadError(
            415, f"unsupported Content-Type {content_type!r}: send application/x-protobuf or application/json"
        )
    return _MEDIA_TYPES[bare]


def _decode_content(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise OtlpPayloadError(415, f"unsupported Content-Encoding {content_encoding!r}: send gzip or none")
    out = bytearray()
    data = body
    while data:  # a gzip stream may hold several members
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(data, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise OtlpPayloadError(400, f"invalid gzip body: {exc}") from None
        if len(out) > max_bytes:
            raise OtlpPayloadError(413, f"gzip body inflates to more than the limit of {max_bytes} bytes")
        if not inflater.eof:
            raise OtlpPayloadError(400, "invalid gzip body: truncated stream")
        data = inflater.unused_data
    return bytes(out)


def _spans_from_proto(request: trace_service_pb2.ExportTraceServiceRequest, max_spans: int) -> list[Span]:
    spans: list[Span] = []
    for r, resource_spans in enumerate(request.resource_spans):
        attrs = _proto_attributes(resource_spans.resource.attributes)
        service, merged = _resource_view(attrs)
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope_attrs = _scope_attributes(scope_spans.scope.name, scope_spans.scope.version)
            for k, span in enumerate(scope_spans.spans):
                index = len(spans)
                where = f"span {index} (resourceSpans[{r}].scopeSpans[{s}].spans[{k}])"
                _check_count(index, max_spans)
                spans.append(
                    _make_span(
                        where,
                        trace_id=span.trace_id,
                        span_id=span.span_id,
                        parent_id=span.parent_span_id,
                        service=service,
                        name=span.name,
                        kind=_enum_value(span.kind, "kind", _KINDS, where),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status=_enum_value(span.status.code, "status.code", _STATUSES, where),
                        attributes={
                            **merged,
                            **scope_attrs,
                            **_status_message(span.status.message),
                            **_proto_attributes(span.attributes),
                        },
                    )
                )
    return spans


def _make_span(
    where: str,
    *,
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes,
    service: str,
    name: Any,
    kind: SpanKind,
    start_ns: int,
    end_ns: int,
    status: SpanStatus,
    attributes: dict[str, Any],
) -> Span:
    """Validation shared by both encodings; ids arrive as raw bytes."""
    _check_id(trace_id, _TRACE_ID_BYTES, "traceId", where, required=True)
    _check_id(span_id, _SPAN_ID_BYTES, "spanId", where, required=True)
    _check_id(parent_id, _SPAN_ID_BYTES, "parentSpanId", where, required=False)
    if not isinstance(name, str):
        raise OtlpPayloadError(400, f"{where}: name must be a string")
    if start_ns <= 0:
        raise OtlpPayloadError(400, f"{where}: startTimeUnixNano is missing or zero")
    if end_ns < start_ns:
        raise OtlpPayloadError(
            400, f"{where}: endTimeUnixNano ({end_ns}) is before startTimeUnixNano ({start_ns})"
        )
    return Span(
        trace_id=trace_id.hex(),
        span_id=span_id.hex(),
        parent_id=parent_id.hex() if parent_id else None,
        service=service,
        name=name,
        kind=kind,
        start_ns=start_ns,
        end_ns=end_ns,
        status=status,
        attributes=attributes,
    )


def _check_id(raw: bytes, size: int, field: str, where: str, *, required: bool) -> None:
    if not raw:
        if required:
            raise OtlpPayloadError(400, f"{where}: {field} is missing")
        return
    if len(raw) != size:
        raise OtlpPayloadError(
            400, f"{where}: {field} must be {size} bytes ({2 * size} hex characters), got {len(raw)} bytes"
        )
    if not any(raw):
        raise OtlpPayloadError(400, f"{where}: {field} is all zeros, which OTLP defines as invalid")


def _check_count(index: int, max_spans: int | None) -> None:
    if max_spans is not None and index >= max_spans:
        raise OtlpPayloadError(413, f"the request holds more than the limit of {max_spans} spans")


def _resource_view(attrs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    service = attrs.get("service.name")
    return (
        service if isinstance(service, str) and service else UNKNOWN_SERVICE,
        {f"resource.{key}": value for key, value in attrs.items()},
    )


def _scope_attributes(name: Any, version: Any) -> dict[str, Any]:
    found = {"otel.scope.name": name, "otel.scope.version": version}
    return {key: value for key, value in found.items() if isinstance(value, str) and value}


def _status_message(message: Any) -> dict[str, Any]:
    return {"otel.status_description": message} if isinstance(message, str) and message else {}


def _enum_value(value: int, field: str, names: tuple[str, ...], where: str) -> Any:
    if not 0 <= value < len(names):
        raise OtlpPayloadError(400, f"{where}: {field} {value} is not a known value (0..{len(names) - 1})")
    return names[value]


def _proto_attributes(key_values: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _proto_value(kv.value) for kv in key_values}


def _proto_value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_proto_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _proto_attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if which == "double_value":
        return _finite_or_name(value.double_value)
    # a string-table index (profiles' dictionary encoding) means nothing without its table
    if which is None or which == "string_value_strindex":
        return None
    return getattr(value, which)


def _finite_or_name(number: float) -> float | str:
    """Non-finite doubles become their proto3 JSON names so attributes stay valid JSON."""
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpPayloadError(400, f"{where} must be a list")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise OtlpPayloadError(400, f"{where} must be an object")
    return value


def _json_id(value: Any, field: str, where: str) -> bytes:
    """Hex per the OTLP/JSON spec, or base64 as protobuf's JSON mapping (and Tempo) writes bytes."""
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise OtlpPayloadError(400, f"{where}: {field} must be a string")
    if _HEX.issuperset(value):
        if len(value) % 2:
            raise OtlpPayloadError(400, f"{where}: {field} {value!r} has an odd number of hex characters")
        return bytes.fromhex(value)
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise OtlpPayloadError(400, f"{where}: {field} {value!r} is neither hex nor base64") from None


def _json_int(value: Any, field: str, where: str) -> int:
    if isinstance(value, bool):
        raise OtlpPayloadError(400, f"{where}: {field} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise OtlpPayloadError(
        400, f"{where}: {field} must be an integer (number or decimal string), got {value!r}"
    )


def _json_enum(value: Any, field: str, prefix: str, names: tuple[str, ...], where: str) -> Any:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        name = value.upper().removeprefix(prefix).lower()
        if name not in names:
            raise OtlpPayloadError(400, f"{where}: {field} {value!r} is not a known value")
        return name
    return _enum_value(_json_int(value, field, where), field, names, where)


def _json_status(value: Any, where: str) -> SpanStatus:
    status = _object(value, f"{where}.status")
    return _json_enum(status.get("code", 0), "status.code", "STATUS_CODE_", _STATUSES, where)


def _json_attributes(value: Any, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, item in enumerate(_list(value, where)):
        kv = _object(item, f"{where}[{i}]")
        key = kv.get("key")
        if not isinstance(key, str):
            raise OtlpPayloadError(400, f"{where}[{i}].key must be a string")
        out[key] = _json_value(kv.get("value"), f"{where}[{i}].value")
    return out


def _json_value(value: Any, where: str) -> Any:
    any_value = _object(value, where)
    if not any_value:
        return None
    kind, raw = next(iter(any_value.items()))
    if kind == "stringValue":
        return raw
    if kind == "boolValue" and isinstance(raw, bool):
        return raw
    if kind == "intValue":
        return _json_int(raw, "intValue", where)
    if kind == "doubleValue":
        if isinstance(raw, str) and raw in _NON_FINITE:
            return _NON_FINITE[raw]
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return _finite_or_name(float(raw))
        if isinstance(raw, str):
            try:
                return _finite_or_name(float(raw))
            except ValueError:
                pass
    if kind == "arrayValue":
        items = _list(_object(raw, where).get("values"), f"{where}.arrayValue.values")
        return [_json_value(v, f"{where}.arrayValue.values[{i}]") for i, v in enumerate(items)]
    if kind == "kvlistValue":
        return _json_attributes(_object(raw, where).get("values"), f"{where}.kvlistValue.values")
    if kind == "bytesValue" and isinstance(raw, str):
        return raw
    raise OtlpPayloadError(400, f"{where}: unsupported or malformed AnyValue {kind!r}: {raw!r}")


def otlp_json(spans: Sequence[Span]) -> dict[str, Any]:
    """An OTLP/JSON export request holding ``spans`` (one resource per service), as an exporter sends it."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        encoded: dict[str, Any] = {
            "traceId": span.trace_id,
            "spanId": span.span_id,
            "name": span.name,
            "kind": f"SPAN_KIND_{span.kind.upper()}",
            "startTimeUnixNano": str(span.start_ns),
            "endTimeUnixNano": str(span.end_ns),
            "status": {"code": f"STATUS_CODE_{span.status.upper()}"},
            "attributes": [{"key": k, "value": _any_value(v)} for k, v in span.attributes.items()],
        }
        if span.parent_id:
            encoded["parentSpanId"] = span.parent_id
        by_service.setdefault(span.service, []).append(encoded)
    return {"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
         "scopeSpans": [{"scope": {"name": "devart.simulation"}, "spans": encoded}]}
        for service, encoded in by_service.items()
    ]}


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}
