"""Two installations on one broker never meet: each derives its own broker prefix from its database.

The attack: a second devart (another `devart up` on the same machine, a staging copy) uses the same
RabbitMQ with the default settings. Before, both used the empty prefix, so one installation's
agents consumed the other's tasks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from uuid import UUID

import httpx
import pytest
from pydantic import BaseModel

from agents.sdk import Agent, AgentRuntime, AgentRuntimeSettings, BrokerSettings, TaskContext, task_handler
from agents.sdk.settings import BrokerPrefixUnset
from control_plane.service import ControlPlane
from tests.conftest import QUEUE_EXPIRES_S
from tests.support.services import EmbeddedTestPostgres
from tests.support.system import client, fast_settings, make_token, register_in_database, serve_api, wait_for

RAN: dict[UUID, list[str]] = defaultdict(list)
"""Which agents ran each task."""


class PingInput(BaseModel):
    pass


@task_handler("ping", input=PingInput)
async def ping(ctx: TaskContext, data: PingInput) -> dict[str, str]:
    RAN[ctx.task_id].append(ctx.agent_id)
    return {"agent": ctx.agent_id}


class _Installation:
    def __init__(self, cp: ControlPlane, api: httpx.AsyncClient, agent: AgentRuntime) -> None:
        self.cp, self.api, self.agent = cp, api, agent

    async def task(self, task_id: str) -> dict:
        return (await self.api.get(f"/api/v1/tasks/{task_id}")).json()

    async def submit(self) -> str:
        response = await self.api.post("/api/v1/tasks", json={"type": "ping", "requires": ["net"]})
        assert response.status_code == 201, response.text
        return response.json()["id"]


@pytest.fixture
async def installations(
    postgres: EmbeddedTestPostgres, amqp_url: str, _broker_prefixes: set[str], runtime_settings: AgentRuntimeSettings,
) -> AsyncIterator[tuple[_Installation, _Installation]]:
    broker = BrokerSettings(amqp_url=amqp_url, queue_expires_s=QUEUE_EXPIRES_S)  # no prefix: the default
    names = [await postgres.create_database(), await postgres.create_database()]
    async with AsyncExitStack() as stack:
        found = []
        for name in names:
            url = postgres.uri(name)
            cp = await stack.enter_async_context(ControlPlane(fast_settings(url, broker)))
            _broker_prefixes.add(cp.broker.prefix or "")
            base_url = await stack.enter_async_context(serve_api(cp))
            api = await stack.enter_async_context(client(base_url, await make_token(url, "admin")))
            pinger = Agent("pinger", skills=["net"], slots=2, handlers=[ping])
            agent = AgentRuntime(pinger, runtime_settings.model_copy(update={"broker": cp.broker}),
                                 credentials=await register_in_database(cp, url, pinger.agent_id, pinger.pool_id))
            await agent.start()
            stack.push_async_callback(agent.drain)
            found.append(_Installation(cp, api, agent))
        yield found[0], found[1]
    for name in names:
        await postgres.drop_database(name)


async def _agent_state(inst: _Installation, state: str) -> bool:
    return (await inst.api.get(f"/api/v1/agents/{inst.agent.agent.agent_id}")).json()["state"] == state


async def test_two_installations_on_one_broker_never_see_each_others_tasks(
    installations: tuple[_Installation, _Installation],
) -> None:
    a, b = installations
    assert a.cp.broker.prefix and b.cp.broker.prefix and a.cp.broker.prefix != b.cp.broker.prefix
    assert a.agent.agent.pool_id == b.agent.agent.pool_id  # same skills: the same pool name on both

    # A's only agent stops taking work; B's agent, with the same pool id, is idle and consuming.
    await a.api.post(f"/api/v1/agents/{a.agent.agent.agent_id}/pause")
    await wait_for(lambda: _agent_state(a, "paused"), what="A's agent paused")
    task_a = await a.submit()
    assert (await a.task(task_a))["status"] == "queued"

    # B's agent is demonstrably live: its own task runs on it.
    task_b = await b.submit()
    await wait_for(lambda: _succeeded(b, task_b), what="B's task")
    assert RAN[UUID(task_b)] == [b.agent.agent.agent_id]

    # ... and it never saw A's task, which still waits in A's own queue.
    assert RAN[UUID(task_a)] == []
    channel = await a.cp.connection.channel()
    queue = await channel.declare_queue(a.cp.topology.pool_queue(a.agent.agent.pool_id), passive=True)
    assert queue.declaration_result.message_count == 1
    await channel.close()

    await a.api.post(f"/api/v1/agents/{a.agent.agent.agent_id}/resume")
    await wait_for(lambda: _succeeded(a, task_a), what="A's task after its agent resumed")
    assert RAN[UUID(task_a)] == [a.agent.agent.agent_id]


async def _succeeded(inst: _Installation, task_id: str) -> bool:
    return (await inst.task(task_id))["status"] == "succeeded"


async def test_the_prefix_is_the_installations_own_across_restarts(
    database_url: str, amqp_url: str, _broker_prefixes: set[str],
) -> None:
    broker = BrokerSettings(amqp_url=amqp_url, queue_expires_s=QUEUE_EXPIRES_S)
    prefixes = []
    for _ in range(2):
        async with ControlPlane(fast_settings(database_url, broker), workers=False) as cp:
            prefixes.append(cp.broker.prefix)
            _broker_prefixes.add(cp.broker.prefix or "")
    assert prefixes[0] == prefixes[1]
    async with ControlPlane(fast_settings(database_url, broker.model_copy(update={"prefix": "chosen."})),
                            workers=False) as cp:
        assert cp.topology.tasks == "chosen.devart.tasks"  # an explicit prefix wins
        _broker_prefixes.add("chosen.")


def test_an_agent_without_a_prefix_refuses_to_start(amqp_url: str) -> None:
    with pytest.raises(BrokerPrefixUnset, match="devart status"):
        AgentRuntime(Agent("pinger", skills=["net"], slots=1, handlers=[ping]),
                     AgentRuntimeSettings(broker=BrokerSettings(amqp_url=amqp_url)))
