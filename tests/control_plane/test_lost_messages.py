"""A queued task's message is taken for lost only where nothing else can hold it.

The control plane under test runs its own reaper with an hour's ``requeue_after_s``, so only the
reaper each test builds looks for lost messages. That reaper reads a queue of the test's as the
events queue: a message there stands for an agent's batch of results not yet applied. The counts
it reads come from the broker's management API, a few seconds late (where the reaper's own
``requeue_after_s`` covers that): each test waits until the API shows what it set up first.
"""

from __future__ import annotations

import dataclasses
import time
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
from control_plane.queue_counts import QueueCounts
from control_plane.reaper import Reaper
from control_plane.settings import Settings
from tests.agents.sdk.sample_agent import HANDLERS
from tests.support.system import StartAgent, fast_settings, wait_for

REQUEUE_AFTER_S = 0.3
STATS_S = 30.0
"""Longest wait for the management API's counts to show a change (it publishes them every 5 s)."""


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


@pytest.fixture
def counts(broker_settings: BrokerSettings) -> QueueCounts:
    return QueueCounts.for_broker(None, broker_settings.amqp_url)


def _holding(counts: QueueCounts, queue: str, n: int):  # noqa: ANN202 - a condition for wait_for
    async def holds() -> bool:
        return await counts.messages(queue) == n

    return holds


async def _paused_pool(admin: httpx.AsyncClient, start_agent: StartAgent, channel: aio_pika.abc.AbstractChannel,
                       broker_settings: BrokerSettings) -> tuple[str, aio_pika.abc.AbstractQueue]:
    """A pool whose one agent is paused (it takes nothing): the agent's id and the pool queue."""
    runtime = await start_agent(Agent("sample", skills=["test"], slots=1, handlers=HANDLERS))
    agent_id = runtime.agent.agent_id
    await admin.post(f"/api/v1/agents/{agent_id}/pause")

    async def paused() -> bool:
        return (await admin.get(f"/api/v1/agents/{agent_id}")).json()["state"] == "paused"

    await wait_for(paused, what="agent paused")
    queue = await channel.declare_queue(broker_settings.topology().pool_queue(runtime.agent.pool_id), passive=True)
    return agent_id, queue


async def _succeeded_after_one_republish(admin: httpx.AsyncClient, ids: list[str], waiting: int) -> None:
    async def succeeded() -> bool:
        tasks = [(await admin.get(f"/api/v1/tasks/{i}")).json() for i in ids]
        return all(t["status"] == "succeeded" for t in tasks)

    await wait_for(succeeded, timeout_s=60, what="every task to succeed once published again")
    for task_id in ids:
        reasons = [t["reason"] for t in (await admin.get(f"/api/v1/tasks/{task_id}")).json()["transitions"]
                   if t["actor"] == "reaper"]
        assert len(reasons) == 1 and f"held no message for {waiting} waiting task(s)" in reasons[0], reasons


async def _stale(db: asyncpg.Pool, ids: list[str]) -> bool:
    return await db.fetchval(
        "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'queued' "
        "AND updated_at < now() - make_interval(secs => $2)", ids, REQUEUE_AFTER_S) == len(ids)


async def test_results_waiting_in_the_events_queue_are_not_lost_messages(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings,
    connection: AbstractRobustConnection, db: asyncpg.Pool, loops_pool: asyncpg.Pool, counts: QueueCounts,
) -> None:
    channel = await connection.channel()
    agent_id, pool_queue = await _paused_pool(admin, start_agent, channel, broker_settings)
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
    reaper = Reaper(loops_pool, connection, topology, counts, interval_s=3600, agent_ttl_s=60, deadline_grace_s=30,
                    requeue_after_s=REQUEUE_AFTER_S)
    await wait_for(lambda: _stale(db, ids), what="both tasks queued longer than requeue_after_s")
    await wait_for(_holding(counts, events.name, 1), timeout_s=STATS_S, what="the API to count the events message")
    await wait_for(_holding(counts, pool_queue.name, 0), timeout_s=STATS_S, what="the API to count the pool queue empty")

    async with loops_pool.acquire() as conn:
        assert await reaper.recover_lost_messages(conn) == 0, "a result on its way was taken for a lost message"
        await events.purge()
        assert await reaper.recover_lost_messages(conn) == 0, "published again on the first pass that missed it"

        async def published_again() -> bool:
            return await reaper.recover_lost_messages(conn) == 2

        await wait_for(published_again, timeout_s=STATS_S, what="the second pass to publish both again")

    await admin.post(f"/api/v1/agents/{agent_id}/resume")
    await _succeeded_after_one_republish(admin, ids, 2)


HELD = 20


async def test_messages_held_unacknowledged_are_not_lost_and_purged_ones_are(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings,
    connection: AbstractRobustConnection, db: asyncpg.Pool, loops_pool: asyncpg.Pool, counts: QueueCounts,
) -> None:
    # A consumer of the test's holds every task message of a loaded queue unacknowledged, as agents
    # do while they run them: the declare-ok count of the queue is 0 all along.
    holder = await connection.channel()
    await holder.set_qos(prefetch_count=HELD)
    agent_id, pool_queue = await _paused_pool(admin, start_agent, holder, broker_settings)
    held: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        held.append(message)

    await pool_queue.consume(hold)
    created = await admin.post("/api/v1/tasks/batch", json={"tasks": [
        {"type": "echo", "requires": ["test"], "input": {"lines": 1}}] * HELD})
    ids = [task["id"] for task in created.json()["tasks"]]

    async def all_held() -> bool:
        return len(held) == HELD

    await wait_for(all_held, what="the test's consumer to hold every task message")
    events = await (await connection.channel()).declare_queue(f"test-events-{uuid.uuid4().hex}", auto_delete=True)
    topology = _EventsQueueOfTheTest(**dataclasses.asdict(broker_settings.topology()), events_queue_name=events.name)
    reaper = Reaper(loops_pool, connection, topology, counts, interval_s=3600, agent_ttl_s=60, deadline_grace_s=30,
                    requeue_after_s=REQUEUE_AFTER_S)
    await wait_for(lambda: _stale(db, ids), what="the tasks queued longer than requeue_after_s")
    await wait_for(_holding(counts, pool_queue.name, HELD), timeout_s=STATS_S, what="the API to count the held messages")
    await wait_for(_holding(counts, events.name, 0), timeout_s=STATS_S, what="the API to count the events queue empty")

    async with loops_pool.acquire() as conn:
        first = time.monotonic()
        while time.monotonic() - first < 3 * REQUEUE_AFTER_S:  # passes past the second one's due time
            assert await reaper.recover_lost_messages(conn) == 0, "messages held unacknowledged were taken for lost"
        await holder.close()  # the held messages go back to the queue, and are gone with its purge
        other = await connection.channel()
        await (await other.declare_queue(pool_queue.name, passive=True)).purge()
        published = 0

        async def published_again() -> bool:
            nonlocal published
            published += await reaper.recover_lost_messages(conn)
            return published >= HELD

        await wait_for(published_again, timeout_s=STATS_S, what="the purged messages to be published again")
        assert published == HELD
    await admin.post(f"/api/v1/agents/{agent_id}/resume")
    await _succeeded_after_one_republish(admin, ids, HELD)
