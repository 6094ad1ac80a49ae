import socket
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from aiops.settings import AiopsSettings
from aiops.traces import (
    Span,
    SpanFilter,
    TempoClient,
    TempoError,
    TempoSpanSource,
    TraceSummary,
    make_span_source,
    store,
)
from tests.aiops.traces.otlp_builders import as_parsed, tempo_v1, tempo_v2
from tests.aiops.traces.tempo_fake import FakeTempo, fake_tempo

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
TRACE_A = "0000651916cd43dd8448eb211c80319c"  # leading zeros: Tempo's search drops them
TRACE_B = "1af7651916cd43dd8448eb211c80319c"


def _span(trace: str, i: int, start: int, *, parent: str | None = None, service: str = "api", **kw) -> Span:
    return Span(
        trace_id=trace,
        span_id=f"{i:016x}",
        parent_id=parent,
        service=service,
        name=kw.get("name", "GET /"),
        kind=kw.get("kind", "server"),
        start_ns=start,
        end_ns=start + 1000,
        status=kw.get("status", "unset"),
    )


A = [_span(TRACE_A, 1, T0), _span(TRACE_A, 2, T0 + 10, parent=f"{1:016x}", service="db", kind="client")]
B = [
    _span(TRACE_B, 3, T0 + 5 * S),
    _span(TRACE_B, 4, T0 + 20 * S, parent=f"{3:016x}", service="db", kind="client"),
]


def _hit(trace_id: str, start_ns: int, span_ids: list[str]) -> dict:
    return {
        "traceID": trace_id.lstrip("0"),
        "rootServiceName": "api",
        "rootTraceName": "GET /",
        "startTimeUnixNano": str(start_ns),
        "durationMs": 12,
        "spanSets": [
            {
                "spans": [
                    {
                        "spanID": s,
                        "startTimeUnixNano": str(start_ns),
                        "durationNanos": "1000",
                        "attributes": [],
                    }
                    for s in span_ids
                ],
                "matched": len(span_ids),
            }
        ],
    }


SEARCH = {
    "traces": [_hit(TRACE_A, T0, ["0000000000000002"]), _hit(TRACE_B, T0 + 5 * S, ["4"])],
    "metrics": {"inspectedBytes": "4096", "completedJobs": 1, "totalJobs": 1},
}


@pytest.fixture
def tempo() -> Iterator[FakeTempo]:
    with fake_tempo() as fake:
        yield fake


@pytest.fixture
async def client(tempo: FakeTempo) -> AsyncIterator[TempoClient]:
    async with TempoClient(tempo.url, tenant="team-a", attempts=3, backoff_s=0.001, backoff_max_s=0.01) as c:
        yield c


