"""Where the AIOps chain reads spans: one interface over the built-in store and Tempo."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from aiops.traces import store
from aiops.traces.filters import ANY_SPAN, SpanFilter
from aiops.traces.model import Span
from aiops.traces.table import SpanTable
from aiops.traces.tempo import TempoClient

if TYPE_CHECKING:
    from aiops.settings import AiopsSettings

log = logging.getLogger("devart.aiops.traces")


class SpanSource(ABC):
    """Reads finished spans. A span belongs to a window when it *started* inside ``[start_ns, end_ns)``."""

    @abstractmethod
    async def spans_between(self, start_ns: int, end_ns: int, filters: SpanFilter = ANY_SPAN) -> list[Span]:
        """Spans started in the window that pass ``filters``, ordered by start time."""

    async def span_table_between(self, start_ns: int, end_ns: int, attributes: Sequence[str]) -> SpanTable:
        """The spans of :meth:`spans_between` as columns; only the ``attributes`` named need be kept."""
        return SpanTable.from_spans(await self.spans_between(start_ns, end_ns))

    @abstractmethod
    async def trace(self, trace_id: str) -> list[Span]:
        """Every span of one trace (lower-case hex id), empty when unknown."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the source owns."""


class PostgresSpanSource(SpanSource):
    """Spans from the built-in store (table ``spans``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def spans_between(self, start_ns: int, end_ns: int, filters: SpanFilter = ANY_SPAN) -> list[Span]:
        async with self._pool.acquire() as conn:
            return await store.spans_between(conn, start_ns=start_ns, end_ns=end_ns, filters=filters)

    async def span_table_between(self, start_ns: int, end_ns: int, attributes: Sequence[str]) -> SpanTable:
        async with self._pool.acquire() as conn:
            return await store.span_table_between(conn, start_ns=start_ns, end_ns=end_ns, attributes=attributes)

    async def trace(self, trace_id: str) -> list[Span]:
        async with self._pool.acquire() as conn:
            return await store.trace(conn, trace_id=trace_id)

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to the caller."""


class TempoSpanSource(SpanSource):
    """Spans from Tempo: a TraceQL search for the window, then each hit fetched whole (a bounded
    number at a time) and cut back to the spans that started in the window and pass the filter."""

    def __init__(
        self, client: TempoClient, *, search_limit: int, spans_per_spanset: int, fetch_concurrency: int
    ) -> None:
        self._client = client
        self._search_limit = search_limit
        self._spans_per_spanset = spans_per_spanset
        self._fetch = asyncio.Semaphore(fetch_concurrency)

    async def spans_between(self, start_ns: int, end_ns: int, filters: SpanFilter = ANY_SPAN) -> list[Span]:
        hits = await self._client.search(
            filters.to_traceql(),
            start_ns=start_ns,
            end_ns=end_ns,
            limit=self._search_limit,
            spans_per_spanset=self._spans_per_spanset,
        )
        if len(hits) >= self._search_limit:
            log.warning(
                "Tempo search hit its limit of %d traces; spans of further traces in the window are missing "
                "(raise DEVART_AIOPS_TEMPO_SEARCH_LIMIT or query shorter windows)",
                self._search_limit,
            )
        trace_ids = sorted({hit.trace_id for hit in hits})
        async with asyncio.TaskGroup() as group:
            fetches = [group.create_task(self._trace_bounded(trace_id)) for trace_id in trace_ids]
        spans = [
            span
            for fetch in fetches
            for span in fetch.result()
            if start_ns <= span.start_ns < end_ns and filters.matches(span)
        ]
        spans.sort(key=lambda s: (s.start_ns, s.trace_id, s.span_id))
        return spans

    async def trace(self, trace_id: str) -> list[Span]:
        spans = await self._client.trace(trace_id)
        spans.sort(key=lambda s: (s.start_ns, s.span_id))
        return spans

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _trace_bounded(self, trace_id: str) -> list[Span]:
        async with self._fetch:
            return await self._client.trace(trace_id)


def make_span_source(settings: AiopsSettings, pool: asyncpg.Pool | None) -> SpanSource:
    """The source ``settings.span_source`` names; the caller closes it with ``aclose()``."""
    if settings.span_source == "tempo":
        return TempoSpanSource(
            TempoClient.from_settings(settings),
            search_limit=settings.tempo_search_limit,
            spans_per_spanset=settings.tempo_spans_per_spanset,
            fetch_concurrency=settings.tempo_fetch_concurrency,
        )
    if pool is None:
        raise ValueError("span_source 'postgres' needs a database pool")
    return PostgresSpanSource(pool)
