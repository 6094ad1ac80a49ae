"""Attack: an agent token given to one pool's agents claims another pool's queued work. Any agent
token could register an agent in any pool, and a registered agent's validly signed ``started``
event for a *queued* attempt of another pool made that attempt its own (a ``succeeded`` finished it
outright), so whoever held agent credentials for some pool could take and fake the results of every
pool's tasks. Now a token names the pools it registers in (403 naming the pool elsewhere), each
registration is bound to its pool, and the events consumer sets aside what an agent says about
another pool or another pool's attempts."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from agents.sdk import Agent, BrokerSettings, TaskStarted, TaskSucceeded
from agents.sdk.messages import AgentHello, event_routing_key
from agents.sdk.trust import HEADER_SIGNATURE, REGISTER_PATH, AgentCredentials, register
from control_plane import identity
from control_plane.agent_keys import register_agent
from control_plane.auth import Principal, create_token
from control_plane.errors import Forbidden
from tests.security.test_events_forged import _publish, _rows, _task, hold, release
from tests.support.system import StartAgent, client, wait_for

INTRUDER_POOL = "pool-intruder"


async def _token(admin: httpx.AsyncClient, name: str, pools: list[str]) -> str:
    response = await admin.post("/api/v1/tokens", json={"name": name, "role": "agent", "pools": pools})
    assert response.status_code == 201, response.text
    assert response.json()["pools"] == pools
    return response.json()["token"]


async def test_an_agent_of_one_pool_cannot_register_in_claim_or_finish_another_pools_attempts(
    admin: httpx.AsyncClient, base_url: str, start_agent: StartAgent, broker_settings: BrokerSettings,
    database_url: str,
) -> None:
    release.clear()
    holder = Agent("holder", skills=["python"], slots=1, handlers=[hold])
    pool = holder.pool_id
    # the real agent registers over HTTP with a token scoped to its pool
    credentials = await register(base_url, await _token(admin, "holders", [pool]), holder.agent_id, pool)
    runtime = await start_agent(holder, credentials=credentials)
    busy = (await admin.post("/api/v1/tasks", json={"type": "hold", "requires": ["python"]})).json()
    await wait_for(lambda: _status(admin, busy["id"], "running"), what="the first task to run on the real agent")
    to_start, to_finish = [(await admin.post("/api/v1/tasks", json={"type": "hold", "requires": ["python"]})).json()
                           for _ in range(2)]
    assert (await _task(admin, to_start["id"]))["status"] == "queued"

    # the intruder holds a token for its own pool only: registering in the holder's pool is refused
    intruder_token = await _token(admin, "intruders", [INTRUDER_POOL])
    async with client(base_url, intruder_token) as intruder:
        refused = await intruder.post(REGISTER_PATH, json={"agent_id": "intruder-in-a", "pool_id": pool})
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["field"] == "body.pool_id" and pool in error["message"] and "intruders" in error["message"], error
    assert not await _rows(database_url, "SELECT 1 FROM agent_keys WHERE agent_id = 'intruder-in-a'")

    # so it registers in its own pool, for real, and signs with its genuine key
    mine = await register(base_url, intruder_token, "intruder", INTRUDER_POOL)
    now = datetime.now(UTC)
    forged = [
        AgentHello(agent_id="intruder", seq=1, name="intruder", pool_id=pool, skills=["python"], types=["hold"],
                   slots=8),
        TaskStarted(agent_id="intruder", seq=1, task_id=to_start["id"], attempt=1, pool_id=pool),
        TaskStarted(agent_id="intruder", seq=2, task_id=to_start["id"], attempt=1, pool_id=INTRUDER_POOL),
        TaskSucceeded(agent_id="intruder", seq=1, task_id=to_finish["id"], attempt=1, started_at=now,
                      result={"by": "the intruder"}),
    ]
    for event in forged:
        await _signed_publish(broker_settings, mine, event)
    published_at = (await _rows(database_url, "SELECT now() AS at"))[0]["at"]

    async def refusals() -> list[str]:
        rows = await _rows(database_url, "SELECT reason FROM dead_letters WHERE reason LIKE '%intruder%'")
        return [r["reason"] for r in rows] if len(rows) >= len(forged) else []

    reasons = await wait_for(refusals, what="the intruder's events to be set aside")
    assert sorted(reasons) == sorted([
        f"agent event: hello event of agent 'intruder', registered in pool '{INTRUDER_POOL}', announcing pool '{pool}'",
        f"agent event: started event of agent 'intruder', registered in pool '{INTRUDER_POOL}', "
        f"announcing pool '{pool}'",
        f"agent event: started event for task {to_start['id']} attempt 1, queued for pool '{pool}', "
        f"from agent 'intruder' of pool '{INTRUDER_POOL}'",
        f"agent event: succeeded event for task {to_finish['id']} attempt 1, queued for pool '{pool}', "
        f"from agent 'intruder' of pool '{INTRUDER_POOL}'",
    ]), reasons
    # the events queue got past the forgeries (a later heartbeat of the real agent was applied)
    await wait_for(lambda: _heartbeat_after(database_url, runtime.agent.agent_id, published_at),
                   what="a later heartbeat of the real agent")
    for task in (to_start, to_finish):
        now_task = await _task(admin, task["id"])
        assert (now_task["status"], now_task["agent_id"], now_task["result"]) == ("queued", None, None), now_task
    assert not await _rows(database_url, "SELECT 1 FROM agents WHERE id = 'intruder'")

    release.set()
    for task in (busy, to_start, to_finish):
        done = await wait_for(lambda t=task: _status(admin, t["id"], "succeeded"), what="the real agent's results")
        assert (done["agent_id"], done["result"]) == (runtime.agent.agent_id, {"by": "the real agent"})


async def test_an_unscoped_agent_token_registers_in_any_pool_only_outside_production(
    database_url: str,
) -> None:
    """Tokens made before pools existed (or without ``--pool``) name no pools: development lets them
    register anywhere, production (``unscoped_tokens=False``, what the API passes there) refuses."""
    conn = await asyncpg.connect(database_url)
    try:
        token_id, _ = await create_token(conn, name="unscoped", role="agent", created_by="test")
        principal = Principal(token_id, "unscoped", "agent")
        with pytest.raises(Forbidden, match="not scoped to pools.*--pool pool-x"):
            async with conn.transaction():
                await identity.assume(conn, principal)
                await register_agent(conn, principal, "agent-prod", "pool-x", unscoped_tokens=False)
        async with conn.transaction():
            await identity.assume(conn, principal)
            await register_agent(conn, principal, "agent-dev", "pool-x")
        rows = await conn.fetch("SELECT agent_id, pool_id FROM agent_keys WHERE token_id = $1", token_id)
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("agent-dev", "pool-x")]


async def test_only_agent_tokens_have_pools(admin: httpx.AsyncClient) -> None:
    for body, message in (({"name": "ci-scoped", "role": "ci", "pools": ["pool-x"]}, "only an agent token"),
                          ({"name": "no-pools", "role": "agent", "pools": []}, "at least one pool"),
                          ({"name": "bad-pool", "role": "agent", "pools": ["../x"]}, "not a pool id")):
        response = await admin.post("/api/v1/tokens", json=body)
        assert response.status_code == 422, response.text
        assert message in response.text and "pools" in response.text


async def _signed_publish(broker_settings: BrokerSettings, credentials: AgentCredentials, event: object) -> None:
    body = event.model_dump_json().encode()  # type: ignore[attr-defined]
    await _publish(broker_settings.amqp_url, broker_settings.topology().events, event_routing_key(event), body,
                   {HEADER_SIGNATURE: credentials.sign_event(body)})


async def _status(admin: httpx.AsyncClient, task_id: str, status: str) -> dict | None:
    task = await _task(admin, task_id)
    return task if task["status"] == status else None


async def _heartbeat_after(database_url: str, agent_id: str, moment: datetime) -> bool:
    rows = await _rows(database_url, "SELECT 1 FROM agents WHERE id = $1 AND last_heartbeat > $2", agent_id, moment)
    return bool(rows)


async def test_a_refused_registration_is_audited_while_the_registration_itself_rolls_back(
    admin: httpx.AsyncClient, base_url: str, database_url: str,
) -> None:
    """A refusal (403 for a pool the token does not name, 409 for an agent id another token holds)
    leaves an ``agent.register_refused`` audit row saying who, which pool and why, and nothing else."""
    token = await _token(admin, "refused-agents", [INTRUDER_POOL])
    holder = await _token(admin, "id-holders", ["pool-held"])
    await register(base_url, holder, "taken-id", "pool-held")
    async with client(base_url, token) as agent:
        other_pool = await agent.post(REGISTER_PATH, json={"agent_id": "agent-elsewhere", "pool_id": "pool-other"})
        taken = await agent.post(REGISTER_PATH, json={"agent_id": "taken-id", "pool_id": INTRUDER_POOL})
    assert (other_pool.status_code, taken.status_code) == (403, 409), (other_pool.text, taken.text)

    rows = await _rows(database_url, "SELECT actor, target, detail->>'pool_id' AS pool, detail->>'status' AS status, "
                                     "detail->>'reason' AS reason, remote FROM audit_log "
                                     "WHERE action = 'agent.register_refused' ORDER BY id")
    assert [(r["actor"], r["target"], r["pool"], r["status"], r["remote"]) for r in rows] == [
        ("refused-agents", "agent-elsewhere", "pool-other", "403", "127.0.0.1"),
        ("refused-agents", "taken-id", INTRUDER_POOL, "409", "127.0.0.1"),
    ]
    assert rows[0]["reason"] == other_pool.json()["error"]["message"]
    assert "may not register agents in pool 'pool-other'" in rows[0]["reason"], rows[0]["reason"]
    assert rows[1]["reason"] == "agent id 'taken-id' is registered by another token"
    # the refused registrations themselves left nothing
    keys = await _rows(database_url, "SELECT agent_id, pool_id FROM agent_keys WHERE agent_id IN "
                                     "('agent-elsewhere', 'taken-id')")
    assert [tuple(k) for k in keys] == [("taken-id", "pool-held")]
    assert not await _rows(database_url, "SELECT 1 FROM audit_log WHERE action = 'agent.register' "
                                         "AND target = 'agent-elsewhere'")