async def test_search_sends_traceql_window_limit_and_tenant(tempo: FakeTempo, client: TempoClient) -> None:
    tempo.reply("/api/search", 200, SEARCH)
    hits = await client.search(
        '{ resource.service.name = "db" }',
        start_ns=T0 + 1,
        end_ns=T0 + 60 * S + 1,
        limit=20,
        spans_per_spanset=3,
    )
    assert hits[0] == TraceSummary(TRACE_A, "api", "GET /", T0, 12, ("0000000000000002",))
    assert hits[1].matched_span_ids == ("0000000000000004",)
    (seen,) = tempo.seen("/api/search")
    assert seen.params == {
        "q": '{ resource.service.name = "db" }',
        "start": str(T0 // S),
        "end": str(T0 // S + 61),
        "limit": "20",
        "spss": "3",
    }
    assert seen.headers["x-scope-orgid"] == "team-a"


async def test_trace_by_id_reads_the_v2_wrapper(tempo: FakeTempo, client: TempoClient) -> None:
    tempo.reply(f"/api/v2/traces/{TRACE_A}", 200, tempo_v2(A))
    assert await client.trace(TRACE_A) == [as_parsed(s) for s in A]
    assert tempo.seen(f"/api/v2/traces/{TRACE_A}")[0].headers["accept"] == "application/json"
    assert tempo.seen(f"/api/traces/{TRACE_A}") == []


async def test_trace_by_id_falls_back_to_v1_batches_on_404(tempo: FakeTempo, client: TempoClient) -> None:
    tempo.reply(f"/api/traces/{TRACE_B}", 200, tempo_v1(B))
    assert await client.trace(TRACE_B) == [as_parsed(s) for s in B]
    assert len(tempo.seen(f"/api/v2/traces/{TRACE_B}")) == 1
    assert await client.trace("ff" * 16) == []


async def test_tag_values_and_metrics_query_range(tempo: FakeTempo, client: TempoClient) -> None:
    tempo.reply(
        "/api/v2/search/tag/resource.service.name/values",
        200,
        {
            "tagValues": [{"type": "string", "value": "api"}, {"type": "string", "value": "db"}],
            "metrics": {"inspectedBytes": "10"},
        },
    )
    values = await client.tag_values("resource.service.name", start_ns=T0, end_ns=T0 + S, query="{}")
    assert values == ["api", "db"]
    assert tempo.seen("/api/v2/search/tag/resource.service.name/values")[0].params == {
        "start": str(T0 // S),
        "end": str(T0 // S + 1),
        "q": "{}",
    }

    tempo.reply(
        "/api/metrics/query_range",
        200,
        {
            "series": [
                {
                    "labels": [{"key": "resource.service.name", "value": {"stringValue": "api"}}],
                    "samples": [
                        {"timestampMs": str(T0 // 1_000_000), "value": 1.5},
                        {"timestampMs": str(T0 // 1_000_000 + 60_000), "value": 2},
                    ],
                }
            ],
            "metrics": {"inspectedBytes": "100"},
        },
    )
    (series,) = await client.metrics_query_range(
        "{} | rate() by (resource.service.name)", start_ns=T0, end_ns=T0 + 120 * S, step_s=60
    )
    assert series.labels == {"resource.service.name": "api"}
    assert series.timestamps_ms == [T0 // 1_000_000, T0 // 1_000_000 + 60_000]
    assert series.values == [1.5, 2.0]
    assert tempo.seen("/api/metrics/query_range")[0].params == {
        "q": "{} | rate() by (resource.service.name)",
        "start": str(T0 // S),
        "end": str(T0 // S + 120),
        "step": "60s",
    }


async def test_503_then_success_is_retried(tempo: FakeTempo, client: TempoClient) -> None:
    tempo.reply("/api/search", 503, b"ingesters unavailable")
    tempo.reply("/api/search", 429, b"slow down", {"Retry-After": "0"})
    tempo.reply("/api/search", 200, SEARCH)
    hits = await client.search("{}", start_ns=T0, end_ns=T0 + S, limit=5, spans_per_spanset=1)
    assert len(hits) == 2
    assert len(tempo.seen("/api/search")) == 3


async def test_gives_up_after_the_last_attempt_with_a_clear_error(
    tempo: FakeTempo, client: TempoClient
) -> None:
    tempo.reply("/api/search", 503, b"ingesters unavailable")
    with pytest.raises(
        TempoError, match=r"503 to GET /api/search after 3 attempts: ingesters unavailable"
    ) as caught:
        await client.search("{}", start_ns=T0, end_ns=T0 + S, limit=5, spans_per_spanset=1)
    assert caught.value.status_code == 503
    assert len(tempo.seen("/api/search")) == 3


async def test_a_bad_query_is_not_retried(tempo: FakeTempo, client: TempoClient) -> None:
    tempo.reply("/api/search", 400, b"invalid TraceQL query: parse error at line 1, col 3: syntax error")
    with pytest.raises(TempoError, match="400 to GET /api/search: invalid TraceQL query") as caught:
        await client.search("{ nope", start_ns=T0, end_ns=T0 + S, limit=5, spans_per_spanset=1)
    assert caught.value.status_code == 400
    assert len(tempo.seen("/api/search")) == 1


async def test_garbage_answers_are_clear_errors(tempo: FakeTempo, client: TempoClient) -> None:
    tempo.reply("/api/search", 200, b"<html>proxy login</html>")
    with pytest.raises(TempoError, match="invalid JSON"):
        await client.search("{}", start_ns=T0, end_ns=T0 + S, limit=5, spans_per_spanset=1)
    tempo.reply(
        f"/api/v2/traces/{TRACE_A}", 200, {"trace": {"resourceSpans": [{"scopeSpans": [{"spans": [{}]}]}]}}
    )
    with pytest.raises(TempoError, match="malformed trace .*traceId is missing"):
        await client.trace(TRACE_A)
    with pytest.raises(ValueError, match="end_ns"):
        await client.search("{}", start_ns=T0, end_ns=T0, limit=5, spans_per_spanset=1)


async def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with TempoClient(f"http://127.0.0.1:{port}", attempts=2, backoff_s=0.001) as dead:
        with pytest.raises(TempoError, match="failed after 2 attempts: ConnectError"):
            await dead.trace(TRACE_A)


async def test_tempo_source_searches_then_fetches_and_keeps_the_window(
    tempo: FakeTempo, db: asyncpg.Pool
) -> None:
    tempo.reply("/api/search", 200, SEARCH)
    tempo.reply(f"/api/v2/traces/{TRACE_A}", 200, tempo_v2(A))
    tempo.reply(f"/api/v2/traces/{TRACE_B}", 200, tempo_v2(B))
    settings = AiopsSettings(
        span_source="tempo", tempo_url=tempo.url, tempo_tenant="team-a", tempo_search_limit=2
    )
    source = make_span_source(settings, None)
    assert isinstance(source, TempoSpanSource)
    window, only_db = (T0, T0 + 10 * S), SpanFilter(services={"db"})
    try:
        from_tempo = await source.spans_between(*window, only_db)
        assert await source.trace(TRACE_B) == [as_parsed(s) for s in B]
    finally:
        await source.aclose()
    assert from_tempo == [as_parsed(A[1])]  # B's db span started after the window
    assert tempo.seen("/api/search")[0].params["q"] == '{ resource.service.name = "db" }'
    assert tempo.seen("/api/search")[0].params["limit"] == "2"
    assert {r.headers["x-scope-orgid"] for r in tempo.requests} == {"team-a"}

    # the same spans through the built-in store give the same answer (bar the resource attribute)
    async with db.acquire() as conn:
        await store.insert_spans(conn, spans=A + B)
        from_postgres = await store.spans_between(conn, start_ns=window[0], end_ns=window[1], filters=only_db)
    assert [as_parsed(s) for s in from_postgres] == from_tempo


def test_settings_read_tempo_url_from_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPO_URL", "http://tempo:3200")
    monkeypatch.setenv("DEVART_AIOPS_SPAN_SOURCE", "tempo")
    assert AiopsSettings().tempo_url == "http://tempo:3200"
    monkeypatch.setenv("DEVART_AIOPS_TEMPO_URL", "http://other:3200")
    assert AiopsSettings().tempo_url == "http://other:3200"
    monkeypatch.delenv("TEMPO_URL")
    monkeypatch.delenv("DEVART_AIOPS_TEMPO_URL")
    with pytest.raises(ValueError, match="tempo_url"):
        AiopsSettings()


def test_every_setting_is_described() -> None:
    assert all(f.description for f in AiopsSettings.model_fields.values())
