"""A running control plane: real Postgres, real RabbitMQ, real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from agents.sdk import Agent, AgentRuntime, BrokerSettings
from agents.sdk.trust import AgentCredentials
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.support.system import (
    StartAgent,
    client,
    fast_settings,
    make_token,
    register_in_database,
    serve_api,
    wait_for,
)


@pytest.fixture
def settings(database_url: str, broker_settings: BrokerSettings) -> Settings:
    return fast_settings(database_url, broker_settings)


@pytest.fixture
async def cp(settings: Settings) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(settings) as plane:
        yield plane


@pytest.fixture
def agent_credentials(cp: ControlPlane, database_url: str) -> Callable[[Agent], Awaitable[AgentCredentials]]:
    """In-process agents register with the real control plane, as ``AgentRuntime`` does over HTTP."""

    async def credentials(agent: Agent) -> AgentCredentials:
        return await register_in_database(cp, database_url, agent.agent_id, agent.pool_id)

    return credentials


@pytest.fixture
async def base_url(cp: ControlPlane) -> AsyncIterator[str]:
    async with serve_api(cp) as url:
        yield url


@pytest.fixture
async def admin(base_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(base_url, await make_token(database_url, "admin")) as c:
        yield c




@pytest.fixture
async def start_agent(start_agent: StartAgent, cp: ControlPlane) -> StartAgent:
    """The root ``start_agent``, returning once the control plane has applied the agent's hello
    (its signature is checked first), so a task submitted next finds the pool live."""

    async def start(agent: Agent, **overrides: object) -> AgentRuntime:
        runtime = await start_agent(agent, **overrides)

        async def known() -> bool:
            async with cp.loops_pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT 1 FROM agents WHERE id = $1", agent.agent_id))

        await wait_for(known, what=f"the hello of {agent.agent_id}")
        return runtime

    return start
