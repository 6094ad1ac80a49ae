"""The whole AIOps chain: an injected fault -> anomalies -> an incident -> a stored RCA blaming it."""

from __future__ import annotations

import json

import asyncpg
import pytest

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


async def test_injected_fault_ends_in_a_stored_rca_naming_the_faulty_service(
    db: asyncpg.Pool, steady: _Driver
) -> None:
    # The service starts this worker itself when it runs on the wall clock; here time is driven.
    worker = RcaWorker(db, PostgresSpanSource(db), settings=RcaWorkerSettings(settle_s=0))
    async with _service(db) as service:
        worker.start()
        assert await steady.run(service, 30) == []
        events: list[str] = []
        for _ in range(6):
            events += await steady.run(service, 1, Fault("db_slowdown", "svc2"))
            if "opened" in events:
                break
        assert "opened" in events, "the fault opened no incident"
        [incident] = await _incidents(db)

        async def analysed() -> asyncpg.Record | None:
            row = await db.fetchrow("SELECT status, result FROM rca_results WHERE incident_id = $1", incident["id"])
            return row if row is not None and row["status"] not in ("pending", "running") else None

        try:
            row = await wait_for(analysed, timeout_s=60, what="the incident's RCA")
        finally:
            await worker.stop()
    assert row["status"] == "done", row
    result = json.loads(row["result"])
    assert result["causes"][0]["service"] == "svc2", result["causes"][:3]
