"""Detection fed the way production feeds it: a workload exports OTLP to the control plane's receiver,
and the AIOps service turns the stored spans into incidents."""

from __future__ import annotations

import asyncpg
import httpx

from aiops.simulation import Fault
from aiops.traces import Span
from tests.aiops.incidents.workload import DAY_STEPS, Workload
from tests.aiops.test_service import _incidents, _service
from tests.aiops.traces.otlp_builders import export_request

PROTOBUF = {"Content-Type": "application/x-protobuf"}


async def _export(api: httpx.AsyncClient, spans: list[Span], batch: int = 4000) -> None:
    for i in range(0, len(spans), batch):
        response = await api.post("/v1/traces", content=export_request(spans[i : i + batch]).SerializeToString(),
                                  headers=PROTOBUF)
        assert response.status_code == 200, response.text


async def test_latency_regression_exported_over_otlp_opens_one_incident(
    admin: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    workload = Workload()
    await _export(admin, workload.spans(0, DAY_STEPS))
    step = DAY_STEPS
    opened: list[str] = []
    async with _service(db) as service:
        for i in range(40):
            fault = Fault("db_slowdown", "svc2") if i >= 30 else None
            await _export(admin, workload.spans(step, step + 1, fault))
            step += 1
            for result in await service.run_once(workload.step_start_ns(step)):
                opened += [event for event in result.report.events.values() if event == "opened"]
            if opened:
                assert i >= 30, f"steady traffic opened an incident at step {i}"
                break
    assert opened == ["opened"], "the exported regression opened no incident (or more than one)"
    [incident] = await _incidents(db)
    assert "svc2" in incident["services"]
