from datetime import UTC, datetime

import asyncpg
import numpy as np
import pytest

from aiops.settings import AiopsSettings
from aiops.traces import PostgresSpanSource, Span, SpanFilter, make_span_source, store
from aiops.traces.table import FIELDS, SpanTable

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def _span(
    i: int, *, trace: int = 1, start: int = T0, service: str = "api", name: str = "GET /", **extra
) -> Span:
    return Span(
        trace_id=f"{trace:032x}",
        span_id=f"{i + 1:016x}",
        parent_id=extra.pop("parent_id", None),
        service=service,
        name=name,
        kind=extra.pop("kind", "server"),
        start_ns=start,
        end_ns=start + extra.pop("duration", 1000),
        status=extra.pop("status", "unset"),
        attributes=extra.pop("attributes", {}),
    )


async def test_insert_is_idempotent_and_trace_reads_back_every_field(db: asyncpg.Pool) -> None:
    spans = [
        _span(0, attributes={"http.status_code": 200, "tags": ["a", 1], "nested": {"x": None}}),
        _span(1, start=T0 + 5, parent_id=f"{1:016x}", kind="client", status="error", service="db"),
        _span(2, trace=2),
    ]
    async with db.acquire() as conn:
        assert await store.insert_spans(conn, spans=spans) == 3
        # a redelivered export, plus one new span, in the same batch as a duplicate of itself
        again = [*spans, _span(3, start=T0 + 9), _span(3, start=T0 + 9)]
        assert await store.insert_spans(conn, spans=again) == 1
        assert await conn.fetchval("SELECT count(*) FROM spans") == 4
        assert await store.trace(conn, trace_id=f"{1:032x}") == [spans[0], spans[1], again[3]]
        assert await store.trace(conn, trace_id="ff" * 16) == []
        assert await store.insert_spans(conn, spans=[]) == 0


async def test_text_with_nul_characters_is_stored_with_a_replacement(db: asyncpg.Pool) -> None:
    span = _span(0, name="a\x00b", attributes={"k": "x\x00y", "keep": "\\u0000 literal"})
    async with db.acquire() as conn:
        await store.insert_spans(conn, spans=[span])
        (back,) = await store.trace(conn, trace_id=span.trace_id)
    assert back.name == "a\ufffdb"
    assert back.attributes == {"k": "x\ufffdy", "keep": "\\u0000 literal"}


async def test_a_span_the_table_refuses_rolls_back_the_whole_batch(db: asyncpg.Pool) -> None:
    bad = Span(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_id=None,
        service="s",
        name="n",
        kind="server",
        start_ns=T0,
        end_ns=T0 - 1,
    )
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await store.insert_spans(conn, spans=[_span(0), bad])
        assert await conn.fetchval("SELECT count(*) FROM spans") == 0


async def test_spans_between_is_half_open_and_filters(db: asyncpg.Pool) -> None:
    spans = [
        _span(0, start=T0 - 1),
        _span(1, start=T0),
        _span(2, start=T0 + S, service="db", kind="client", status="error"),
        _span(3, start=T0 + 2 * S, name="POST /"),
        _span(4, start=T0 + 3 * S),
    ]
    async with db.acquire() as conn:
        await store.insert_spans(conn, spans=spans)
        window = dict(start_ns=T0, end_ns=T0 + 3 * S)
        assert await store.spans_between(conn, **window) == spans[1:4]
        assert await store.spans_between(conn, **window, filters=SpanFilter(services={"db"})) == [spans[2]]
        assert await store.spans_between(conn, **window, filters=SpanFilter(names={"POST /", "x"})) == [
            spans[3]
        ]
        assert await store.spans_between(conn, **window, filters=SpanFilter(kinds={"server"})) == [
            spans[1],
            spans[3],
        ]
        both = SpanFilter(services={"api"}, statuses={"error"})
        assert await store.spans_between(conn, **window, filters=both) == []


