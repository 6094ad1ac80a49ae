"""devart heals itself with no cluster: an agent pool that fails every task -> incident -> RCA names it ->
a drain_pool proposal awaits approval -> approved -> the pool drains -> verification sees the failures stop.

Everything is the real thing (control plane and its workers, the OTLP receiver, the AIOps service on
the demo's fast detector settings, the RCA worker, the remediation worker, a real agent on the real
broker failing real tasks) except the traffic the detector learns from: a simulated call chain whose
last service is the failing agent's (``devart-agent-flaky``), sent through ``POST /v1/traces``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import BaseModel

from agents.sdk import Agent, BrokerSettings, NonRetryableError, TaskContext, task_handler
from aiops.remediation.policy import PolicyError
from aiops.remediation.settings import RemediationSettings
from aiops.service import AiopsService
from aiops.simulation import Fault, TraceGenerator, chain
from aiops.traces.otlp import otlp_json
from control_plane.cli_demo import demo_settings
from control_plane.service import ControlPlane
from tests.support.system import (
    StartAgent,
    client,
    fast_settings,
    make_token,
    register_in_database,
    serve_api,
    wait_for,
)

pytestmark = pytest.mark.slow
_NS = 1_000_000_000
STEP_S, BASELINE_STEPS = 1, 60
FLAKY = "devart-agent-flaky"
POLICY = """
rules:
  - action: drain_pool
    mode: approve
    verify: {interval: 1s, count: 3, failure_limit: 1}
"""


class _Job(BaseModel):
    n: int = 0


@task_handler("job", input=_Job)
async def _always_fails(ctx: TaskContext, data: _Job) -> None:
    raise NonRetryableError(f"job {data.n} failed: this agent is broken")


def _traffic(generator: TraceGenerator, count: int, start_ns: int, duration_ns: int, fault: Fault | None) -> list[Any]:
    return [dataclasses.replace(s, service=FLAKY) if s.service == "svc2" else s
            for s in generator.generate(count, start_ns, duration_ns, fault)]


async def test_a_failing_pool_is_drained_after_approval_and_its_failures_stop(
    database_url: str, broker_settings: BrokerSettings, start_agent: StartAgent, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    demo = demo_settings(STEP_S, BASELINE_STEPS)
    remediation = RemediationSettings(policy=policy, interval_s=0.2, rollout_poll_s=0.2)
    async with ControlPlane(fast_settings(database_url, broker_settings), aiops=demo.aiops,
                            remediation=remediation) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "admin", "ada")) as ada, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        agent = Agent("flaky", skills=["work"], handlers=[_always_fails], slots=2)
        flaky = await start_agent(agent, credentials=await register_in_database(cp, database_url, agent.agent_id, agent.pool_id))
        serving = asyncio.create_task(flaky.run_until_stopped())  # as run_agent does: a drain command ends it
        await wait_for(lambda: _agent_count(database_url), what="the flaky agent")
        step_ns = STEP_S * _NS
        generator = TraceGenerator(chain(3), seed=7)
        now = time.time_ns() // step_ns * step_ns
        for offset in range(0, BASELINE_STEPS, 10):
            start = now - (BASELINE_STEPS - offset) * step_ns
            await _export(ada, _traffic(generator, 400, start, 10 * step_ns, None))
        async with AiopsService(demo.aiops, pool=cp.loops_pool, detector_settings=demo.detector,
                                rca_settings=demo.rca) as aiops:
            aiops.start()
            fault = Fault("exception", "svc2")
            proposal = None
            for i in range(90):
                start = now + i * step_ns
                await _export(ada, _traffic(generator, 40, start, step_ns, fault if i >= 3 else None))
                if i >= 3:  # the agent really fails every task it gets
                    await sam.post("/api/v1/tasks", json={"type": "job", "requires": ["work"], "input": {"n": i}})
                await asyncio.sleep(max(0.0, (start + step_ns - time.time_ns()) / _NS))
                page = (await sam.get("/api/v1/remediations")).json()["items"]
                if page and page[0]["state"] == "awaiting_approval":
                    proposal = page[0]
                    break
            assert proposal is not None, "no drain proposal within 90 steps"
            assert (proposal["action"], proposal["target"]) == ("drain_pool", flaky.agent.pool_id)
            rca = (await sam.get(f"/api/v1/incidents/{proposal['incident_id']}/rca")).json()
            assert rca["result"]["causes"][0]["service"] == FLAKY
            failed = await _failed_attempts(database_url, flaky.agent.pool_id)
            assert failed >= 2, "the agent did not fail its tasks"

            decided = await ada.post(f"/api/v1/approvals/{proposal['approval_id']}/approve", json={"comment": "drain it"})
            assert decided.status_code == 200 and decided.json()["state"] == "approved"

            async def finished() -> dict[str, Any] | None:
                body = (await sam.get(f"/api/v1/remediations/{proposal['id']}")).json()
                return body if body["state"] not in ("applying", "verifying") else None

            try:
                done = await wait_for(finished, timeout_s=60, what="the drain to be verified")
            except AssertionError:
                raise AssertionError((await sam.get(f"/api/v1/remediations/{proposal['id']}")).text) from None
            assert done["state"] == "successful", done
            assert done["apply_result"]["agents"] == [flaky.agent.agent_id]
            points = done["verification"]["points"]
            assert len(points) == 3 and sum(1 for p in points if p["ok"]) >= 2
            assert (await _failed_attempts(database_url, flaky.agent.pool_id)) == failed  # the failures stopped
            assert await asyncio.wait_for(serving, timeout=30)  # the agent drained cleanly and left
            incident = await _incident(database_url, proposal["incident_id"])
            assert incident["resolved_by_remediation"] == done["id"] and "drain_pool" in incident["resolving_action"]
            confirmed = await sam.post(f"/api/v1/incidents/{proposal['incident_id']}/rca/feedback", json={"service": FLAKY})
            assert confirmed.status_code == 200, confirmed.text
            assert await _remembered(database_url, proposal["incident_id"]) == incident["resolving_action"]


async def test_an_invalid_policy_stops_the_start_naming_the_line(
    database_url: str, broker_settings: BrokerSettings, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  mode: approve\nrules:\n  - action: restart\n    cooldown: soon\n")
    with pytest.raises(PolicyError, match=r"policy.yaml: line 5: rules.0.cooldown"):
        async with ControlPlane(fast_settings(database_url, broker_settings),
                                remediation=RemediationSettings(policy=policy)):
            pass


async def _export(api: httpx.AsyncClient, spans: list[Any]) -> None:
    response = await api.post("/v1/traces", json=otlp_json(spans))
    assert response.status_code == 200, response.text


async def _agent_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM agents WHERE state = 'active'")
    finally:
        await conn.close()


async def _failed_attempts(database_url: str, pool: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM attempts WHERE pool_id = $1 AND status = 'failed'", pool)
    finally:
        await conn.close()


async def _incident(database_url: str, incident_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT i.resolved_by_remediation::text AS resolved_by_remediation, r.resolving_action "
            "FROM incidents i JOIN rca_results r ON r.incident_id = i.id WHERE i.id = $1::uuid", incident_id)
        return dict(row)
    finally:
        await conn.close()


async def _remembered(database_url: str, incident_id: str) -> str:
    """The remediation the similar-incidents memory keeps for an incident."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT remediation FROM rca_memory WHERE incident_id = $1", incident_id)
    finally:
        await conn.close()
