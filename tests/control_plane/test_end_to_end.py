"""A task's whole path: REST -> outbox -> broker -> agent -> events -> Postgres."""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg
import httpx
from pydantic import BaseModel

from agents.noop import build_agent as noop_agent
from agents.sdk import Agent, NonRetryableError, RetryableError, TaskContext, task_handler
from tests.support.system import StartAgent, wait_for


class EchoInput(BaseModel):
    text: str
    lines: int = 3


@task_handler("echo", input=EchoInput)
async def echo(ctx: TaskContext, data: EchoInput) -> dict[str, str]:
    for i in range(data.lines):
        await ctx.log(f"line {i}: {data.text}")
    return {"echo": data.text}


async def _finished(api: httpx.AsyncClient, task_id: str, timeout_s: float = 20.0) -> dict:
    async def done() -> dict | None:
        task = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        return task if task["status"] in {"succeeded", "failed", "dead", "cancelled", "timed_out"} else None

    return await wait_for(done, timeout_s=timeout_s, what=f"task {task_id} to finish")


async def test_rest_to_agent_and_back(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    await start_agent(Agent("echo", skills=["python"], slots=2, handlers=[echo]))
    response = await admin.post("/api/v1/tasks", json={"type": "echo", "input": {"text": "hi"}, "requires": ["python"]})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "queued"

    task = await _finished(admin, created["id"])
    assert task["status"] == "succeeded"
    assert task["result"] == {"echo": "hi"}
    assert [t["to_status"] for t in task["transitions"]] == ["pending", "queued", "running", "succeeded"]
    assert [a["status"] for a in task["attempts"]] == ["succeeded"]

    logs = await wait_for(lambda: _logs(admin, created["id"], 3), what="three log lines")
    assert [line["line"] for line in logs] == [f"line {i}: hi" for i in range(3)]
    # pages of two: next_after continues where the page ended, and an exhausted log gives null
    url = f"/api/v1/tasks/{created['id']}/logs"
    first = (await admin.get(url, params={"limit": 2})).json()
    second = (await admin.get(url, params={"limit": 2, "after": first["next_after"]})).json()
    assert [line["line"] for line in first["lines"] + second["lines"]] == [f"line {i}: hi" for i in range(3)]
    assert (await admin.get(url, params={"after": second["next_after"]})).json() == {"lines": [], "next_after": None}
    for bad in ("1:2", "-1", "99999999999999999999"):
        refused = await admin.get(url, params={"after": bad})
        assert refused.status_code == 422 and "query.after" in refused.text, (bad, refused.text)


async def _logs(api: httpx.AsyncClient, task_id: str, n: int) -> list[dict] | None:
    lines = (await api.get(f"/api/v1/tasks/{task_id}/logs")).json()["lines"]
    return lines if len(lines) >= n else None


async def test_capabilities_route_to_covering_pool_only(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    python_only = await start_agent(noop_agent(skills=["python"]))
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["python", "docker"]})).json()
    assert created["status"] == "pending"
    assert "docker" in created["status_reason"] and "python" in created["status_reason"]

    docker = await start_agent(noop_agent(skills=["python", "docker"]))
    task = await _finished(admin, created["id"])
    assert task["status"] == "succeeded"
    assert task["agent_id"] == docker.agent.agent_id
    assert task["agent_id"] != python_only.agent.agent_id


async def test_most_specialised_pool_is_preferred(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    await start_agent(noop_agent(skills=["python", "docker", "gpu"], slots=4))
    specialised = await start_agent(noop_agent(skills=["python"], slots=4))
    await wait_for(lambda: _live_pools(admin, 2), what="two live pools")
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["python"]})).json()
    assert created["pool_id"] == specialised.agent.pool_id
    task = await _finished(admin, created["id"])
    assert task["agent_id"] == specialised.agent.agent_id


async def _live_pools(api: httpx.AsyncClient, n: int) -> bool:
    pools = (await api.get("/api/v1/pools")).json()
    return sum(p["live_agents"] > 0 for p in pools) >= n


class FlakyInput(BaseModel):
    fail_times: int
    non_retryable: bool = False


@task_handler("flaky", input=FlakyInput)
async def flaky(ctx: TaskContext, data: FlakyInput) -> dict[str, int]:
    if data.non_retryable:
        raise NonRetryableError("this can never work")
    if ctx.attempt <= data.fail_times:
        raise RetryableError(f"attempt {ctx.attempt} failed on purpose")
    return {"attempt": ctx.attempt}


async def test_retries_follow_the_backoff(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    await start_agent(Agent("flaky", skills=["python"], slots=2, handlers=[flaky]))
    backoff = {"base_s": 0.4, "factor": 2.0, "cap_s": 10, "jitter": 0}
    created = (await admin.post("/api/v1/tasks", json={
        "type": "flaky", "input": {"fail_times": 2}, "max_attempts": 3, "backoff": backoff})).json()
    task = await _finished(admin, created["id"])
    assert task["status"] == "succeeded", task
    assert task["result"] == {"attempt": 3}
    attempts = task["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "failed", "succeeded"]
    # Observed gap between an attempt's end and the next one's start follows base * factor^(n-1),
    # quantised onto the retry ladder (about 6%) plus delivery time.
    for earlier, later, expected in ((attempts[0], attempts[1], 0.4), (attempts[1], attempts[2], 0.8)):
        gap = (_ts(later["started_at"]) - _ts(earlier["finished_at"]))
        assert expected * 0.9 <= gap <= expected + 0.6, (expected, gap)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def test_exhausted_task_is_dead_and_retry_replays_it(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    await start_agent(Agent("flaky", skills=["python"], slots=2, handlers=[flaky]))
    backoff = {"base_s": 0.05, "factor": 1.0, "cap_s": 1, "jitter": 0}
    created = (await admin.post("/api/v1/tasks", json={
        "type": "flaky", "input": {"fail_times": 2}, "max_attempts": 2, "backoff": backoff})).json()
    task = await _finished(admin, created["id"])
    assert task["status"] == "dead"
    assert "attempts exhausted" in task["status_reason"]

    replay = await admin.post(f"/api/v1/tasks/{created['id']}/retry")
    assert replay.status_code == 200, replay.text
    task = await _finished(admin, created["id"])
    assert task["status"] == "succeeded"
    assert task["result"] == {"attempt": 3}


async def test_non_retryable_failure_is_final(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    await start_agent(Agent("flaky", skills=["python"], slots=1, handlers=[flaky]))
    created = (await admin.post("/api/v1/tasks", json={
        "type": "flaky", "input": {"fail_times": 0, "non_retryable": True}, "max_attempts": 5})).json()
    task = await _finished(admin, created["id"])
    assert task["status"] == "failed"
    assert len(task["attempts"]) == 1
    assert task["error"]["message"] == "this can never work"


async def test_idempotency_key(admin: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    body = {"type": "noop", "input": {}}
    first = await admin.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "k-1"})
    again = await admin.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    other = await admin.post("/api/v1/tasks", json={"type": "noop", "input": {"x": 1}}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert other.json()["error"]["field"] == "Idempotency-Key"
    concurrent = await asyncio.gather(*(
        admin.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "k-2"}) for _ in range(8)))
    assert len({r.json()["id"] for r in concurrent}) == 1
    listed = (await admin.get("/api/v1/tasks")).json()["items"]
    assert len(listed) == 2
    audited = await db.fetch("SELECT target FROM audit_log WHERE action = 'task.create'")
    assert sorted(r["target"] for r in audited) == sorted(t["id"] for t in listed)
