"""Attack: publish on the real broker what only the control plane or an agent should. A forged
``succeeded`` event for another agent's running attempt, unsigned or signed with another
registered agent's key, once finished the task; a task message published straight to a pool queue
once ran. Now the control plane accepts an event only when signed by the agent it names, and only
from the agent running the attempt; agents run only task messages the control plane signed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aio_pika
import asyncpg
import httpx
from pydantic import BaseModel

from agents.sdk import Agent, BrokerSettings, TaskContext, TaskMessage, TaskSucceeded, task_handler
from agents.sdk.messages import event_routing_key
from agents.sdk.trust import HEADER_SIGNATURE, MessageSigner
from control_plane.service import ControlPlane
from tests.support.system import StartAgent, register_in_database, wait_for

release = asyncio.Event()
ran: list[str] = []


class Nothing(BaseModel):
    pass


@task_handler("hold", input=Nothing)
async def hold(ctx: TaskContext, data: Nothing) -> dict[str, str]:
    ran.append(str(ctx.task_id))
    await release.wait()
    return {"by": "the real agent"}


async def _publish(amqp_url: str, exchange: str, routing_key: str, body: bytes, headers: dict | None = None) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        await target.publish(aio_pika.Message(body, headers=headers or {},
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=routing_key)


async def _task(admin: httpx.AsyncClient, task_id: str) -> dict:
    return (await admin.get(f"/api/v1/tasks/{task_id}")).json()


async def _rows(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _dead_letter_reasons(database_url: str) -> list[str]:
    return [r["reason"] for r in await _rows(database_url, "SELECT reason FROM dead_letters ORDER BY id")]


async def test_forged_succeeded_events_are_refused_and_the_task_is_unchanged(
    admin: httpx.AsyncClient, start_agent: StartAgent, cp: ControlPlane, broker_settings: BrokerSettings,
    database_url: str,
) -> None:
    release.clear()
    runtime = await start_agent(Agent("holder", skills=["python"], slots=1, handlers=[hold]))
    created = (await admin.post("/api/v1/tasks", json={"type": "hold", "requires": ["python"]})).json()

    async def running() -> dict | None:
        task = await _task(admin, created["id"])
        return task if task["status"] == "running" else None

    before = await wait_for(running, what="the task to run on the real agent")
    assert before["agent_id"] == runtime.agent.agent_id
    forged = TaskSucceeded(agent_id=runtime.agent.agent_id, seq=99, task_id=created["id"], attempt=1,
                           result={"by": "the attacker"}, ts=datetime.now(UTC))
    body = forged.model_dump_json().encode()
    events = broker_settings.topology().events
    # 1. a plain broker client: no key at all, or a made-up signature
    await _publish(broker_settings.amqp_url, events, event_routing_key(forged), body)
    await _publish(broker_settings.amqp_url, events, event_routing_key(forged), body, {HEADER_SIGNATURE: "00" * 32})
    # 2. another registered agent, signing with its own valid key: as itself, and as the holder
    other = await register_in_database(cp, database_url, "intruder-agent", runtime.agent.pool_id)
    as_itself = forged.model_copy(update={"agent_id": "intruder-agent"}).model_dump_json().encode()
    await _publish(broker_settings.amqp_url, events, event_routing_key(forged), as_itself,
                   {HEADER_SIGNATURE: other.sign_event(as_itself)})
    await _publish(broker_settings.amqp_url, events, event_routing_key(forged), body,
                   {HEADER_SIGNATURE: other.sign_event(body)})
    async with cp.loops_pool.acquire() as conn:
        published_at = await conn.fetchval("SELECT now()")

    async def all_refused() -> list[str]:
        reasons = await _dead_letter_reasons(database_url)
        return reasons if len([r for r in reasons if "agent event" in r]) >= 3 else []

    reasons = await wait_for(all_refused, what="the forged events to be set aside")
    assert any("unsigned" in r for r in reasons) and any("forged" in r for r in reasons), reasons
    # the intruder's own-named event was authentic but it does not run the attempt: no effect; a
    # later heartbeat of the real agent shows the events queue got past the forgeries
    await wait_for(lambda: _heartbeat_after(cp, runtime.agent.agent_id, published_at), what="a later heartbeat")
    task = await _task(admin, created["id"])
    assert (task["status"], task["result"], task["agent_id"]) == ("running", None, runtime.agent.agent_id)

    release.set()

    async def succeeded() -> dict | None:
        task = await _task(admin, created["id"])
        return task if task["status"] == "succeeded" else None

    done = await wait_for(succeeded, what="the real agent to finish")
    assert done["result"] == {"by": "the real agent"}


async def _heartbeat_after(cp: ControlPlane, agent_id: str, moment: datetime) -> bool:
    async with cp.loops_pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT last_heartbeat > $2 FROM agents WHERE id = $1", agent_id, moment))


async def test_a_task_message_not_from_the_control_plane_is_dead_lettered_unrun(
    start_agent: StartAgent, broker_settings: BrokerSettings, database_url: str
) -> None:
    ran.clear()
    runtime = await start_agent(Agent("holder", skills=["python"], slots=1, handlers=[hold]))
    topology = broker_settings.topology()
    unsigned = TaskMessage(task_id="00000000-0000-0000-0000-00000000000a", attempt=1, type="hold", timeout_s=5,
                           pool_id=runtime.agent.pool_id).model_dump_json().encode()
    other_key = MessageSigner(MessageSigner.generate())  # a key that is not the control plane's
    forged = unsigned.replace(b"000a", b"000b")
    await _publish(broker_settings.amqp_url, topology.tasks, runtime.agent.pool_id, unsigned)
    await _publish(broker_settings.amqp_url, topology.tasks, runtime.agent.pool_id, forged,
                   {HEADER_SIGNATURE: other_key.sign(forged)})

    async def both_dead() -> dict[bytes, str]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT body, reason FROM dead_letters")
        finally:
            await conn.close()
        found = {bytes(r["body"]): r["reason"] for r in rows}
        return found if unsigned in found and forged in found else {}

    reasons = await wait_for(both_dead, what="both task messages in dead_letters")
    assert reasons[unsigned].startswith("task message unsigned"), reasons
    assert reasons[forged].startswith("task message forged"), reasons
    assert ran == []


async def test_a_signed_task_message_replayed_into_another_pools_queue_is_dead_lettered_unrun(
    start_agent: StartAgent, broker_settings: BrokerSettings, database_url: str, cp: ControlPlane
) -> None:
    """A broker client that captured a task message the control plane signed for one pool
    publishes it to another pool's queue: the signature is genuine, the destination is not."""
    ran.clear()
    runtime = await start_agent(Agent("holder", skills=["python"], slots=1, handlers=[hold]))
    body = TaskMessage(task_id="00000000-0000-0000-0000-00000000000c", attempt=1, type="hold", timeout_s=5,
                       pool_id="pool-of-someone-else").model_dump_json().encode()
    await _publish(broker_settings.amqp_url, broker_settings.topology().tasks, runtime.agent.pool_id, body,
                   {HEADER_SIGNATURE: cp.signer.sign(body)})

    async def dead() -> str | None:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval("SELECT reason FROM dead_letters WHERE body = $1", body)
        finally:
            await conn.close()

    reason = await wait_for(dead, what="the replayed task message in dead_letters")
    assert reason == f"task message for pool 'pool-of-someone-else' delivered to pool {runtime.agent.pool_id!r}"
    assert ran == []
