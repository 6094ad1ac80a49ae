"""A first broker connect that fails (refused login, closed port) leaves no connection open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiormq.exceptions import ProbableAuthenticationError

from agents.sdk import Agent, AgentRuntime, AgentRuntimeSettings
from agents.sdk.connection import connect_robust
from tests.agents.sdk import sample_agent
from tests.support.connections import assert_failed_connect_leaves_nothing, closed_port, wrong_password


async def test_a_refused_login_leaves_nothing_open(amqp_url: str) -> None:
    await assert_failed_connect_leaves_nothing(lambda: connect_robust(wrong_password(amqp_url)),
                                               ProbableAuthenticationError)


async def test_a_closed_port_leaves_nothing_open(amqp_url: str) -> None:
    await assert_failed_connect_leaves_nothing(lambda: connect_robust(closed_port(amqp_url)), ConnectionError)


async def test_an_agent_refused_by_the_broker_leaves_nothing_open(
    runtime_settings: AgentRuntimeSettings, agent_credentials: Callable[[Agent], Awaitable]
) -> None:
    agent = sample_agent.build_agent()
    broker = runtime_settings.broker.model_copy(update={"amqp_url": wrong_password(runtime_settings.broker.amqp_url)})
    runtime = AgentRuntime(agent, runtime_settings.model_copy(update={"broker": broker}),
                           credentials=await agent_credentials(agent))
    await assert_failed_connect_leaves_nothing(runtime.start, ProbableAuthenticationError)
