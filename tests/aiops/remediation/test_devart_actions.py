"""devart's own task actions end to end, with no cluster: `requeue_dead`, `retry_task` and `cancel_stuck`
proposed over the API, carried out by the pipeline on real tasks that a real agent ran on the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
from pydantic import BaseModel

from agents.sdk import Agent, NonRetryableError, TaskContext, task_handler
from tests.aiops.remediation.conftest import BASE_POLICY, drive, propose
from tests.support.system import StartAgent, client, make_token, register_in_database, serve_api, wait_for

TERMINAL = ("successful", "failed", "inconclusive", "refused", "expired", "error", "suggested")
POLICY = BASE_POLICY.replace("mode: approve", "mode: auto")


class _Job(BaseModel):
    n: int = 0


class _Switch:
    """The broken dependency the tasks need: down until the test mends it."""

    mended = False
    release = asyncio.Event()


@task_handler("fragile", input=_Job)
async def _fragile(ctx: TaskContext, data: _Job) -> dict[str, int]:
    if not _Switch.mended:
        raise RuntimeError(f"job {data.n}: the database is down")  # retryable: dead after its last attempt
    return {"n": data.n}


@task_handler("strict", input=_Job)
async def _strict(ctx: TaskContext, data: _Job) -> dict[str, int]:
    if not _Switch.mended:
        raise NonRetryableError(f"job {data.n}: bad configuration")
    return {"n": data.n}


@task_handler("hang", input=_Job)
async def _hang(ctx: TaskContext, data: _Job) -> None:
    await _Switch.release.wait()


async def _status(api: Any, task_id: str, *statuses: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        body = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        return body if body["status"] in statuses else None

    return await wait_for(reached, timeout_s=30, what=f"task {task_id} {statuses}")


async def _submit(api: Any, type_: str, n: int, **extra: Any) -> str:
    response = await api.post("/api/v1/tasks", json={"type": type_, "requires": ["ops"], "input": {"n": n}, **extra})
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]



async def test_requeue_dead_retry_task_and_cancel_stuck_act_on_real_tasks(
    plane: Callable[..., Any], database_url: str, start_agent: StartAgent
) -> None:
    _Switch.mended, _Switch.release = False, asyncio.Event()
    async with plane(POLICY) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        agent = Agent("ops", skills=["ops"], handlers=[_fragile, _strict, _hang], slots=8)
        runtime = await start_agent(agent, credentials=await register_in_database(cp, database_url, agent.agent_id, agent.pool_id))
        pool = runtime.agent.pool_id

        nothing = await drive(cp, sam, (await propose(sam, "requeue_dead", "fragile", namespace=""))["id"], *TERMINAL)
        assert nothing["state"] == "refused" and nothing["state_reason"] == "no dead tasks of type fragile"

        dead = [await _submit(sam, "fragile", n, max_attempts=1) for n in range(3)]
        for task in dead:
            assert (await _status(sam, task, "dead", "failed", "succeeded"))["status"] == "dead"
        failed = await _submit(sam, "strict", 9)
        assert (await _status(sam, failed, "dead", "failed", "succeeded"))["status"] == "failed"
        _Switch.mended = True

        requeue = await propose(sam, "requeue_dead", "fragile", input={"match": "type", "limit": 2}, namespace="")
        done = await drive(cp, sam, requeue["id"], *TERMINAL)
        assert done["state"] == "successful", done
        assert done["preflight"] == {"dead": 2}
        assert [c["to"] for c in done["dry_run"]["changes"]] == ["queued", "queued"]
        requeued = done["apply_result"]["tasks"]
        assert len(requeued) == 2 and set(requeued) < set(dead)  # the limit holds: the oldest two
        for task in requeued:
            assert (await _status(sam, task, "succeeded", "failed", "dead"))["status"] == "succeeded"
        [left] = set(dead) - set(requeued)
        assert (await sam.get(f"/api/v1/tasks/{left}")).json()["status"] == "dead"
        by_pool = await drive(cp, sam, (await propose(sam, "requeue_dead", pool, input={"match": "pool"}, namespace=""))["id"], *TERMINAL)
        assert by_pool["state"] == "successful" and by_pool["apply_result"]["tasks"] == [left]
        assert (await _status(sam, left, "succeeded", "failed", "dead"))["status"] == "succeeded"

        running = await drive(cp, sam, (await propose(sam, "retry_task", requeued[0], namespace=""))["id"], *TERMINAL)
        assert running["state"] == "refused" and "only finished unsuccessful tasks" in running["state_reason"]
        retried = await drive(cp, sam, (await propose(sam, "retry_task", failed, namespace=""))["id"], *TERMINAL)
        assert retried["state"] == "successful", retried
        back = await _status(sam, failed, "succeeded", "failed", "dead")
        assert back["status"] == "succeeded" and back["attempt"] == 2

        fresh, old = await _submit(sam, "hang", 1), await _submit(sam, "hang", 2)
        for task in (fresh, old):
            await _status(sam, task, "running")
        young = await drive(cp, sam, (await propose(sam, "cancel_stuck", pool, input={"older_than_s": 60}, namespace=""))["id"],
                            *TERMINAL)
        assert young["state"] == "refused" and "running longer than 60s" in young["state_reason"]
        conn = await asyncpg.connect(database_url)
        try:  # the clock, not the code, is what the test moves: `old` started two hours ago
            await conn.execute("UPDATE tasks SET started_at = now() - interval '2 hours' WHERE id = $1", old)
        finally:
            await conn.close()
        cancel = await propose(sam, "cancel_stuck", pool, input={"older_than_s": 3600}, namespace="")
        stopped = await drive(cp, sam, cancel["id"], *TERMINAL)
        assert stopped["state"] == "successful", stopped
        assert stopped["apply_result"]["tasks"] == [old]
        cancelled = await _status(sam, old, "cancelled", "succeeded", "failed")
        assert cancelled["status"] == "cancelled" and f"remediation {cancel['id']}" in cancelled["status_reason"]
        assert (await sam.get(f"/api/v1/tasks/{fresh}")).json()["status"] == "running"  # not stuck: untouched
        _Switch.release.set()
        assert (await _status(sam, fresh, "succeeded", "failed"))["status"] == "succeeded"

        conn = await asyncpg.connect(database_url)
        try:
            audited = {(r["actor"], r["action"], r["target"]) for r in await conn.fetch(
                "SELECT actor, action, target FROM audit_log WHERE action IN ('task.retry', 'task.cancel')")}
        finally:
            await conn.close()
        assert {("remediation", "task.retry", t) for t in [*dead, failed]} <= audited
        assert ("remediation", "task.cancel", old) in audited
