"""The built-in span store in Postgres (table ``spans``, migration 0002): bulk insert, reads (as spans or as
a table of columns), retention."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from aiops.traces.filters import ANY_SPAN, SpanFilter
from aiops.traces.model import Span
from aiops.traces.table import SpanTable

_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_id",
    "service",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "status",
    "attributes",
)
# attributes travel as text both ways, so the store works on connections with or without a jsonb codec.
_SELECT = f"SELECT {', '.join(_COLUMNS[:-1])}, attributes::text AS attributes FROM spans"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# jsonb refuses the NUL character; an escaped NUL is swapped for U+FFFD (an escaped backslash is kept).
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


async def insert_spans(conn: asyncpg.Connection, *, spans: Sequence[Span]) -> int:
    """Store ``spans``; a span already stored (same trace and span id) is skipped. Returns how many
    rows were new.

    COPY into a per-connection temporary table, then one ``INSERT ... ON CONFLICT DO NOTHING``: the
    speed of COPY with the idempotence a redelivered export needs.
    """
    if not spans:
        return 0
    records = [_record(span) for span in spans]
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS spans_text_incoming ON COMMIT DELETE ROWS AS "
            f"SELECT {', '.join(_COLUMNS[:-1])}, attributes::text AS attributes FROM spans WITH NO DATA"
        )
        await conn.copy_records_to_table("spans_text_incoming", records=records, columns=_COLUMNS)
        status = await conn.execute(
            f"INSERT INTO spans ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS[:-1])}, attributes::jsonb "
            "FROM spans_text_incoming ON CONFLICT (trace_id, span_id) DO NOTHING"
        )
    return int(status.rsplit(" ", 1)[1])


async def trace(conn: asyncpg.Connection, *, trace_id: str) -> list[Span]:
    """Every stored span of one trace, by start time; empty when the trace is unknown."""
    try:
        raw = bytes.fromhex(trace_id)
    except ValueError:
        raise ValueError(f"trace_id must be hex, got {trace_id!r}") from None
    rows = await conn.fetch(f"{_SELECT} WHERE trace_id = $1 ORDER BY start_ns, span_id", raw)
    return [_span(row) for row in rows]


async def spans_between(
    conn: asyncpg.Connection, *, start_ns: int, end_ns: int, filters: SpanFilter = ANY_SPAN
) -> list[Span]:
    """Spans that started in ``[start_ns, end_ns)`` and pass ``filters``, by start time."""
    where, args = _window(start_ns, end_ns, filters)
    rows = await conn.fetch(f"{_SELECT} WHERE {where} ORDER BY {_WINDOW_ORDER}", *args)
    return [_span(row) for row in rows]


async def span_table_between(
    conn: asyncpg.Connection,
    *,
    start_ns: int,
    end_ns: int,
    attributes: Sequence[str],
) -> SpanTable:
    """The spans of :func:`spans_between` (no filter) as columns, with only the ``attributes`` named.

    One row of arrays, one per column: no record, and no :class:`Span`, per span. Each span's
    attributes are cut down to the keys asked for by the server, so that the few distinct
    combinations left (pod, version, peer ...) are each decoded once and shared by their rows.
    """
    where, args = _window(start_ns, end_ns, ANY_SPAN)
    kept = []
    for key in attributes:
        args.append(key)
        key_sql = f"${len(args)}::text"
        kept.append(
            f"CASE WHEN attributes ? {key_sql} THEN jsonb_build_object({key_sql}, attributes -> {key_sql}) "
            "ELSE '{}'::jsonb END"
        )
    kept_sql = " || ".join(kept) or "'{}'::jsonb"
    columns = (
        "encode(trace_id, 'hex')", "encode(span_id, 'hex')", "encode(parent_id, 'hex')",
        "service", "name", "kind", "status", f"({kept_sql})::text", "start_ns", "end_ns",
    )
    aggregates = ", ".join(f"array_agg({column} ORDER BY {_WINDOW_ORDER})" for column in columns)
    row = await conn.fetchrow(f"SELECT {aggregates} FROM spans WHERE {where}", *args)
    if row[0] is None:
        return SpanTable.from_spans([])
    *text, kept_attributes, start, end = row
    decoded = dict.fromkeys(kept_attributes)
    for value in decoded:
        decoded[value] = json.loads(value)
    return SpanTable(
        *text,
        list(map(decoded.__getitem__, kept_attributes)),
        np.array(start, np.int64),
        np.array(end, np.int64),
    )


_WINDOW_ORDER = "start_ns, trace_id, span_id"


def _window(start_ns: int, end_ns: int, filters: SpanFilter) -> tuple[str, list[Any]]:
    """The WHERE clause of a window read and its arguments."""
    args: list[Any] = [start_ns, end_ns]
    where = ["start_ns >= $1", "start_ns < $2"]
    # Only the conditions in use are written, so the planner sees e.g. the (service, start) index.
    for column, values in (
        ("service", filters.services),
        ("name", filters.names),
        ("kind", filters.kinds),
        ("status", filters.statuses),
    ):
        if values:
            args.append(sorted(values))
            where.append(f"{column} = ANY(${len(args)}::text[])")
    return " AND ".join(where), args


async def delete_older_than(conn: asyncpg.Connection, *, cutoff: datetime, batch_size: int) -> int:
    """Delete spans that started before ``cutoff`` (timezone-aware), ``batch_size`` rows per
    statement so no statement holds locks for long. Returns how many were deleted."""
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cutoff_ns = (cutoff - _EPOCH) // timedelta(microseconds=1) * 1000
    total = 0
    while True:
        status = await conn.execute(
            "DELETE FROM spans WHERE ctid = ANY(ARRAY(SELECT ctid FROM spans WHERE start_ns < $1 LIMIT $2))",
            cutoff_ns,
            batch_size,
        )
        deleted = int(status.rsplit(" ", 1)[1])
        total += deleted
        if deleted < batch_size:
            return total


def _record(span: Span) -> tuple[Any, ...]:
    attributes = json.dumps(span.attributes, separators=(",", ":"))
    if "\\u0000" in attributes:
        attributes = _JSON_NUL.sub(r"\1\\ufffd", attributes)
    return (
        bytes.fromhex(span.trace_id),
        bytes.fromhex(span.span_id),
        bytes.fromhex(span.parent_id) if span.parent_id else None,
        span.service.replace("\x00", "\ufffd"),
        span.name.replace("\x00", "\ufffd"),
        span.kind,
        span.start_ns,
        span.end_ns,
        span.status,
        attributes,
    )


def _span(row: asyncpg.Record) -> Span:
    parent = row["parent_id"]
    return Span(
        trace_id=row["trace_id"].hex(),
        span_id=row["span_id"].hex(),
        parent_id=parent.hex() if parent is not None else None,
        service=row["service"],
        name=row["name"],
        kind=row["kind"],
        start_ns=row["start_ns"],
        end_ns=row["end_ns"],
        status=row["status"],
        attributes=json.loads(row["attributes"]),
    )
