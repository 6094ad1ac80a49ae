"""Spans from OTLP and Tempo, the built-in span store, and the sources the AIOps chain reads."""

from aiops.traces.filters import ANY_SPAN, SpanFilter
from aiops.traces.model import Span, SpanKind, SpanStatus
from aiops.traces.otlp import (
    OtlpLimits,
    OtlpPayloadError,
    error_response,
    export_response,
    parse_export_request,
    spans_from_otlp_json,
)
from aiops.traces.source import PostgresSpanSource, SpanSource, TempoSpanSource, make_span_source
from aiops.traces.tempo import MetricSeries, TempoClient, TempoError, TraceSummary

__all__ = [
    "ANY_SPAN",
    "MetricSeries",
    "OtlpLimits",
    "OtlpPayloadError",
    "PostgresSpanSource",
    "Span",
    "SpanFilter",
    "SpanKind",
    "SpanSource",
    "SpanStatus",
    "TempoClient",
    "TempoError",
    "TempoSpanSource",
    "TraceSummary",
    "error_response",
    "export_response",
    "make_span_source",
    "parse_export_request",
    "spans_from_otlp_json",
]
