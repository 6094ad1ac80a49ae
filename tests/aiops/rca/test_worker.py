"""The RCA worker on real Postgres: simulated faults in the span store, incidents, NOTIFY, sweeps,
concurrent workers, retries against a failing Tempo, and results without causes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg

from aiops.rca import analyze, normalise_service
from aiops.rca.worker import CHANNEL, RcaWorker, RcaWorkerSettings
from aiops.settings import AiopsSettings
from aiops.simulation import Scenario, make_scenario
from aiops.traces import store
from aiops.traces.source import PostgresSpanSource, SpanSource, make_span_source
from tests.support.system import wait_for

WINDOW_S = 7  # make_scenario(n_traces=150): baseline then incident window, 7 s each


def worker_settings(**overrides: Any) -> RcaWorkerSettings:
    """Windows matching the simulator's; only notifications and retries wake the worker."""
    values: dict[str, Any] = dict(
        lead_s=0,
        settle_s=0,
        gap_s=0,
        baseline_s=WINDOW_S,
        sweep_interval_s=600,
        backoff_base_s=0.05,
        max_attempts=3,
        reconnect_s=0.1,
    )
    values.update(overrides)
    return RcaWorkerSettings(**values)


async def load_scenario(pool: asyncpg.Pool, topology: str, kind: str, seed: int) -> Scenario:
    """A simulated fault; baseline and incident spans stored in the span store."""
    scenario = make_scenario(topology, kind, seed, n_traces=150)  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        await store.insert_spans(conn, spans=[*scenario.baseline, *scenario.incident])
    return scenario


