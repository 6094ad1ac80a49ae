"""An async client for Grafana Tempo's HTTP API: TraceQL search, trace by id, tag values, metrics.

Every request is a GET; 429, 5xx and transport errors are retried a bounded number of times with
exponential backoff (honouring ``Retry-After``); any other failure raises :class:`TempoError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from types import TracebackType, UnionType
from typing import TYPE_CHECKING, Any

import httpx

from aiops.traces.model import Span
from aiops.traces.otlp import OtlpPayloadError, spans_from_otlp_json

if TYPE_CHECKING:
    from aiops.settings import AiopsSettings

log = logging.getLogger("devart.aiops.tempo")

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_ERROR_BODY_CHARS = 500


class TempoError(RuntimeError):
    """Tempo refused a request, answered garbage, or kept failing after every retry."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One hit of a TraceQL search."""

    trace_id: str
    root_service: str
    root_name: str
    start_ns: int
    duration_ms: int
    matched_span_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """One series of a TraceQL metrics query: its labels and samples (Unix ms, value)."""

    labels: dict[str, Any]
    timestamps_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class TempoClient:
    """Talks to one Tempo (optionally one tenant of it). Use as ``async with TempoClient(...)``."""

    def __init__(
        self,
        base_url: str,
        *,
        tenant: str | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        attempts: int = 4,
        backoff_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        headers = {"Accept": "application/json"}
        if tenant:
            headers["X-Scope-OrgID"] = tenant
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        )
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s

    @classmethod
    def from_settings(cls, settings: AiopsSettings) -> TempoClient:
        """A client configured by ``DEVART_AIOPS_TEMPO_*``."""
        if not settings.tempo_url:
            raise ValueError("tempo_url (DEVART_AIOPS_TEMPO_URL or TEMPO_URL) is not set")
        return cls(
            settings.tempo_url,
            tenant=settings.tempo_tenant,
            timeout_s=settings.tempo_timeout_s,
            connect_timeout_s=settings.tempo_connect_timeout_s,
            attempts=settings.tempo_attempts,
            backoff_s=settings.tempo_backoff_s,
            backoff_max_s=settings.tempo_backoff_max_s,
        )

    async def __aenter__(self) -> TempoClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def search(
        self, query: str, *, start_ns: int, end_ns: int, limit: int, spans_per_spanset: int
    ) -> list[TraceSummary]:
        """Traces matching a TraceQL ``query`` within ``[start_ns, end_ns)``, at most ``limit``."""
        body = await self._get_json(
            "/api/search",
            {"q": query, **_window(start_ns, end_ns), "limit": limit, "spss": spans_per_spanset},
        )
        return [_summary(item) for item in _field(body, "traces", list, default=[])]

    async def trace(self, trace_id: str) -> list[Span]:
        """Every span of one trace, or an empty list when Tempo does not know it. Asks the v2
        endpoint and falls back to v1 (``batches``) when v2 answers 404 (older Tempo)."""
        for path in (f"/api/v2/traces/{trace_id}", f"/api/traces/{trace_id}"):
            response = await self._get(path, {}, allow_not_found=True)
            if response.status_code == 404:
                continue
            try:
                return spans_from_otlp_json(_decode(response))
            except OtlpPayloadError as exc:
                raise TempoError(f"Tempo returned a malformed trace for {trace_id}: {exc.message}") from None
        return []

    async def tag_values(
        self, tag: str, *, start_ns: int, end_ns: int, query: str | None = None
    ) -> list[str]:
        """Values Tempo has seen for a scoped tag such as ``resource.service.name`` in the window."""
        params: dict[str, Any] = dict(_window(start_ns, end_ns))
        if query:
            params["q"] = query
        body = await self._get_json(f"/api/v2/search/tag/{tag}/values", params)
        values = _field(body, "tagValues", list, default=[])
        return [str(_field(v, "value", object)) for v in values]

    async def metrics_query_range(
        self, query: str, *, start_ns: int, end_ns: int, step_s: int
    ) -> list[MetricSeries]:
        """A TraceQL metrics query (e.g. ``{} | rate() by (resource.service.name)``) over the window."""
        body = await self._get_json(
            "/api/metrics/query_range", {"q": query, **_window(start_ns, end_ns), "step": f"{step_s}s"}
        )
        series = []
        for item in _field(body, "series", list, default=[]):
            labels = {
                _field(label, "key", str): _label_value(_field(label, "value", dict, default={}))
                for label in _field(item, "labels", list, default=[])
            }
            samples = _field(item, "samples", list, default=[])
            series.append(
                MetricSeries(
                    labels=labels,
                    timestamps_ms=[int(_field(s, "timestampMs", object)) for s in samples],
                    values=[float(s.get("value", 0.0)) for s in samples],
                )
            )
        return series

    async def _get_json(self, path: str, params: dict[str, Any]) -> Any:
        return _decode(await self._get(path, params, allow_not_found=False))

    async def _get(self, path: str, params: dict[str, Any], *, allow_not_found: bool) -> httpx.Response:
        for attempt in range(1, self._attempts + 1):
            last = attempt == self._attempts
            try:
                response = await self._http.get(path, params=params)
            except httpx.TransportError as exc:
                if last:
                    raise TempoError(
                        f"GET {path} failed after {attempt} attempts: {type(exc).__name__}: {exc}"
                    ) from exc
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code == 404 and allow_not_found:
                return response
            if response.status_code in _RETRYABLE_STATUS and not last:
                log.info("Tempo answered %s to GET %s, attempt %d", response.status_code, path, attempt)
                await asyncio.sleep(self._delay(attempt, response.headers.get("Retry-After")))
                continue
            if response.is_success:
                return response
            tried = f" after {attempt} attempts" if response.status_code in _RETRYABLE_STATUS else ""
            raise TempoError(
                f"Tempo answered {response.status_code} to GET {path}{tried}: "
                f"{response.text[:_ERROR_BODY_CHARS].strip()}",
                status_code=response.status_code,
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self._backoff_max_s)
        base = min(self._backoff_s * 2 ** (attempt - 1), self._backoff_max_s)
        return base * random.uniform(0.5, 1.0)


