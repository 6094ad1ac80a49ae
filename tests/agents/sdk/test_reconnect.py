"""A cut broker connection: the agent says hello again, and no result is lost or run twice; a deleted
pool queue is declared again and consumed again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
from aiormq.exceptions import PublishError

from agents.sdk import AgentHello, AgentRuntimeSettings, TaskMessage, TaskStarted, TaskSucceeded
from tests.agents.sdk import sample_agent
from tests.agents.sdk.broker import ControlPlane, TcpProxy, until
from tests.support.system import StartAgent


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[TcpProxy]:
    parsed = urlparse(amqp_url)
    relay = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5672)
    await relay.start()
    yield relay
    await relay.close()


@pytest.fixture
def runtime_settings(runtime_settings: AgentRuntimeSettings, proxy: TcpProxy) -> AgentRuntimeSettings:
    parsed = urlparse(runtime_settings.broker.amqp_url)
    via_proxy = parsed._replace(netloc=f"{parsed.username}:{parsed.password}@127.0.0.1:{proxy.port}").geturl()
    broker = runtime_settings.broker.model_copy(update={"amqp_url": via_proxy})
    return runtime_settings.model_copy(update={"broker": broker, "reconnect_interval_s": 0.2})


async def test_hello_again_after_reconnect(
    cp: ControlPlane, start_agent: StartAgent, proxy: TcpProxy
) -> None:
    runtime = await start_agent(sample_agent.build_agent())
    await cp.received.wait_for(lambda e: isinstance(e, AgentHello))
    proxy.cut()
    again = await cp.received.wait_for(lambda e: isinstance(e, AgentHello) and e.seq > 0)
    assert again.agent_id == runtime.agent.agent_id
    task = await cp.submit(runtime.agent.pool_id, "echo", {"lines": 1})
    await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)


async def test_cut_during_a_task_loses_nothing(
    cp: ControlPlane, start_agent: StartAgent, proxy: TcpProxy
) -> None:
    runtime = await start_agent(sample_agent.build_agent())
    task = await cp.submit(runtime.agent.pool_id, "sleep", {"seconds": 0.8})
    await cp.received.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == task.task_id)
    proxy.cut()
    done = await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)
    # the broker puts the cut delivery back in front of the queue: once a later task is done, it came back
    marker = await cp.submit(runtime.agent.pool_id, "echo", {"lines": 0})
    await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == marker.task_id)
    assert await runtime.drain()
    results = cp.received.matching(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)
    assert all(r == done for r in results)
    assert sample_agent.RUNS[task.task_id] == 1
    assert await cp.take_from_pool(runtime.agent.pool_id) is None, "the cut delivery stayed in the pool queue"


async def test_consuming_resumes_after_the_pool_queue_is_deleted(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent())
    pool = runtime.agent.pool_id
    await cp.received.wait_for(lambda e: isinstance(e, AgentHello))
    # the broker cancels the agent's consumer; the agent declares its queue again and consumes again
    await cp.channel.queue_delete(cp.topology.pool_queue(pool), if_unused=False, if_empty=False)
    submitted: list[TaskMessage] = []

    async def routed() -> bool:
        try:
            submitted.append(await cp.submit(pool, "echo", {"lines": 0}))
        except PublishError:  # returned: no queue is bound yet
            return False
        return True

    await until(routed, what="the pool queue declared again")
    await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == submitted[0].task_id)
