import base64
import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from aiops.settings import AiopsSettings
from aiops.traces import (
    OtlpLimits,
    OtlpPayloadError,
    Span,
    error_response,
    export_response,
    parse_export_request,
    spans_from_otlp_json,
)
from tests.aiops.traces.otlp_builders import as_parsed, export_request, protojson, tempo_v1, tempo_v2

FIXTURE = Path(__file__).parent / "data" / "trace.json"
LIMITS = OtlpLimits(max_body_bytes=1 << 20, max_decompressed_bytes=1 << 22, max_spans=1000)
T0 = 1_700_000_000_000_000_000

RICH = Span(
    trace_id="0af7651916cd43dd8448eb211c80319c",
    span_id="b7ad6b7169203331",
    parent_id="00f067aa0ba902b7",
    service="checkout",
    name="POST /orders",
    kind="server",
    start_ns=T0,
    end_ns=T0 + 2_500_000,
    status="error",
    attributes={
        "http.method": "POST",
        "http.status_code": 503,
        "retry": True,
        "ratio": 0.25,
        "tags": ["a", 1, False, 2.5],
        "nested": {"k": "v", "n": 7, "deeper": {"x": [1, 2]}},
        "empty": None,
    },
)
ROOT = Span(
    trace_id="0af7651916cd43dd8448eb211c80319c",
    span_id="00f067aa0ba902b7",
    parent_id=None,
    service="gateway",
    name="GET /",
    kind="client",
    start_ns=T0 - 1_000,
    end_ns=T0 + 3_000_000,
)


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


def _fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def _error(
    body: bytes,
    content_type: str = "application/json",
    encoding: str | None = None,
    limits: OtlpLimits = LIMITS,
) -> OtlpPayloadError:
    with pytest.raises(OtlpPayloadError) as caught:
        parse_export_request(body, content_type, encoding, limits)
    return caught.value


def test_the_canonical_otlp_json_example_parses_to_one_span() -> None:
    spans = parse_export_request(FIXTURE.read_bytes(), "application/json", None, LIMITS)
    assert spans == [
        Span(
            trace_id="5b8efff798038103d269b633813fc60c",
            span_id="eee19b7ec3c1b174",
            parent_id="eee19b7ec3c1b173",
            service="my.service",
            name="I'm a server span",
            kind="server",
            start_ns=1544712660000000000,
            end_ns=1544712661000000000,
            status="unset",
            attributes={
                "resource.service.name": "my.service",
                "otel.scope.name": "my.library",
                "otel.scope.version": "1.0.0",
                "my.span.attr": "some value",
            },
        )
    ]


def test_protobuf_round_trip_through_the_real_messages() -> None:
    body = export_request([ROOT, RICH]).SerializeToString()
    spans = parse_export_request(body, "application/x-protobuf", None, LIMITS)
    assert spans == [as_parsed(ROOT), as_parsed(RICH)]


def test_protobuf_json_mapping_with_base64_ids_and_enum_names_parses_the_same() -> None:
    document = protojson([ROOT, RICH])
    raw_span = document["resourceSpans"][1]["scopeSpans"][0]["spans"][0]
    assert raw_span["kind"] == "SPAN_KIND_SERVER" and raw_span["status"]["code"] == "STATUS_CODE_ERROR"
    assert raw_span["traceId"] == base64.b64encode(bytes.fromhex(RICH.trace_id)).decode()
    assert isinstance(raw_span["startTimeUnixNano"], str)
    spans = parse_export_request(_json(document), "application/json; charset=utf-8", None, LIMITS)
    assert spans == [as_parsed(ROOT), as_parsed(RICH)]


def test_json_accepts_numbers_for_int64_and_enums_and_urlsafe_unpadded_base64() -> None:
    document = _fixture()
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["startTimeUnixNano"] = 1544712660000000000
    span["endTimeUnixNano"] = "1544712661000000000"
    span["kind"] = "SPAN_KIND_CONSUMER"
    span["status"] = {"code": 2, "message": "boom"}
    span["spanId"] = base64.urlsafe_b64encode(bytes.fromhex("ffe19b7ec3c1b174")).decode().rstrip("=")
    span["attributes"] = [
        {"key": "i", "value": {"intValue": 42}},
        {"key": "s", "value": {"intValue": "-7"}},
        {"key": "d", "value": {"doubleValue": "NaN"}},
        {"key": "b", "value": {"bytesValue": "AAEC"}},
    ]
    (parsed,) = spans_from_otlp_json(document)
    assert (parsed.span_id, parsed.kind, parsed.status) == ("ffe19b7ec3c1b174", "consumer", "error")
    assert parsed.start_ns == 1544712660000000000
    assert parsed.attributes["otel.status_description"] == "boom"
    assert {k: parsed.attributes[k] for k in "isdb"} == {"i": 42, "s": -7, "d": "NaN", "b": "AAEC"}