async def test_span_table_between_holds_the_window_with_only_the_attributes_asked_for(db: asyncpg.Pool) -> None:
    spans = [
        _span(0, start=T0 - 1),
        _span(1, start=T0 + 5, attributes={"k8s.pod.name": "api-7d9f8b6c5d-x2k4q", "http.url": "/a?id=1"}),
        _span(2, trace=2, start=T0, parent_id=f"{2:016x}", kind="client", status="error",
              attributes={"db.system": None, "http.status_code": 503, "n": {"x": [1.5, "y"]}}),
        _span(3, trace=2, start=T0, service="db", attributes={"k8s.pod.name": "api-7d9f8b6c5d-x2k4q"}),
        _span(4, start=T0 + S),
    ]
    keys = ("k8s.pod.name", "db.system", "http.status_code", "absent")
    async with db.acquire() as conn:
        await store.insert_spans(conn, spans=spans)
        table = await store.span_table_between(conn, start_ns=T0, end_ns=T0 + S, attributes=keys)
        expected = SpanTable.from_spans(await store.spans_between(conn, start_ns=T0, end_ns=T0 + S))
        empty = await store.span_table_between(conn, start_ns=0, end_ns=1, attributes=keys)
    assert list(table.span_id) == [f"{i + 1:016x}" for i in (2, 3, 1)], "by start time, then trace and span id"
    for field in FIELDS[:7]:
        assert list(getattr(table, field)) == list(getattr(expected, field)), field
    np.testing.assert_array_equal(table.start_ns, expected.start_ns)
    np.testing.assert_array_equal(table.end_ns, expected.end_ns)
    # a key present with a null value stays present; keys not asked for are left in the database
    assert list(table.attributes) == [
        {"db.system": None, "http.status_code": 503},
        {"k8s.pod.name": "api-7d9f8b6c5d-x2k4q"},
        {"k8s.pod.name": "api-7d9f8b6c5d-x2k4q"},
    ]
    assert len(empty) == 0 and empty.rejected == 0


async def test_delete_older_than_deletes_in_batches_and_keeps_the_rest(db: asyncpg.Pool) -> None:
    cutoff = datetime.fromtimestamp(T0 / S, tz=UTC)
    old = [_span(i, start=T0 - (i + 1) * S) for i in range(25)]
    new = [_span(100 + i, start=T0 + i) for i in range(3)]
    async with db.acquire() as conn:
        await store.insert_spans(conn, spans=old + new)
        assert await store.delete_older_than(conn, cutoff=cutoff, batch_size=10) == 25
        assert await store.delete_older_than(conn, cutoff=cutoff, batch_size=10) == 0
        assert await store.spans_between(conn, start_ns=0, end_ns=2 * T0) == new
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.delete_older_than(conn, cutoff=datetime(2024, 1, 1), batch_size=10)


async def test_the_table_has_its_window_and_trace_indexes(db: asyncpg.Pool) -> None:
    indexes = {
        r["indexname"]: r["indexdef"]
        for r in await db.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'spans'")
    }
    assert "USING brin (start_ns)" in indexes["spans_start_brin"]
    assert "(service, start_ns)" in indexes["spans_service_start"]
    assert "(trace_id, span_id)" in indexes["spans_pkey"]


async def test_postgres_source_is_what_settings_choose_by_default(db: asyncpg.Pool) -> None:
    source = make_span_source(AiopsSettings(), db)
    assert isinstance(source, PostgresSpanSource)
    spans = [_span(0), _span(1, start=T0 + S, service="db")]
    async with db.acquire() as conn:
        await store.insert_spans(conn, spans=spans)
    assert await source.spans_between(T0, T0 + 2 * S, SpanFilter(services={"db"})) == [spans[1]]
    assert await source.trace(spans[0].trace_id) == spans
    await source.aclose()
    with pytest.raises(ValueError, match="pool"):
        make_span_source(AiopsSettings(), None)


async def test_store_works_on_a_pool_with_json_codecs(database_url: str) -> None:
    """The control plane's pool decodes json/jsonb itself; the store must not care."""
    from control_plane.db import SERVICE_ROLE, create_pool

    pool = await create_pool(database_url, role=SERVICE_ROLE, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            span = Span("ab" * 16, "cd" * 8, None, "svc", "op", "server", 1_000, 2_000, "ok", {"k": [1, "v"]})
            assert await store.insert_spans(conn, spans=[span]) == 1
            assert await store.trace(conn, trace_id="ab" * 16) == [span]
            table = await store.span_table_between(conn, start_ns=0, end_ns=5_000, attributes=("k",))
            assert list(table.attributes) == [{"k": [1, "v"]}]
    finally:
        await pool.close()
