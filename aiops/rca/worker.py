"""The RCA worker: analyses every incident once, automatically, and stores the result.

It LISTENs on ``devart_incidents`` (a connection of its own from the pool) and, on every wake-up,
after every (re)connect and every ``sweep_interval_s``, makes sure each unresolved incident (and each
incident a notification named) has a row in ``rca_results``. Rows are claimed with
``FOR UPDATE SKIP LOCKED`` under a lease, so several workers may run and each incident is analysed
by one of them; a worker that dies mid-analysis leaves a lease that expires and the row is claimed
again. Failures are retried with exponential backoff up to ``max_attempts``, then the row is
``failed`` with the error. An analysis without causes (too little data, or nothing moved) is a
stored ``insufficient_data`` result with the reason, not a failure.

The fault-shape signature and its embedding are stored with the result; they enter the
similar-incident memory (``rca_memory``) only when a supervisor confirms the cause, so the memory
holds confirmed causes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiops.embeddings import Embedder, make_embedder
from aiops.incidents import get_incident
from aiops.incidents.store import INCIDENTS_CHANNEL as CHANNEL
from aiops.rca.changes import changes_between
from aiops.rca.frame import ATTRIBUTES
from aiops.rca.memory import SimilarIncident, incident_signature, similar
from aiops.rca.model import RcaResult
from aiops.rca.ranking import analyze
from aiops.rca.settings import RcaSettings
from aiops.traces.source import SpanSource

log = logging.getLogger("devart.aiops.rca")

_S = 1_000_000_000

RcaStatus = Literal["pending", "running", "done", "failed", "insufficient_data"]
RCA_STATUSES: tuple[RcaStatus, ...] = ("pending", "running", "done", "failed", "insufficient_data")


class RcaWorkerSettings(BaseSettings):
    """When and over which windows incidents are analysed (env prefix ``DEVART_RCA_WORKER_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_RCA_WORKER_", extra="ignore")

    lead_s: float = Field(
        30.0,
        ge=0,
        description="The incident window starts this long before the incident's first anomalous step.",
    )
    settle_s: float = Field(
        60.0,
        ge=0,
        description="An incident is analysed once this long has passed since its start, so its window holds data.",
    )
    max_window_s: float = Field(
        1800.0,
        gt=0,
        description="Longest incident window analysed; a longer incident is cut after its onset.",
    )
    baseline_s: float = Field(
        900.0, gt=0, description="Length of the baseline window before the incident window."
    )
    gap_s: float = Field(
        60.0,
        ge=0,
        description="Time left out between the baseline and the incident window (a slow onset before detection).",
    )
    max_attempts: int = Field(
        4, ge=1, le=100, description="Attempts of one analysis before it is marked failed."
    )
    backoff_base_s: float = Field(
        5.0, gt=0, description="Delay before the first retry; doubles every attempt."
    )
    backoff_max_s: float = Field(300.0, gt=0, description="Longest delay between two attempts.")
    lease_s: float = Field(
        600.0,
        gt=0,
        description="How long a claimed analysis may run before another worker may take it over.",
    )
    sweep_interval_s: float = Field(
        30.0, gt=0, description="Interval of the sweep for incidents without a result (missed notifications)."
    )
    jitter: float = Field(0.1, ge=0, lt=1, description="Relative random spread of the sweep interval.")
    reconnect_s: float = Field(2.0, gt=0, description="Pause before reopening a lost LISTEN connection.")
    similar_k: int = Field(
        5, ge=1, le=100, description="How many similar confirmed past incidents a result lists."
    )


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A finished analysis, already serialised for ``rca_results``."""

    status: RcaStatus
    summary: str
    result_json: str
    similar_json: str = "[]"
    signature: str | None = None
    embedding_json: str | None = None

    @classmethod
    def of(
        cls, result: RcaResult, neighbours: list[SimilarIncident], signature: str, embedding: list[float]
    ) -> _Outcome:
        return cls(
            "done",
            result.summary,
            _result_json(result),
            json.dumps([_similar_json(n) for n in neighbours]),
            signature,
            json.dumps(embedding),
        )


class RcaWorker:
    """Analyses incidents as they open; ``async with RcaWorker(...)`` or ``start()``/``stop()``.

    The span source and the embedder belong to the caller. Tests may drive ``run_once()`` directly.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        source: SpanSource,
        *,
        embedder: Embedder | None = None,
        settings: RcaWorkerSettings | None = None,
        rca_settings: RcaSettings | None = None,
    ) -> None:
        self._pool = pool
        self._source = source
        self._embedder = embedder or make_embedder()
        self.settings = settings or RcaWorkerSettings()
        self._rca_settings = rca_settings or RcaSettings()
        self._named: set[UUID] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = False
        self.iterations = 0
        """Completed iterations of the work loop (for health checks and tests)."""

    async def __aenter__(self) -> RcaWorker:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        """Start listening and working in the background."""
        if self._tasks:
            raise RuntimeError("RcaWorker is already running")
        self._tasks = [
            asyncio.create_task(self._listen(), name="rca-listen"),
            asyncio.create_task(self._work(), name="rca-work"),
        ]

    async def stop(self) -> None:
        """Stop both loops; an analysis in progress is abandoned and its lease lets another worker retry it."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.listening = False

    def wake(self) -> None:
        """Run the next iteration now."""
        self._wake.set()

    async def run_once(self) -> float:
        """Sweep, then analyse every due incident; returns the seconds until work is next due."""
        await self.sweep()
        while await self.process_next():
            pass
        return await self._next_due_s()

    async def sweep(self) -> int:
        """Give each unresolved incident, and each one a notification named, a pending row; mark
        rows whose worker died on their last attempt as failed. Returns how many rows were added."""
        named, self._named = list(self._named), set()
        async with self._pool.acquire() as conn:
            await conn.execute(
                """UPDATE rca_results
                   SET status = 'failed', lease_until = NULL, updated_at = now(),
                       last_error = 'the worker analysing it stopped during attempt ' || attempts
                                    || coalesce(' (previous error: ' || last_error || ')', '')
                   WHERE status = 'running' AND lease_until < now() AND attempts >= $1""",
                self.settings.max_attempts,
            )
            status = await conn.execute(
                """INSERT INTO rca_results (incident_id, not_before)
                   SELECT id, to_timestamp(started_ns / 1e9 + $2) FROM incidents
                   WHERE status <> 'resolved' OR id = ANY($1::uuid[])
                   ON CONFLICT (incident_id) DO NOTHING""",
                named,
                self.settings.settle_s,
            )
        return int(status.rsplit(" ", 1)[1])

    async def process_next(self) -> bool:
        """Claim one due analysis and run it; False when nothing is due."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """WITH next AS (
                       SELECT incident_id FROM rca_results
                       WHERE (status = 'pending' AND not_before <= now())
                          OR (status = 'running' AND lease_until < now())
                       ORDER BY not_before LIMIT 1 FOR UPDATE SKIP LOCKED)
                   UPDATE rca_results r
                   SET status = 'running', attempts = r.attempts + 1, updated_at = now(),
                       lease_until = now() + make_interval(secs => $1)
                   FROM next WHERE r.incident_id = next.incident_id
                   RETURNING r.incident_id, r.attempts""",
                self.settings.lease_s,
            )
        if row is None:
            return False
        incident_id, attempt = row["incident_id"], row["attempts"]
        try:
            outcome = await self._analyse(incident_id)
        except Exception as exc:  # any failure (span source, analysis, embedder) is retried, then stored
            log.warning("RCA of incident %s failed (attempt %d): %s", incident_id, attempt, exc)
            await self._retry_or_fail(incident_id, attempt, f"{type(exc).__name__}: {exc}")
            return True
        await self._store(incident_id, attempt, outcome)
        log.info("RCA of incident %s: %s %s", incident_id, outcome.status, outcome.summary)
        return True

    async def _analyse(self, incident_id: UUID) -> _Outcome:
        async with self._pool.acquire() as conn:
            incident = await get_incident(conn, incident_id)
        s = self.settings
        start = incident.started_ns - int(s.lead_s * _S)
        end = min(incident.ended_ns or time.time_ns(), start + int(s.max_window_s * _S))
        base_end = start - int(s.gap_s * _S)
        base_start = base_end - int(s.baseline_s * _S)
        incident_spans, baseline_spans = await asyncio.gather(
            self._source.span_table_between(start, max(end, start + 1), ATTRIBUTES),
            self._source.span_table_between(base_start, base_end, ATTRIBUTES),
        )
        async with self._pool.acquire() as conn:
            changes = await changes_between(conn, start - int(self._rca_settings.change_window_s * _S), end)
        result = await asyncio.to_thread(
            analyze, incident_spans, baseline_spans, changes=changes, settings=self._rca_settings
        )
        if not result.causes:
            return _Outcome("insufficient_data", result.reason, _result_json(result))
        signature = incident_signature(result)
        embedding = [float(v) for v in (await self._embedder.embed([signature]))[0]]
        async with self._pool.acquire() as conn:
            nearest = await similar(conn, embedding, s.similar_k + 1)
        neighbours = [n for n in nearest if n.incident_id != str(incident_id)][: s.similar_k]
        return _Outcome.of(result, neighbours, signature, embedding)

    async def _store(self, incident_id: UUID, attempt: int, outcome: _Outcome) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                """UPDATE rca_results
                   SET status = $3, result = $4::text::jsonb, similar_incidents = $5::text::jsonb,
                       signature = $6, embedding = $7::text::vector, last_error = NULL,
                       lease_until = NULL, updated_at = now()
                   WHERE incident_id = $1 AND status = 'running' AND attempts = $2""",
                incident_id,
                attempt,
                outcome.status,
                outcome.result_json,
                outcome.similar_json,
                outcome.signature,
                outcome.embedding_json,
            )

    async def _retry_or_fail(self, incident_id: UUID, attempt: int, error: str) -> None:
        s = self.settings
        delay = min(s.backoff_base_s * 2 ** (attempt - 1), s.backoff_max_s)
        async with self._pool.acquire() as conn:
            await conn.execute(
                """UPDATE rca_results
                   SET status = CASE WHEN attempts >= $3 THEN 'failed' ELSE 'pending' END,
                       last_error = $4, lease_until = NULL, updated_at = now(),
                       not_before = now() + make_interval(secs => $5)
                   WHERE incident_id = $1 AND status = 'running' AND attempts = $2""",
                incident_id,
                attempt,
                s.max_attempts,
                error[:2000],
                delay,
            )

    async def _next_due_s(self) -> float:
        async with self._pool.acquire() as conn:
            due = await conn.fetchval(
                """SELECT extract(epoch FROM min(at) - now()) FROM (
                       SELECT min(not_before) AS at FROM rca_results WHERE status = 'pending'
                       UNION ALL
                       SELECT min(lease_until) FROM rca_results WHERE status = 'running') AS due"""
            )
        interval = self.settings.sweep_interval_s
        return interval if due is None else min(interval, max(0.0, float(due)))

    async def _work(self) -> None:
        while True:
            self._wake.clear()  # a notification during run_once() makes the next wait return at once
            started = time.monotonic()
            try:
                pause = await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "RCA worker iteration failed, retrying in %.1fs: %s", self.settings.reconnect_s, exc
                )
                pause = self.settings.reconnect_s
            except Exception:
                log.exception("RCA worker iteration failed")
                pause = self.settings.sweep_interval_s
            self.iterations += 1
            elapsed = time.monotonic() - started
            if elapsed > self.settings.sweep_interval_s:
                log.warning(
                    "RCA worker iteration took %.2fs, over its %.2fs interval",
                    elapsed,
                    self.settings.sweep_interval_s,
                )
            pause *= 1 + random.uniform(-self.settings.jitter, self.settings.jitter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=pause)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await self._listen_until_lost(conn)
                log.warning("RCA worker lost its LISTEN connection; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("RCA worker cannot LISTEN on %s: %s", CHANNEL, exc)
            await asyncio.sleep(self.settings.reconnect_s)

    async def _listen_until_lost(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            lost.set()

        conn.add_termination_listener(on_lost)
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            self.listening = True
            self.wake()  # notifications sent while nobody listened are lost: sweep now
            await lost.wait()
        finally:
            self.listening = False
            conn.remove_termination_listener(on_lost)
            if not conn.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await conn.remove_listener(CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            self._named.add(UUID(message["incident_id"] if isinstance(message, dict) else ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring a %s notification without a valid incident_id: %.200r", CHANNEL, payload)
        self.wake()


def _result_json(result: RcaResult) -> str:
    return json.dumps(dataclasses.asdict(result), default=_numpy_scalar)


def _numpy_scalar(value: object) -> object:
    item = getattr(value, "item", None)  # numpy integers and booleans are not JSON types
    if item is None:
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")
    return item()


def _similar_json(incident: SimilarIncident) -> dict[str, Any]:
    return {
        "incident_id": incident.incident_id,
        "cause_service": incident.cause_service,
        "category": incident.category,
        "remediation": incident.remediation,
        "summary": incident.summary,
        "distance": round(incident.distance, 6),
        "confirmed_at": incident.created_at.isoformat(),
    }