def _window(start_ns: int, end_ns: int) -> dict[str, int]:
    """Tempo takes whole Unix seconds; widen so the window is fully covered."""
    if end_ns <= start_ns:
        raise ValueError(f"end_ns ({end_ns}) must be after start_ns ({start_ns})")
    return {"start": start_ns // 1_000_000_000, "end": -(-end_ns // 1_000_000_000)}


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise TempoError(f"Tempo returned invalid JSON for {response.request.url.path}: {exc}") from None


def _field(obj: Any, key: str, kind: type | UnionType, default: Any = ...) -> Any:
    if not isinstance(obj, dict):
        raise TempoError(f"unexpected Tempo response: expected an object holding {key!r}, got {obj!r:.200}")
    if key not in obj and default is not ...:
        return default
    value = obj.get(key)
    if not isinstance(value, kind):
        raise TempoError(
            f"unexpected Tempo response: {key!r} should be {getattr(kind, '__name__', kind)}, got {value!r:.200}"
        )
    return value


def _summary(item: Any) -> TraceSummary:
    spans = [
        span
        for spanset in _field(item, "spanSets", list, default=[])
        for span in _field(spanset, "spans", list, default=[])
    ]
    return TraceSummary(
        # Tempo drops leading zeros from search ids
        trace_id=_field(item, "traceID", str).lower().zfill(32),
        root_service=_field(item, "rootServiceName", str, default=""),
        root_name=_field(item, "rootTraceName", str, default=""),
        start_ns=int(_field(item, "startTimeUnixNano", str | int, default=0)),
        duration_ms=int(_field(item, "durationMs", int, default=0)),
        matched_span_ids=tuple(_field(s, "spanID", str).lower().zfill(16) for s in spans),
    )


def _label_value(value: dict[str, Any]) -> Any:
    """A label's OTLP AnyValue (``{"stringValue": "api"}``) as a plain value."""
    return next(iter(value.values()), None)
