"""Spans as a table of columns: transposed in order, with what cannot be a row counted."""

from __future__ import annotations

import numpy as np

from aiops.traces.model import Span
from aiops.traces.table import FIELDS, SpanTable


def _span(i: int, start: object = 10, end: object = 20) -> Span:
    return Span("ab" * 16, f"{i:016x}", None, "svc", f"op{i}", "server", start, end, "ok", {"i": i})  # type: ignore[arg-type]


def test_columns_follow_the_spans_and_items_that_cannot_be_rows_are_rejected() -> None:
    spans = [_span(1), "not a span", _span(2, start=1.5), _span(3, start=7, end=9), _span(4, end=None)]
    table = SpanTable.from_spans(spans)  # type: ignore[arg-type]
    assert len(table) == 2 and table.rejected == 3
    assert list(table.span_id) == [f"{1:016x}", f"{3:016x}"]
    assert list(table.name) == ["op1", "op3"] and list(table.attributes) == [{"i": 1}, {"i": 3}]
    assert table.start_ns.dtype == np.int64 and table.start_ns.tolist() == [10, 7]
    assert table.end_ns.tolist() == [20, 9]
    picked = table.select(np.array([False, True]))
    for field in FIELDS[:-2]:
        assert list(getattr(picked, field)) == [getattr(spans[3], field)]
    assert picked.start_ns.tolist() == [7] and picked.rejected == 3


def test_an_empty_window_is_an_empty_table() -> None:
    table = SpanTable.from_spans([])
    assert len(table) == 0 and table.rejected == 0 and table.start_ns.dtype == np.int64
