"""Every task ends: waiting tasks by their start or overall deadline, lost messages by republishing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage

from agents.sdk import Agent, BrokerSettings
from agents.sdk.connection import connect_robust
from control_plane.settings import Settings
from tests.agents.sdk.sample_agent import HANDLERS
from tests.support.system import StartAgent, fast_settings, wait_for


@pytest.fixture
def settings(database_url: str, broker_settings: BrokerSettings) -> Settings:
    return fast_settings(database_url, broker_settings, requeue_after_s=0.5, max_republish=2)


async def _ended(api: httpx.AsyncClient, task_id: str, timeout_s: float = 20.0) -> dict:
    async def done() -> dict | None:
        task = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        return task if task["status"] in ("succeeded", "failed", "dead", "cancelled", "timed_out") else None

    return await wait_for(done, timeout_s=timeout_s, what=f"task {task_id} to end")


async def test_pending_task_of_unknown_type_times_out_with_the_reason(admin: httpx.AsyncClient) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "nosuch", "start_timeout_s": 1})).json()
    assert created["status"] == "pending" and created["start_deadline_at"] is not None
    task = await _ended(admin, created["id"])
    assert task["status"] == "timed_out"
    assert task["status_reason"] == "no live pool for type 'nosuch' within 1 s"
    transitions = (await admin.get(f"/api/v1/tasks/{created['id']}")).json()["transitions"]
    assert [t["to_status"] for t in transitions] == ["pending", "timed_out"]
    assert transitions[-1]["actor"] == "reaper"


async def test_default_start_timeout_applies(database_url: str, broker_settings: BrokerSettings) -> None:
    assert fast_settings(database_url, broker_settings).default_start_timeout_s == 600
    assert Settings(database_url=database_url, default_start_timeout_s=5).default_start_timeout_s == 5


async def test_queued_task_nobody_takes_times_out(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    runtime = await start_agent(Agent("sample", skills=["test"], slots=1, handlers=HANDLERS))
    await admin.post(f"/api/v1/agents/{runtime.agent.agent_id}/pause")
    await wait_for(lambda: _agent_state(admin, runtime.agent.agent_id, "paused"), what="agent paused")
    created = (await admin.post("/api/v1/tasks", json={"type": "echo", "requires": ["test"], "input": {"lines": 1},
                                                       "start_timeout_s": 1})).json()
    assert created["status"] == "queued"
    task = await _ended(admin, created["id"])
    assert task["status"] == "timed_out"
    assert task["status_reason"].startswith("not started within 1 s of being queued on pool-")


async def test_overall_deadline_ends_a_running_task(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    await start_agent(Agent("sample", skills=["test"], slots=1, handlers=HANDLERS))
    created = (await admin.post("/api/v1/tasks", json={"type": "wait-cancel", "requires": ["test"],
                                                       "deadline_s": 1})).json()
    task = await _ended(admin, created["id"])
    assert task["status"] == "timed_out"
    assert task["status_reason"] == "overall deadline of 1 s from submission passed while running"


async def _agent_state(api: httpx.AsyncClient, agent_id: str, state: str) -> bool:
    return (await api.get(f"/api/v1/agents/{agent_id}")).json()["state"] == state


class _ForeignConsumer:
    """Another program on the broker reading this installation's pool queue and acking what it takes."""

    def __init__(self) -> None:
        self.taken: list[bytes] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.taken.append(message.body)
        await message.ack()


@pytest.fixture
async def foreign(broker_settings: BrokerSettings) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, _ForeignConsumer]]:
    connection = await connect_robust(broker_settings.amqp_url)
    channel = await connection.channel()
    yield channel, _ForeignConsumer()
    await connection.close()


async def test_queued_task_whose_message_was_taken_is_recovered(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings,
    foreign: tuple[aio_pika.abc.AbstractChannel, _ForeignConsumer],
) -> None:
    runtime = await start_agent(Agent("sample", skills=["test"], slots=1, handlers=HANDLERS))
    agent_id = runtime.agent.agent_id
    await admin.post(f"/api/v1/agents/{agent_id}/pause")
    await wait_for(lambda: _agent_state(admin, agent_id, "paused"), what="agent paused")
    channel, thief = foreign
    queue = await channel.declare_queue(broker_settings.topology().pool_queue(runtime.agent.pool_id), passive=True)
    tag = await queue.consume(thief.on_message)

    created = (await admin.post("/api/v1/tasks", json={"type": "echo", "requires": ["test"],
                                                       "input": {"lines": 1}})).json()
    await wait_for(lambda: _async(len(thief.taken) == 1), what="the foreign consumer to take the message")
    await queue.cancel(tag)
    await admin.post(f"/api/v1/agents/{agent_id}/resume")

    task = await _ended(admin, created["id"])
    assert task["status"] == "succeeded", task
    detail = (await admin.get(f"/api/v1/tasks/{created['id']}")).json()
    republished = [t for t in detail["transitions"] if t["actor"] == "reaper"]
    assert republished and "published again (1/2)" in republished[0]["reason"]


async def test_task_whose_message_keeps_vanishing_fails_with_the_reason(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings,
    foreign: tuple[aio_pika.abc.AbstractChannel, _ForeignConsumer],
) -> None:
    runtime = await start_agent(Agent("sample", skills=["test"], slots=1, handlers=HANDLERS))
    await admin.post(f"/api/v1/agents/{runtime.agent.agent_id}/pause")
    await wait_for(lambda: _agent_state(admin, runtime.agent.agent_id, "paused"), what="agent paused")
    channel, thief = foreign
    queue = await channel.declare_queue(broker_settings.topology().pool_queue(runtime.agent.pool_id), passive=True)
    await queue.consume(thief.on_message)

    created = (await admin.post("/api/v1/tasks", json={"type": "echo", "requires": ["test"],
                                                       "input": {"lines": 1}})).json()
    task = await _ended(admin, created["id"])
    assert task["status"] == "failed"
    assert "DEVART_BROKER_PREFIX" in task["status_reason"]
    assert len(thief.taken) == 3  # the first publish and two more


async def _async(value: bool) -> bool:
    return value
