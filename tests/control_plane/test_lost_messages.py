"""A queued task's message is taken for lost only where nothing else can hold it.

The control plane under test runs its own reaper with an hour's ``requeue_after_s``, so only the
reaper each test builds looks for lost messages. That reaper reads a queue of the test's as the
events queue: a message there stands for an agent's batch of results not yet applied.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from agents.sdk import Agent, BrokerSettings
from agents.sdk.connection import connect_robust
from agents.sdk.topology import Topology
from control_plane.db import SERVICE_ROLE, create_pool
from control_plane.reaper import Reaper
from control_plane.settings import Settings
from tests.agents.sdk.sample_agent import HANDLERS
from tests.support.system import StartAgent, fast_settings, wait_for

REQUEUE_AFTER_S = 0.3


@pytest.fixture
def settings(database_url: str, broker_settings: BrokerSettings) -> Settings:
    return fast_settings(database_url, broker_settings, requeue_after_s=3600)


@dataclasses.dataclass(frozen=True)
class _EventsQueueOfTheTest(Topology):
    events_queue_name: str = ""

    @property
    def events_queue(self) -> str:
        return self.events_queue_name


@pytest.fixture
async def connection(broker_settings: BrokerSettings) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect_robust(broker_settings.amqp_url)
    yield connection
    await connection.close()


@pytest.fixture
async def loops_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool like the one the control plane's loops use."""
    pool = await create_pool(database_url, role=SERVICE_ROLE, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def _stale(db: asyncpg.Pool, ids: list[str]) -> bool:
    return await db.fetchval(
        "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'queued' "
        "AND updated_at < now() - make_interval(secs => $2)", ids, REQUEUE_AFTER_S) == len(ids)


async def test_results_waiting_in_the_events_queue_are_not_lost_messages(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings,
    connection: AbstractRobustConnection, db: asyncpg.Pool, loops_pool: asyncpg.Pool,
) -> None:
    runtime = await start_agent(Agent("sample", skills=["test"], slots=1, handlers=HANDLERS))
    agent_id, pool_id = runtime.agent.agent_id, runtime.agent.pool_id
    await admin.post(f"/api/v1/agents/{agent_id}/pause")

    async def paused() -> bool:
        return (await admin.get(f"/api/v1/agents/{agent_id}")).json()["state"] == "paused"

    await wait_for(paused, what="agent paused")
    channel = await connection.channel()
    pool_queue = await channel.declare_queue(broker_settings.topology().pool_queue(pool_id), passive=True)
    # What an agent does with a short task: it takes the message and publishes the result. Here a
    # consumer of the test's takes both messages, and one message waits in the "events queue" for
    # both results.
    taken: list[bytes] = []

    async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        taken.append(message.body)
        await message.ack()

    tag = await pool_queue.consume(take)
    ids = [(await admin.post("/api/v1/tasks", json={"type": "echo", "requires": ["test"], "input": {"lines": 1}}))
           .json()["id"] for _ in range(2)]

    async def both_taken() -> bool:
        return len(taken) == 2

    await wait_for(both_taken, what="the test's consumer to take both task messages")
    await pool_queue.cancel(tag)
    events = await channel.declare_queue(f"test-events-{uuid.uuid4().hex}", auto_delete=True)
    await channel.default_exchange.publish(aio_pika.Message(b"the results of both tasks"), routing_key=events.name)
    topology = _EventsQueueOfTheTest(**dataclasses.asdict(broker_settings.topology()), events_queue_name=events.name)
    reaper = Reaper(loops_pool, connection, topology, interval_s=3600, agent_ttl_s=60, deadline_grace_s=30, requeue_after_s=REQUEUE_AFTER_S)
    await wait_for(lambda: _stale(db, ids), what="both tasks queued longer than requeue_after_s")

    async with loops_pool.acquire() as conn:
        assert await reaper.recover_lost_messages(conn) == 0, "a result on its way was taken for a lost message"
        await events.purge()
        assert await reaper.recover_lost_messages(conn) == 0, "published again on the first pass that missed it"

        async def published_again() -> bool:
            return await reaper.recover_lost_messages(conn) == 2

        await wait_for(published_again, timeout_s=10, what="the second pass to publish both again")

    await admin.post(f"/api/v1/agents/{agent_id}/resume")

    async def succeeded() -> bool:
        tasks = [(await admin.get(f"/api/v1/tasks/{i}")).json() for i in ids]
        return all(t["status"] == "succeeded" for t in tasks)

    await wait_for(succeeded, timeout_s=30, what="both tasks to succeed once published again")
    for task_id in ids:
        reasons = [t["reason"] for t in (await admin.get(f"/api/v1/tasks/{task_id}")).json()["transitions"]
                   if t["actor"] == "reaper"]
        assert len(reasons) == 1 and "held no message for 2 waiting task(s)" in reasons[0], reasons
