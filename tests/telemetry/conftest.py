"""The process's telemetry with the SDK's in-memory exporter attached for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.sdk.telemetry import API_SERVICE, Telemetry, start_telemetry


@pytest.fixture
def telemetry() -> Telemetry:
    return start_telemetry(API_SERVICE)


@pytest.fixture
def exported(telemetry: Telemetry) -> Iterator[InMemorySpanExporter]:
    """Every span the process ends while the test runs (after sampling), as exported."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    telemetry.add_span_processor(processor)
    yield exporter
    telemetry.remove_span_processor(processor)
