"""The control plane SIGKILLed mid-run, twice: the run completes exactly once, no step runs twice
and none is lost.

`devart serve` is a child process; the agent (in the test's process, registered over HTTP as agents
are) keeps working while the control plane is dead, so steps end while nobody listens: their events
wait in the broker, and the restarted engine must take them up and schedule what became ready.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import BaseModel

from agents.sdk import Agent, AgentRuntime, AgentRuntimeSettings, BrokerSettings, TaskContext, task_handler
from tests.support.serve import ServeProcess
from tests.support.system import client, make_token, wait_for

pytestmark = pytest.mark.slow
FAN = 6
RAN: list[tuple[str, str]] = []
"""(step, task id) of every execution the agent began, in order."""
DONE: list[str] = []
"""The steps whose execution ended, in order."""


class _Step(BaseModel):
    step: str
    seconds: float


@task_handler("wf-step", input=_Step)
async def _work(ctx: TaskContext, data: _Step) -> dict[str, str]:
    RAN.append((data.step, str(ctx.task_id)))
    await asyncio.sleep(data.seconds)
    DONE.append(data.step)
    return {"step": data.step}


def _step(name: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"type": "wf-step", "requires": ["wf"], "input": {"step": name, "seconds": seconds}, **extra}


DEFINITION = {
    "name": "crash-fan",
    "steps": {
        "build": _step("build", 2.0),
        **{f"part{i}": _step(f"part{i}", 2.0 + 0.2 * i, needs=["build"]) for i in range(FAN)},
        "join": _step("join", 0.5, needs=[f"part{i}" for i in range(FAN)]),
    },
    "finally": {"notify": _step("notify", 0.1)},
}


async def _get(api: httpx.AsyncClient, path: str) -> Any:
    try:
        response = await api.get(path)
    except httpx.HTTPError:
        return None  # the control plane is restarting
    return response.json() if response.status_code == 200 else None


async def _agent_has(steps: set[str], *, done: bool) -> None:
    async def seen() -> bool:
        return steps <= (set(DONE) if done else {step for step, _ in RAN})

    await wait_for(seen, timeout_s=60, what=f"the agent to have {'finished' if done else 'begun'} {sorted(steps)}")


async def test_a_run_survives_two_sigkills_of_the_control_plane_and_completes_exactly_once(
    database_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool
) -> None:
    RAN.clear()
    DONE.clear()
    # leases and heartbeats outlast the downtime: what is tested is the engine, not the reaper
    plane = ServeProcess(database_url, broker_settings, DEVART_LEASE_S="300", DEVART_HEARTBEAT_TTL_S="120",
                         DEVART_OUTBOX_SWEEP_S="0.2")
    try:
        await plane.start()
        agent = Agent("wf", skills=["wf"], handlers=[_work], slots=FAN + 2)
        settings = AgentRuntimeSettings(broker=broker_settings, heartbeat_interval_s=0.5, api_url=plane.url,
                                        token=await make_token(database_url, "agent"))
        async with AgentRuntime(agent, settings), \
                client(plane.url, await make_token(database_url, "supervisor", "sam")) as sam:
            await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents"), timeout_s=60, what="the agent")
            applied = await sam.post("/api/v1/workflows", json=DEFINITION)
            assert applied.status_code in (200, 201), applied.text
            started = await sam.post("/api/v1/workflows/crash-fan/runs", json={"inputs": {}})
            assert started.status_code == 201, started.text
            run_id = started.json()["id"]

            await _agent_has({"build"}, done=False)
            await plane.kill()  # build ends while nobody listens; its fan-out must still start
            await _agent_has({"build"}, done=True)
            await plane.start()

            parts = {f"part{i}" for i in range(FAN)}
            await _agent_has(parts, done=False)
            await plane.kill()  # the parts end one by one while the control plane is down
            await _agent_has(parts, done=True)
            await plane.start()

            async def finished() -> dict[str, Any] | None:
                run = await _get(sam, f"/api/v1/runs/{run_id}")
                return run if run is not None and run["state"] in ("succeeded", "failed", "cancelled") else None

            run = await wait_for(finished, timeout_s=120, what="the run to finish")

        assert run["state"] == "succeeded", run
        jobs = {j["job"]: j for j in run["steps"]}
        expected = {"build", *(f"part{i}" for i in range(FAN)), "join", "notify"}
        assert set(jobs) == expected and all(j["state"] == "succeeded" for j in jobs.values()), jobs
        # every step ran exactly once on the agent, as one task with one attempt
        assert Counter(step for step, _ in RAN) == Counter(expected), RAN
        assert {step: task for step, task in RAN} == {name: j["task_id"] for name, j in jobs.items()}
        assert all(j["attempts"] == 1 for j in jobs.values()), jobs
        tasks = await db.fetch("SELECT id, status, attempt FROM tasks")
        assert len(tasks) == len(expected) and {(t["status"], t["attempt"]) for t in tasks} == {("succeeded", 1)}
        # the history is append-only: the run ended once, each job started and succeeded once
        transitions = await db.fetch("SELECT job, to_state FROM run_transitions WHERE run_id = $1 ORDER BY id", run_id)
        assert [t["to_state"] for t in transitions if t["job"] is None] == ["queued", "running", "succeeded"]
        per_job = Counter((t["job"], t["to_state"]) for t in transitions if t["job"] is not None)
        for name in expected:
            assert per_job[(name, "running")] == 1 and per_job[(name, "succeeded")] == 1, (name, per_job)
        # the join started only after the last part ended
        ends = {j["job"]: j["finished_at"] for j in run["steps"]}
        starts = {j["job"]: j["started_at"] for j in run["steps"]}
        assert starts["join"] >= max(ends[f"part{i}"] for i in range(FAN))
    finally:
        plane.stop()