def test_tempo_v1_batches_and_v2_wrapper_and_instrumentation_library_spans() -> None:
    expected = [as_parsed(ROOT), as_parsed(RICH)]
    assert spans_from_otlp_json(tempo_v1([ROOT, RICH])) == expected
    assert spans_from_otlp_json(tempo_v2([ROOT, RICH])) == expected
    old = tempo_v1([ROOT, RICH])
    for batch in old["batches"]:
        batch["instrumentationLibrarySpans"] = batch.pop("scopeSpans")
    assert spans_from_otlp_json(old) == expected
    assert spans_from_otlp_json({"trace": {}}) == []


def test_a_resource_without_service_name_is_unknown_service() -> None:
    document = _fixture()
    document["resourceSpans"][0]["resource"] = {
        "attributes": [{"key": "host.name", "value": {"stringValue": "h"}}]
    }
    (parsed,) = spans_from_otlp_json(document)
    assert parsed.service == "unknown_service"
    assert parsed.attributes["resource.host.name"] == "h"


def test_gzip_bodies_are_inflated() -> None:
    body = gzip.compress(export_request([RICH]).SerializeToString())
    assert parse_export_request(body, "application/x-protobuf", "gzip", LIMITS) == [as_parsed(RICH)]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: s.update(endTimeUnixNano="1544712650000000000"), "endTimeUnixNano"),
        (lambda s: s.update(traceId="5B8EFFF798038103D269B633813FC6"), "traceId must be 16 bytes"),
        (lambda s: s.update(spanId="EEE19B7EC3C1B1"), "spanId must be 8 bytes"),
        (lambda s: s.update(parentSpanId="EEE19B7EC3C1B17"), "odd number of hex"),
        (lambda s: s.pop("traceId"), "traceId is missing"),
        (lambda s: s.update(traceId="0" * 32), "traceId is all zeros"),
        (lambda s: s.update(spanId="not an id!"), "neither hex nor base64"),
        (lambda s: s.pop("startTimeUnixNano"), "startTimeUnixNano is missing"),
        (lambda s: s.update(kind="SPAN_KIND_SIDEWAYS"), "kind"),
        (lambda s: s.update(kind=9), "kind 9"),
        (lambda s: s.update(status={"code": "STATUS_CODE_MAYBE"}), "status.code"),
        (lambda s: s.update(startTimeUnixNano="soon"), "startTimeUnixNano must be an integer"),
        (lambda s: s.update(attributes=[{"key": "x", "value": {"weirdValue": 1}}]), "weirdValue"),
    ],
)
def test_one_bad_span_rejects_the_whole_batch_naming_it(mutate: Any, needle: str) -> None:
    document = _fixture()
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.insert(0, copy.deepcopy(spans[0]))
    mutate(spans[1])
    error = _error(_json(document))
    assert error.status_code == 400
    assert "span 1 (resourceSpans[0].scopeSpans[0].spans[1])" in error.message
    assert needle in error.message


def test_protobuf_spans_are_validated_too() -> None:
    request = export_request([ROOT, RICH])
    request.resource_spans[1].scope_spans[0].spans[0].trace_id = b"\x01" * 15
    error = _error(request.SerializeToString(), "application/x-protobuf")
    assert error.status_code == 400
    assert error.message.startswith("span 1 (resourceSpans[1].scopeSpans[0].spans[0]): ")
    assert "traceId must be 16 bytes" in error.message


def test_truncated_protobuf_is_a_400() -> None:
    body = export_request([ROOT, RICH]).SerializeToString()
    error = _error(body[: len(body) - 7], "application/x-protobuf")
    assert error.status_code == 400 and "protobuf" in error.message


