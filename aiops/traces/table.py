"""Spans as a table of columns: what bulk readers (RCA) take instead of one :class:`Span` per span.

Building a Python object per span costs more than everything RCA computes from 100,000 of them,
so a source that can (the Postgres store) hands over columns directly, and a list of spans is
transposed at C speed (``attrgetter`` and ``zip``), never visited span by span in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from typing import Any

import numpy as np

from aiops.traces.model import Span

FIELDS = ("trace_id", "span_id", "parent_id", "service", "name", "kind", "status", "attributes", "start_ns", "end_ns")
"""The columns, in :class:`SpanTable`' order."""


@dataclass(frozen=True)
class SpanTable:
    """Aligned columns of spans, one row per span, in the fields and meaning of :class:`Span`.

    Rows may share one ``attributes`` dict (a reader decodes each distinct value once): treat them
    as read-only. ``rejected`` counts the given items that could not become a row (not a span, or
    times that are not integers).
    """

    trace_id: Sequence[str]
    span_id: Sequence[str]
    parent_id: Sequence[str | None]
    service: Sequence[str]
    name: Sequence[str]
    kind: Sequence[str]
    status: Sequence[str]
    attributes: Sequence[dict[str, Any]]
    start_ns: np.ndarray
    end_ns: np.ndarray
    rejected: int = 0

    def __len__(self) -> int:
        return int(self.start_ns.size)

    def select(self, keep: np.ndarray) -> SpanTable:
        """The rows where the boolean array ``keep`` is true."""
        rows = [tuple(compress(getattr(self, f), keep.tolist())) for f in FIELDS[:-2]]
        return SpanTable(*rows, self.start_ns[keep], self.end_ns[keep], self.rejected)

    @classmethod
    def from_spans(cls, spans: Sequence[object]) -> SpanTable:
        """Columns of ``spans`` in order; items that are not spans with integer times are rejected."""
        given = len(spans)
        if set(map(type, spans)) - {Span}:
            spans = [s for s in spans if isinstance(s, Span)]
        start, end = (list(map(attrgetter(field), spans)) for field in FIELDS[-2:])
        if set(map(type, start)) - {int} or set(map(type, end)) - {int}:
            spans = [s for s in spans if isinstance(s.start_ns, int) and isinstance(s.end_ns, int)]
            start, end = (list(map(attrgetter(field), spans)) for field in FIELDS[-2:])
        # Column by column: lists of the spans' own values, no tuple per span for the garbage
        # collector to trace (with one, collections cost more than the whole ranking).
        columns = (list(map(attrgetter(field), spans)) for field in FIELDS[:-2])
        return cls(*columns, np.array(start, np.int64), np.array(end, np.int64), given - len(spans))
