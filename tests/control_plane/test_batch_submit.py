"""POST /api/v1/tasks/batch: many tasks in one request, all or none, idempotent like a single submit."""

from __future__ import annotations

import asyncio
import uuid

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


async def test_concurrent_batches_with_one_key_create_their_tasks_once(
    admin: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """Each of the racing requests that does not commit first is aborted by the key's unique index
    and written once more, as a replay of the winner's tasks."""
    body = {"tasks": [NOOP, {**NOOP, "timeout_s": 30}, {**NOOP, "timeout_s": 40}]}
    answers = await asyncio.gather(*(admin.post("/api/v1/tasks/batch", json=body, headers={"Idempotency-Key": "race"})
                                     for _ in range(6)))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    assert len({tuple(t["id"] for t in a.json()["tasks"]) for a in answers}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1
    assert await db.fetchval("SELECT count(*) FROM tasks") == 3
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'task.create'") == 3


async def test_viewers_cannot_submit_batches(base_url: str, database_url: str, db: asyncpg.Pool) -> None:
    async with client(base_url, await make_token(database_url, "viewer")) as viewer:
        assert (await viewer.post("/api/v1/tasks/batch", json={"tasks": [NOOP]})).status_code == 403
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_batch_that_several_pools_can_take_is_spread_as_its_tasks_one_by_one_would_be(
    admin: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    """Each task counts the queues with the batch's tasks placed before it (one statement sees one
    snapshot: without that, every task would go to the same pool)."""
    left = (await start_agent(noop_agent(skills=["noop", "left"], slots=2))).agent.pool_id
    right = (await start_agent(noop_agent(skills=["noop", "right"], slots=2))).agent.pool_id
    low, high = sorted([left, right])
    response = await admin.post("/api/v1/tasks/batch", json={"tasks": [
        {"type": "noop", "requires": ["left"]}, *[NOOP] * 6]})
    assert response.status_code == 201, response.text
    # left takes the first (the only pool that can); then free capacity beyond the queue first, the
    # shorter queue next, the pool id last
    assert [t["pool_id"] for t in response.json()["tasks"]] == [left, right, low, high, low, high, low]
    assert {t["status_reason"] for t in response.json()["tasks"]} == {f"dispatched to {low}", f"dispatched to {high}"}


async def test_a_batch_no_pool_can_take_waits_pending_with_the_reason(admin: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    response = await admin.post("/api/v1/tasks/batch", json={"tasks": [
        NOOP, {"type": "shell", "requires": ["shell", "linux"]}]})
    assert response.status_code == 201, response.text
    tasks = response.json()["tasks"]
    assert [(t["status"], t["status_reason"], t["attempt"]) for t in tasks] == [
        ("pending", "no live agent pool has skills ['noop'] and handles type 'noop'", 0),
        ("pending", "no live agent pool has skills ['linux', 'shell'] and handles type 'shell'", 0)]
    ids = [uuid.UUID(t["id"]) for t in tasks]
    history = await db.fetch("SELECT task_id, attempt, from_status, to_status, actor, reason FROM task_transitions "
                             "WHERE task_id = ANY($1::uuid[]) ORDER BY id", ids)
    assert [tuple(r.values())[1:] for r in history] == [(0, None, "pending", "admin-token", "created")] * 2
    assert await db.fetchval("SELECT count(*) FROM attempts") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_batch_queued_on_a_pool_has_every_row_of_each_task(
    admin: httpx.AsyncClient, start_agent: StartAgent, db: asyncpg.Pool
) -> None:
    runtime = await start_agent(noop_agent(skills=["noop"], slots=1))
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    response = await admin.post("/api/v1/tasks/batch", json={"tasks": [NOOP, {**NOOP, "timeout_s": 30}]},
                                headers={"traceparent": traceparent})
    assert response.status_code == 201, response.text
    tasks = response.json()["tasks"]
    pool = runtime.agent.pool_id
    assert [(t["status"], t["pool_id"], t["attempt"]) for t in tasks] == [("queued", pool, 1)] * 2
    assert {t["trace_id"] for t in tasks} == {traceparent.split("-")[1]}  # the tasks join the caller's trace
    ids = [uuid.UUID(t["id"]) for t in tasks]
    history = await db.fetch("SELECT task_id, attempt, from_status, to_status, actor, reason FROM task_transitions "
                             "WHERE task_id = ANY($1::uuid[]) AND to_status IN ('pending', 'queued')", ids)
    assert sorted((r["task_id"], r["attempt"], r["from_status"], r["to_status"], r["actor"], r["reason"])
                  for r in history) == sorted(
        [(i, 0, None, "pending", "admin-token", "created") for i in ids]
        + [(i, 1, "pending", "queued", "dispatcher", f"dispatched to {pool}") for i in ids])
    attempts = await db.fetch("SELECT task_id, attempt, pool_id FROM attempts WHERE task_id = ANY($1::uuid[])", ids)
    assert sorted(tuple(a.values()) for a in attempts) == sorted((i, 1, pool) for i in ids)
    audit = await db.fetch("SELECT actor, target, detail FROM audit_log WHERE action = 'task.create'")
    assert sorted((a["actor"], a["target"], a["detail"]) for a in audit) == sorted(
        ("admin-token", str(i), '{"type": "noop"}') for i in ids)
