"""Single-task submissions of concurrent requests share transactions, and one task's failure stays its own."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from control_plane import tasks as task_store
from control_plane.auth import Principal
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.support.system import client, make_token

NOOP = {"type": "noop", "requires": ["noop"]}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # one transaction at a time: whatever arrives while it is written waits for the next one
    return settings.model_copy(update={"submit_transactions_max": 1})


async def test_concurrent_submissions_share_transactions_with_every_row_of_each_task(
    base_url: str, database_url: str, db: asyncpg.Pool
) -> None:
    ci, admin = await make_token(database_url, "ci"), await make_token(database_url, "admin")
    async with client(base_url, ci) as ci_client, client(base_url, admin) as admin_client:

        async def submit(http: httpx.AsyncClient, i: int) -> httpx.Response:
            return await http.post("/api/v1/tasks", json={**NOOP, "timeout_s": 10 + i})

        answers = await asyncio.gather(*(submit(ci_client if i % 4 else admin_client, i) for i in range(32)))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201]
    assert [a.json()["timeout_s"] for a in answers] == [10 + i for i in range(32)]  # each answer is its own task
    ids = [uuid.UUID(a.json()["id"]) for a in answers]
    rows = await db.fetch("SELECT id, created_by, xmin::text AS tx FROM tasks WHERE id = ANY($1::uuid[])", ids)
    assert len(rows) == 32
    transactions = {row["tx"] for row in rows}
    assert len(transactions) < 32, "no two submissions shared a transaction"
    for tx in transactions:  # a transaction holds one caller's tasks
        assert len({row["created_by"] for row in rows if row["tx"] == tx}) == 1
    assert {row["created_by"] for row in rows} == {"ci-token", "admin-token"}
    # the same rows as a submission alone: history, audit (no pool is live, so no attempt or message yet)
    assert await db.fetchval(
        "SELECT count(*) FROM task_transitions WHERE task_id = ANY($1::uuid[]) AND to_status = 'pending'", ids) == 32
    assert await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'task.create' AND target = ANY($1::text[])",
        [str(i) for i in ids]) == 32


def _new(cp: ControlPlane, task_input: dict) -> task_store.NewTask:
    s = cp.settings
    return task_store.NewTask(
        type="noop", input=task_input, requires=["noop"], timeout_s=10.0, max_attempts=1,
        backoff={"base_s": 1.0, "factor": 2.0, "cap_s": 10.0, "jitter": 0.0}, sandbox={},
        start_timeout_s=s.default_start_timeout_s,
    )


async def test_a_task_that_fails_its_shared_transaction_fails_alone(cp: ControlPlane, db: asyncpg.Pool) -> None:
    who = Principal(uuid.uuid4(), "ci-caller", "ci")
    by = task_store.Submitter(created_by=who.name, traceparent=None, topology=cp.topology,
                              agent_ttl_s=cp.settings.heartbeat_ttl_s)
    # a NUL character is text Postgres cannot store (the API refuses it earlier; here it reaches the
    # database and aborts the transaction it is in); a reused key with another body is refused before any write
    first = await cp.submissions.submit(who, _new(cp, {"n": -1}), by, idempotency_key="key")
    inputs = [{"n": i} for i in range(12)]
    inputs[5] = {"n": "\u0000"}
    outcomes = await asyncio.gather(
        *(cp.submissions.submit(who, _new(cp, data), by, idempotency_key=None) for data in inputs),
        cp.submissions.submit(who, _new(cp, {"n": "other"}), by, idempotency_key="key"),
        cp.submissions.submit(who, _new(cp, {"n": -1}), by, idempotency_key="key"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[5], asyncpg.UntranslatableCharacterError), outcomes[5]
    conflict, replay = outcomes[-2:]
    assert type(conflict).__name__ == "Conflict" and "Idempotency-Key" in str(conflict.message), conflict
    assert replay == (first[0], True)
    created = [o for i, o in enumerate(outcomes[:-2]) if i != 5]
    assert all(isinstance(o, tuple) and o[1] is False for o in created), created
    # each good task exists once: the failed shared transaction left nothing behind
    rows = await db.fetch("SELECT (input ->> 'n')::int AS n FROM tasks WHERE created_by = 'ci-caller'")
    assert sorted(r["n"] for r in rows) == [-1, *(i for i in range(12) if i != 5)]
