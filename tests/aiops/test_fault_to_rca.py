"""The whole AIOps chain: an injected fault -> anomalies -> an incident -> a stored RCA blaming it."""

from __future__ import annotations

import json

import asyncpg
import pytest

from aiops.rca.changes import record_change
from aiops.rca.model import Change
from aiops.rca.worker import RcaWorker, RcaWorkerSettings
from aiops.simulation import Fault
from aiops.traces import PostgresSpanSource
from tests.aiops.incidents.workload import DAY_STEPS, Workload
from tests.aiops.test_service import _Driver, _incidents, _service
from tests.support.system import wait_for


@pytest.fixture
async def steady(db: asyncpg.Pool) -> _Driver:
    workload = Workload()
    async with db.acquire() as conn:
        await workload.emit(conn, 0, DAY_STEPS)
    return _Driver(db, workload)


async def _rca_of_fault(db: asyncpg.Pool, steady: _Driver, fault: Fault) -> asyncpg.Record:
    """Inject ``fault`` into the steady workload until an incident opens; return its stored RCA."""
    # The service starts this worker itself when it runs on the wall clock; here time is driven.
    worker = RcaWorker(db, PostgresSpanSource(db), settings=RcaWorkerSettings(settle_s=0))
    async with _service(db) as service:
        worker.start()
        assert await steady.run(service, 30) == []
        events: list[str] = []
        for _ in range(6):
            events += await steady.run(service, 1, fault)
            if "opened" in events:
                break
        assert "opened" in events, "the fault opened no incident"
        [incident] = await _incidents(db)

        async def analysed() -> asyncpg.Record | None:
            row = await db.fetchrow("SELECT status, result FROM rca_results WHERE incident_id = $1", incident["id"])
            return row if row is not None and row["status"] not in ("pending", "running") else None

        try:
            return await wait_for(analysed, timeout_s=60, what="the incident's RCA")
        finally:
            await worker.stop()


async def test_injected_fault_ends_in_a_stored_rca_naming_the_faulty_service(
    db: asyncpg.Pool, steady: _Driver
) -> None:
    row = await _rca_of_fault(db, steady, Fault("db_slowdown", "svc2"))
    assert row["status"] == "done", row
    result = json.loads(row["result"])
    assert result["causes"][0]["service"] == "svc2", result["causes"][:3]
    assert result["causes"][0]["evidence"]["changes"] == []


async def test_a_recorded_deployment_is_evidence_of_the_cause(db: asyncpg.Pool, steady: _Driver) -> None:
    """CI recorded a deployment of the faulty service (as a pod name) just before it went bad."""
    deployed_ns = steady.workload.step_start_ns(steady.step + 30) - 60 * 1_000_000_000
    async with db.acquire() as conn:
        await record_change(conn, Change("deployment", "svc2-7d9c8b6f5-x2x7q", deployed_ns, "image svc2:1.4 -> 1.5"),
                            recorded_by="ci")
        await record_change(conn, Change("deployment", "svc5", deployed_ns - 86_400 * 1_000_000_000, "long ago"),
                            recorded_by="ci")
    row = await _rca_of_fault(db, steady, Fault("exception", "svc2"))
    assert row["status"] == "done", row
    top = json.loads(row["result"])["causes"][0]
    assert top["service"] == "svc2", top
    assert [c["detail"] for c in top["evidence"]["changes"]] == ["image svc2:1.4 -> 1.5"]