def test_invalid_json_is_a_400() -> None:
    error = _error(b'{"resourceSpans": [', "application/json")
    assert error.status_code == 400 and "invalid JSON" in error.message
    wrong_shape = _error(b'{"resourceSpans": {}}', "application/json")
    assert "resourceSpans must be a list" in wrong_shape.message
    deep = '{"key": "k", "value": {"arrayValue": {"values": [' * 400 + "]}}}" * 400
    document = FIXTURE.read_text().replace('"attributes": [', f'"attributes": [{deep},', 1)
    assert _error(document.encode()).message == "JSON nested too deeply"
    assert "resourceSpans[0] must be an object" in _error(b'{"resourceSpans": [1]}').message
    scope = _error(b'{"resourceSpans": [{"scopeSpans": ["x"]}]}')
    assert "resourceSpans[0].scopeSpans[0] must be an object" in scope.message


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/grpc"])
def test_other_media_types_are_a_415(content_type: str | None) -> None:
    assert _error(b"{}", content_type).status_code == 415


def test_unknown_content_encoding_is_a_415() -> None:
    error = _error(b"{}", "application/json", "br")
    assert error.status_code == 415 and "Content-Encoding" in error.message


def test_body_over_the_limit_is_a_413() -> None:
    small = OtlpLimits(max_body_bytes=100, max_decompressed_bytes=1000, max_spans=10)
    error = _error(b" " * 101, limits=small)
    assert error.status_code == 413 and "100" in error.message


def test_a_gzip_bomb_stops_at_the_decompressed_limit() -> None:
    bomb = gzip.compress(b" " * (8 << 20))
    assert len(bomb) < LIMITS.max_body_bytes
    error = _error(bomb, "application/json", "gzip")
    assert error.status_code == 413 and "inflates" in error.message


def test_truncated_or_bogus_gzip_is_a_400() -> None:
    body = gzip.compress(FIXTURE.read_bytes())
    assert _error(body[:-12], "application/json", "gzip").status_code == 400
    assert _error(b"not gzip at all", "application/json", "gzip").status_code == 400


def test_too_many_spans_is_a_413() -> None:
    few = OtlpLimits(max_body_bytes=1 << 20, max_decompressed_bytes=1 << 20, max_spans=1)
    error = _error(export_request([ROOT, RICH]).SerializeToString(), "application/x-protobuf", limits=few)
    assert error.status_code == 413 and "1 spans" in error.message


def test_settings_provide_the_limits() -> None:
    limits = AiopsSettings(otlp_max_body_bytes=2048, otlp_max_spans=3).otlp_limits
    assert (limits.max_body_bytes, limits.max_spans) == (2048, 3)


def test_success_response_is_an_empty_export_response_in_the_request_encoding() -> None:
    body, media_type = export_response("application/x-protobuf")
    assert media_type == "application/x-protobuf"
    assert (
        trace_service_pb2.ExportTraceServiceResponse.FromString(body)
        == trace_service_pb2.ExportTraceServiceResponse()
    )
    body, media_type = export_response("application/json; charset=utf-8")
    assert media_type == "application/json"
    response = json_format.Parse(body, trace_service_pb2.ExportTraceServiceResponse())
    assert not response.HasField("partial_success")


def test_error_response_is_a_status_message_in_the_request_encoding() -> None:
    error = OtlpPayloadError(400, "span 0: traceId is missing")
    body, media_type = error_response(error, "application/x-protobuf")
    assert media_type == "application/x-protobuf"
    assert status_pb2.Status.FromString(body).message == "span 0: traceId is missing"
    body, media_type = error_response(error, "text/plain")
    assert media_type == "application/json"
    assert json.loads(body)["message"] == "span 0: traceId is missing"


def test_sdk_spans_convert_exactly_as_the_receiver_parses_them() -> None:
    """The control plane stores its own spans without an OTLP round trip; what it stores must be
    what the receiver would have stored from the exported request."""
    from opentelemetry import trace as otel_trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from aiops.traces.otlp import PROTOBUF, parse_export_request, spans_from_sdk

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "devart-api", "k8s.pod.name": "api-0"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.sdk", "1.2.3")
    with tracer.start_as_current_span("root", kind=otel_trace.SpanKind.SERVER,
                                      attributes={"n": 3, "ratio": float("nan"), "tags": ("a", "b"), "ok": True}):
        with tracer.start_as_current_span("child", kind=otel_trace.SpanKind.CLIENT) as child:
            child.set_status(otel_trace.StatusCode.ERROR, "boom")
    finished = memory.get_finished_spans()

    body = encode_spans(finished).SerializeToString()
    received = parse_export_request(body, PROTOBUF, None, AiopsSettings().otlp_limits)

    assert spans_from_sdk(finished) == received
    assert {s.name for s in received} == {"root", "child"}
