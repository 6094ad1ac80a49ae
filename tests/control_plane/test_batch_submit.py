"""POST /api/v1/tasks/batch: many tasks in one request, all or none, idempotent like a single submit."""

from __future__ import annotations

import asyncpg
import httpx

from agents.noop import build_agent as noop_agent
from tests.support.system import StartAgent, client, make_token, wait_for

NOOP = {"type": "noop", "requires": ["noop"]}


async def test_a_batch_is_created_in_order_and_runs(
    admin: httpx.AsyncClient, start_agent: StartAgent, db: asyncpg.Pool
) -> None:
    await start_agent(noop_agent(skills=["noop"], slots=4))
    response = await admin.post("/api/v1/tasks/batch", json={"tasks": [
        {**NOOP, "timeout_s": 10 + i} for i in range(20)]})
    assert response.status_code == 201, response.text
    tasks = response.json()["tasks"]
    assert [t["timeout_s"] for t in tasks] == [10 + i for i in range(20)]
    assert {t["status"] for t in tasks} == {"queued"}
    ids = [t["id"] for t in tasks]

    async def all_succeeded() -> bool:
        return await db.fetchval(
            "SELECT count(*) = 20 FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'succeeded'", ids)

    await wait_for(all_succeeded, what="the 20 batched tasks to succeed")
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'task.create'") == 20


async def test_one_bad_task_refuses_the_whole_batch(admin: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    bad_type = await admin.post("/api/v1/tasks/batch", json={"tasks": [NOOP, {"type": "no spaces allowed"}]})
    assert bad_type.status_code == 422 and "tasks.1.type" in bad_type.json()["error"]["field"], bad_type.text
    too_long = await admin.post("/api/v1/tasks/batch", json={"tasks": [NOOP, {**NOOP, "timeout_s": 10**9}]})
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "body.tasks.1.timeout_s"
    empty = await admin.post("/api/v1/tasks/batch", json={"tasks": []})
    assert empty.status_code == 422 and "tasks" in empty.json()["error"]["field"]
    too_many = await admin.post("/api/v1/tasks/batch", json={"tasks": [NOOP] * 501})
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "body.tasks"
    assert "500" in too_many.json()["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_idempotency_key_replays_the_batch(admin: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    body = {"tasks": [NOOP, {**NOOP, "input": {"n": 2}}]}
    first = await admin.post("/api/v1/tasks/batch", json=body, headers={"Idempotency-Key": "matrix-42"})
    again = await admin.post("/api/v1/tasks/batch", json=body, headers={"Idempotency-Key": "matrix-42"})
    assert first.status_code == again.status_code == 201
    assert [t["id"] for t in again.json()["tasks"]] == [t["id"] for t in first.json()["tasks"]]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    changed = await admin.post("/api/v1/tasks/batch", json={"tasks": [NOOP, {**NOOP, "input": {"n": 3}}]},
                               headers={"Idempotency-Key": "matrix-42"})
    assert changed.status_code == 409 and changed.json()["error"]["field"] == "Idempotency-Key"
    assert await db.fetchval("SELECT count(*) FROM tasks") == 2


async def test_viewers_cannot_submit_batches(base_url: str, database_url: str, db: asyncpg.Pool) -> None:
    async with client(base_url, await make_token(database_url, "viewer")) as viewer:
        assert (await viewer.post("/api/v1/tasks/batch", json={"tasks": [NOOP]})).status_code == 403
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0
