"""A running control plane: real Postgres, real RabbitMQ, real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from agents.sdk import Agent, BrokerSettings
from agents.sdk.trust import AgentCredentials
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.support.system import client, fast_settings, make_token, register_in_database, serve_api


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
        return await register_in_database(cp, database_url, agent.agent_id)

    return credentials


@pytest.fixture
async def base_url(cp: ControlPlane) -> AsyncIterator[str]:
    async with serve_api(cp) as url:
        yield url


@pytest.fixture
async def admin(base_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(base_url, await make_token(database_url, "admin")) as c:
        yield c


