"""Shared fixtures: a real Postgres per test and the real RabbitMQ with per-test names."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from agents.sdk import Agent, AgentRuntime, AgentRuntimeSettings
from agents.sdk.settings import BrokerSettings
from agents.sdk.topology import Topology
from agents.sdk.trust import AgentCredentials, MessageSigner
from tests.support.services import (
    TEST_QUEUE_PREFIX,
    EmbeddedTestPostgres,
    delete_test_queues,
    ensure_rabbitmq,
    postgres_root,
)
from tests.support.supabase_shape import SupabaseShapedPostgres
from tests.support.system import StartAgent

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE_EXPIRES_S = 120.0


@pytest.fixture(scope="session")
def amqp_url() -> str:
    ensure_rabbitmq(AMQP_URL)
    return AMQP_URL


@pytest.fixture(scope="session")
async def _broker_prefixes(amqp_url: str) -> AsyncIterator[set[str]]:
    prefixes: set[str] = set()
    yield prefixes
    await delete_test_queues(amqp_url, prefixes)


@pytest.fixture
def broker_settings(amqp_url: str, _broker_prefixes: set[str]) -> BrokerSettings:
    """Names private to this test on the shared broker. Its queues expire a while after the test
    stops using them (the broker stays light through a long session); the rest go at session end."""
    prefix = f"{TEST_QUEUE_PREFIX}{uuid.uuid4().hex[:8]}."
    _broker_prefixes.add(prefix)
    return BrokerSettings(amqp_url=amqp_url, prefix=prefix, queue_expires_s=QUEUE_EXPIRES_S)


@pytest.fixture
def topology(broker_settings: BrokerSettings) -> Topology:
    return broker_settings.topology()


@pytest.fixture
def runtime_settings(broker_settings: BrokerSettings) -> AgentRuntimeSettings:
    """Agent timings fast enough for tests; everything else as in production."""
    return AgentRuntimeSettings(heartbeat_interval_s=0.2, log_flush_interval_s=0.05, drain_timeout_s=5,
                                timeout_grace_s=0.5, broker=broker_settings)


@pytest.fixture
def signer() -> MessageSigner:
    """The key a stand-in control plane signs task messages with (tests/agents/sdk/broker.py)."""
    return MessageSigner(MessageSigner.generate())


@pytest.fixture
def agent_credentials(signer: MessageSigner) -> Callable[[Agent], Awaitable[AgentCredentials]]:
    """How an in-process agent gets its keys: here, made up to match ``signer``; the control plane
    tests register with their real control plane instead (tests/control_plane/conftest.py)."""

    async def credentials(agent: Agent) -> AgentCredentials:
        return AgentCredentials(agent_id=agent.agent_id, event_key=os.urandom(32), control_plane_key=signer.public_key)

    return credentials


@pytest.fixture
async def start_agent(
    runtime_settings: AgentRuntimeSettings, agent_credentials: Callable[[Agent], Awaitable[AgentCredentials]]
) -> AsyncIterator[StartAgent]:
    """Start an in-process agent runtime; every one started is drained at the end of the test."""
    started: list[AgentRuntime] = []

    async def start(agent: Agent, credentials: AgentCredentials | None = None, **overrides: object) -> AgentRuntime:
        runtime = AgentRuntime(agent, runtime_settings.model_copy(update=overrides),
                               credentials=credentials or await agent_credentials(agent))
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.drain()


@pytest.fixture(scope="session")
async def postgres() -> AsyncIterator[EmbeddedTestPostgres]:
    with postgres_root("devart-test-pg-") as root:
        server = EmbeddedTestPostgres(root / "data")
        await server.prepare_template()
        yield server
        server.stop()


@pytest.fixture
async def database_url(postgres: EmbeddedTestPostgres) -> AsyncIterator[str]:
    """A freshly migrated database of its own for this test."""
    name = await postgres.create_database()
    yield postgres.uri(name)
    await postgres.drop_database(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def supabase_postgres() -> AsyncIterator[SupabaseShapedPostgres]:
    """A cluster of its own with Supabase's roles (tests/support/supabase_shape.py)."""
    with postgres_root("devart-test-supabase-pg-") as root:
        server = SupabaseShapedPostgres(root / "data")
        await server.prepare()
        yield server
        server.stop()