async def open_incident(
    pool: asyncpg.Pool, started_ns: int, ended_ns: int | None, *, notify: bool = True, status: str = "open"
) -> UUID:
    """An incident row as the incidents service writes it, announced on ``devart_incidents``."""
    incident_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO incidents (id, status, title, severity, services, started_ns, ended_ns, last_anomaly_ns,
                                      resolved_at)
               VALUES ($1, $2, 'latency up', 0.5, ARRAY['svc0'], $3, $4, $3,
                       CASE WHEN $2 = 'resolved' THEN now() END)""",
            incident_id,
            status,
            started_ns,
            ended_ns,
        )
    if notify:
        await announce(pool, incident_id)
    return incident_id


async def announce(pool: asyncpg.Pool, incident_id: UUID, event: str = "opened") -> None:
    payload = json.dumps({"incident_id": str(incident_id), "event": event})
    await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)


async def incident_for(pool: asyncpg.Pool, scenario: Scenario, **kwargs: Any) -> UUID:
    start = min(span.start_ns for span in scenario.incident)
    return await open_incident(pool, start, start + WINDOW_S * 1_000_000_000, **kwargs)


async def rca_row(pool: asyncpg.Pool, incident_id: UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        """SELECT status, result::text AS result, similar_incidents::text AS similar_incidents, signature,
                  embedding IS NOT NULL AS embedded, attempts, last_error
           FROM rca_results WHERE incident_id = $1""",
        incident_id,
    )


async def finished(pool: asyncpg.Pool, incident_id: UUID) -> asyncpg.Record:
    """The row once its analysis reached a final status."""

    async def final() -> asyncpg.Record | None:
        row = await rca_row(pool, incident_id)
        return row if row is not None and row["status"] in ("done", "failed", "insufficient_data") else None

    return await wait_for(final, timeout_s=20, what=f"RCA of incident {incident_id}")


@asynccontextmanager
async def running_worker(
    pool: asyncpg.Pool, source: SpanSource | None = None, **overrides: Any
) -> AsyncIterator[RcaWorker]:
    """A started worker that is listening and has finished its first sweep."""
    async with RcaWorker(
        pool, source or PostgresSpanSource(pool), settings=worker_settings(**overrides)
    ) as worker:
        await wait_for(
            lambda: _true(worker.listening and worker.iterations >= 1), what="the worker's first sweep"
        )
        yield worker


async def _true(value: bool) -> bool:
    return value


async def test_notified_incident_gets_a_stored_rca_blaming_the_faulty_service(db: asyncpg.Pool) -> None:
    scenario = await load_scenario(db, "chain", "db_slowdown", 0)
    async with running_worker(db):
        incident_id = await incident_for(db, scenario)
        row = await finished(db, incident_id)
    assert row["status"] == "done" and row["attempts"] == 1 and row["last_error"] is None
    result = json.loads(row["result"])
    top = result["causes"][0]
    assert normalise_service(top["service"]) == normalise_service(scenario.root_cause)
    assert 0 < top["confidence"] <= 1 and top["recommendations"] and top["evidence"]["operations"]
    assert result["status"] == "ok" and top["service"] in result["summary"]
    assert row["signature"].startswith("category ") and row["embedded"]
    assert json.loads(row["similar_incidents"]) == []
    # an unconfirmed cause does not enter the similar-incident memory
    assert await db.fetchval("SELECT count(*) FROM rca_memory") == 0


async def test_the_worker_reads_columns_and_stores_the_analysis_of_the_stored_spans(db: asyncpg.Pool) -> None:
    """The worker reads the store as a table of columns with only the attributes RCA reads; its
    result is the one the stored spans themselves give, field for field."""
    scenario = await load_scenario(db, "web_shop", "exception", 1)
    async with running_worker(db):
        incident_id = await incident_for(db, scenario)
        row = await finished(db, incident_id)
    start = min(span.start_ns for span in scenario.incident)
    async with db.acquire() as conn:
        incident = await store.spans_between(conn, start_ns=start, end_ns=start + WINDOW_S * 1_000_000_000)
        baseline = await store.spans_between(conn, start_ns=start - WINDOW_S * 1_000_000_000, end_ns=start)
    expected = json.loads(json.dumps(dataclasses.asdict(analyze(incident, baseline)), default=lambda v: v.item()))
    stored = json.loads(row["result"])
    assert stored["status"] == "ok" and stored["stats"]["incident_spans"] == len(incident)
    for result in (stored, expected):
        del result["stats"]["seconds"]
    assert stored == expected


async def test_duplicate_notifications_and_two_workers_analyse_an_incident_once(db: asyncpg.Pool) -> None:
    scenario = await load_scenario(db, "chain", "cpu", 0)
    async with running_worker(db) as first, running_worker(db) as second:
        incident_id = await incident_for(db, scenario, notify=False)
        for event in ("opened", "opened", "updated"):
            await announce(db, incident_id, event)
        row = await finished(db, incident_id)
        seen = first.iterations, second.iterations
        await announce(db, incident_id, "resolved")
        await wait_for(
            lambda: _true(first.iterations > seen[0] and second.iterations > seen[1]),
            what="both workers to handle the last notification",
        )
    assert row["status"] == "done"
    assert (await rca_row(db, incident_id))["attempts"] == 1  # type: ignore[index]
    assert await db.fetchval("SELECT count(*) FROM rca_results") == 1


async def test_incident_opened_while_no_worker_ran_is_found_by_the_sweep(db: asyncpg.Pool) -> None:
    scenario = await load_scenario(db, "chain", "db_slowdown", 1)
    incident_id = await incident_for(db, scenario, notify=True)  # nobody listens yet: the message is lost
    async with running_worker(db):
        row = await finished(db, incident_id)
    assert row["status"] == "done"
    assert normalise_service(json.loads(row["result"])["causes"][0]["service"]) == normalise_service(
        scenario.root_cause
    )


async def test_resolved_incidents_are_not_swept_up_unless_named(db: asyncpg.Pool) -> None:
    scenario = await load_scenario(db, "chain", "db_slowdown", 1)
    quiet = await incident_for(db, scenario, notify=False, status="resolved")
    async with running_worker(db) as worker:
        assert await worker.sweep() == 0 and await rca_row(db, quiet) is None
        await announce(db, quiet, "resolved")
        row = await finished(db, quiet)
    assert row["status"] == "done"


async def test_lost_listen_connection_is_reopened(db: asyncpg.Pool) -> None:
    scenario = await load_scenario(db, "chain", "db_slowdown", 1)
    async with running_worker(db) as worker:
        listener = await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()"
        )
        await db.execute("SELECT pg_terminate_backend($1)", listener)
        await wait_for(lambda: _true(not worker.listening), what="the worker to notice the lost connection")
        await wait_for(lambda: _true(worker.listening), what="the worker to listen again")
        incident_id = await incident_for(db, scenario)
        assert (await finished(db, incident_id))["status"] == "done"


class _FailingTempo:
    """A Tempo HTTP endpoint that answers every request with 503, counting them."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head.split(b" ", 2)[1].decode())
        body = b"ingester unavailable"
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()


async def test_failing_span_source_is_retried_with_backoff_then_failed(db: asyncpg.Pool) -> None:
    tempo = _FailingTempo()
    async with tempo as url:
        source = make_span_source(AiopsSettings(span_source="tempo", tempo_url=url, tempo_attempts=1), None)
        try:
            async with running_worker(db, source):
                incident_id = await open_incident(db, 1_700_000_000 * 10**9, 1_700_000_060 * 10**9)
                row = await finished(db, incident_id)
        finally:
            await source.aclose()
    assert row["status"] == "failed" and row["attempts"] == 3
    assert "503" in row["last_error"] and row["result"] is None
    assert sum(path.startswith("/api/search") for path in tempo.requests) >= 3


async def test_empty_window_is_a_stored_insufficient_data_result(db: asyncpg.Pool) -> None:
    async with running_worker(db):
        incident_id = await open_incident(db, 1_600_000_000 * 10**9, 1_600_000_060 * 10**9)
        row = await finished(db, incident_id)
    assert row["status"] == "insufficient_data" and row["attempts"] == 1 and row["last_error"] is None
    result = json.loads(row["result"])
    assert result["status"] == "insufficient_data" and result["causes"] == []
    assert "incident window has 0 valid spans" in result["reason"]
    assert not row["embedded"]
