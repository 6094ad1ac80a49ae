"""Attack: poison messages on the broker. Bodies nested too deep to parse (``[`` x 5000) once raised
RecursionError in the dead-letter consumer, whose unacked deliveries then filled its prefetch and
wedged it. Every consumer now records such a message with the reason and keeps consuming."""

from __future__ import annotations

import aio_pika
import asyncpg
import httpx

from agents.sdk import Agent
from agents.sdk.settings import BrokerSettings
from tests.control_plane.test_end_to_end import echo
from tests.support.system import StartAgent, wait_for

POISON = b"[" * 5000


async def _publish(amqp_url: str, exchange: str, routing_key: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        for body in bodies:
            await target.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                 routing_key=routing_key)


async def _dead_letters(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT reason, body FROM dead_letters ORDER BY id")
    finally:
        await conn.close()


async def _task_succeeds(admin: httpx.AsyncClient) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "echo", "input": {"text": "after"},
                                                       "requires": ["python"]})).json()

    async def succeeded() -> bool:
        return (await admin.get(f"/api/v1/tasks/{created['id']}")).json()["status"] == "succeeded"

    await wait_for(succeeded, what="a task after the poison to succeed")


async def test_deep_nesting_on_a_pool_queue_is_dead_lettered_and_consumers_go_on(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings, database_url: str
) -> None:
    agent = Agent("echo", skills=["python"], slots=2, handlers=[echo])
    await start_agent(agent)
    topology = broker_settings.topology()
    await _publish(broker_settings.amqp_url, topology.tasks, agent.pool_id, [POISON] * 32)

    async def all_recorded() -> list[asyncpg.Record]:
        rows = await _dead_letters(database_url)
        return rows if len([r for r in rows if bytes(r["body"]) == POISON]) == 32 else []

    rows = await wait_for(all_recorded, what="32 poison messages in dead_letters")
    assert all(r["reason"] for r in rows)
    # the dead-letter consumer is still consuming: a later dead letter is recorded too
    await _publish(broker_settings.amqp_url, topology.dead, "", [b'{"later": true}'])
    await wait_for(lambda: _has_body(database_url, b'{"later": true}'), what="a later dead letter")
    await _task_succeeds(admin)


async def test_deep_nesting_on_the_events_exchange_is_set_aside_and_events_go_on(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings, database_url: str
) -> None:
    await start_agent(Agent("echo", skills=["python"], slots=2, handlers=[echo]))
    topology = broker_settings.topology()
    await _publish(broker_settings.amqp_url, topology.events, "task.x.log", [POISON] * 32)
    await wait_for(lambda: _count_body(database_url, POISON, 32), what="32 poison events set aside")
    await _task_succeeds(admin)


async def _has_body(database_url: str, body: bytes) -> bool:
    return await _count_body(database_url, body, 1)


async def _count_body(database_url: str, body: bytes, count: int) -> bool:
    return len([r for r in await _dead_letters(database_url) if bytes(r["body"]) == body]) >= count
