"""Restarts during load: the broker, the control plane. Nothing lost, nothing run twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from agents.noop import build_agent as noop_agent
from agents.sdk import AgentRuntime, AgentRuntimeSettings, BrokerSettings
from control_plane.broker import PrivateRabbitMQ
from control_plane.service import ControlPlane
from control_plane.serving import free_port
from tests.support.services import EmbeddedTestPostgres, postgres_root
from tests.support.system import (
    api_ready,
    client,
    fast_settings,
    make_token,
    post_until_created,
    register_in_database,
    serve_api,
    wait_all_succeeded,
    wait_for,
)

BURST = 1000
SETTLE_S = 60


@pytest.fixture
async def private_broker() -> AsyncIterator[PrivateRabbitMQ]:
    home = Path(tempfile.mkdtemp(prefix="devart-test-rmq-"))
    home.chmod(0o755)  # the broker drops root for its own user, which must reach its data
    broker = PrivateRabbitMQ(home)
    await broker.start()
    yield broker
    await broker.stop()


async def _submit_all(base_url: str, token: str, n: int, *, started: asyncio.Event | None = None,
                      after: int = 0, concurrency: int = 25) -> list[str]:
    """Submit ``n`` noop tasks, retrying each (same Idempotency-Key) until the API answers 201."""
    ids: list[str] = [""] * n
    next_index = 0

    async def worker(api: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            if started is not None and i == after:
                started.set()
            created = await post_until_created(lambda: api, "/api/v1/tasks", {"type": "noop", "requires": ["noop"]},
                                               idempotency_key=f"burst-{i}")
            ids[i] = created["id"]

    async with client(base_url, token) as api:
        await asyncio.gather(*(worker(api) for _ in range(concurrency)))
    return ids


async def _assert_all_succeeded_once(db: asyncpg.Pool, ids: list[str], timeout_s: float = 120) -> None:
    await wait_all_succeeded(db, ids, timeout_s=timeout_s)
    assert len(set(ids)) == len(ids)
    assert await db.fetchval("SELECT count(*) FROM tasks") == len(ids), "a task was created twice"
    twice = await db.fetchval(
        """SELECT count(*) FROM (SELECT task_id FROM task_transitions WHERE to_status = 'succeeded'
                                GROUP BY task_id HAVING count(*) > 1) x""")
    assert twice == 0, "a task succeeded twice"
    assert await db.fetchval("SELECT max(attempt) FROM attempts") == 1, "a task needed a second attempt"


@pytest.mark.slow
async def test_broker_restart_during_a_burst(
    private_broker: PrivateRabbitMQ, database_url: str, db: asyncpg.Pool
) -> None:
    broker = BrokerSettings(amqp_url=private_broker.url, prefix="")
    # A lease longer than any broker restart: on a loaded machine a restart can outlast the tests'
    # 10 s lease, and the reaper then rightly times out the running tasks; this test is about messages.
    async with ControlPlane(fast_settings(database_url, broker, lease_s=60.0)) as cp, serve_api(cp) as base_url:
        agent = noop_agent(slots=16)
        runtime = AgentRuntime(agent, AgentRuntimeSettings(
            broker=broker, heartbeat_interval_s=0.5, reconnect_interval_s=0.5),
            credentials=await register_in_database(cp, database_url, agent.agent_id, agent.pool_id))
        async with runtime:
            await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents"), what="the agent")
            token = await make_token(database_url, "ci")
            midway = asyncio.Event()
            submitting = asyncio.create_task(_submit_all(base_url, token, BURST, started=midway, after=BURST // 3))
            await midway.wait()
            await private_broker.stop()
            await private_broker.start()
            ids = await submitting
            await _assert_all_succeeded_once(db, ids, timeout_s=SETTLE_S)


async def test_broker_down_at_submit_time(private_broker: PrivateRabbitMQ, database_url: str, db: asyncpg.Pool) -> None:
    broker = BrokerSettings(amqp_url=private_broker.url, prefix="")
    async with ControlPlane(fast_settings(database_url, broker)) as cp, serve_api(cp) as base_url:
        await private_broker.stop()
        async with client(base_url, await make_token(database_url, "ci")) as api:
            response = await api.post("/api/v1/tasks", json={"type": "noop", "requires": ["noop"]})
            assert response.status_code == 201
            ready = await api.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unavailable"
        # Nothing can take it yet; the agent arrives with the broker.
        await private_broker.start()
        agent = noop_agent(slots=1)
        runtime = AgentRuntime(agent, AgentRuntimeSettings(broker=broker, heartbeat_interval_s=0.5),
                               credentials=await register_in_database(cp, database_url, agent.agent_id, agent.pool_id))
        async with runtime:
            await _assert_all_succeeded_once(db, [response.json()["id"]], timeout_s=60)


def _control_plane_process(database_url: str, broker: BrokerSettings, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **broker.environment(), DATABASE_URL=database_url,
               DEVART_PORT=str(port), DEVART_EMBEDDED_BROKER="false", DEVART_OUTBOX_SWEEP_S="0.2",
               DEVART_HEARTBEAT_TTL_S="5", DEVART_LOG_LEVEL="WARNING")
    return subprocess.Popen([sys.executable, "-m", "control_plane.cli", "serve"], env=env)


@pytest.mark.slow
async def test_control_plane_killed_during_a_burst(
    database_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = _control_plane_process(database_url, broker_settings, port)
    try:
        await wait_for(lambda: api_ready(base_url), timeout_s=60, what="the control plane")
        # the agent registers over HTTP, as agents do (the key outlives the control plane's restart)
        async with AgentRuntime(noop_agent(slots=16), AgentRuntimeSettings(
                broker=broker_settings, heartbeat_interval_s=0.5, api_url=base_url,
                token=await make_token(database_url, "agent"))):
            await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents"), timeout_s=60, what="the agent")
            token = await make_token(database_url, "ci")
            midway = asyncio.Event()
            submitting = asyncio.create_task(_submit_all(base_url, token, BURST, started=midway, after=BURST // 3))
            await midway.wait()
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            process = _control_plane_process(database_url, broker_settings, port)
            ids = await submitting
            await _assert_all_succeeded_once(db, ids, timeout_s=SETTLE_S)
    finally:
        process.kill()
        process.wait()


def _database_unavailable(response: httpx.Response) -> bool:
    """A 503 naming the database, with Retry-After, as the API answers while it cannot reach Postgres."""
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "2"
    error = response.json()["error"]
    assert error["code"] == "unavailable" and error["message"].startswith("the database is unavailable"), error
    return True


async def test_database_down_answers_503_and_writes_nothing(broker_settings: BrokerSettings) -> None:
    with postgres_root("devart-test-pg-down-") as root:
        postgres = EmbeddedTestPostgres(root / "data")
        try:
            await postgres.prepare_template()
            database_url = postgres.uri(await postgres.create_database())
            async with ControlPlane(fast_settings(database_url, broker_settings)) as cp, serve_api(cp) as base_url:
                async with client(base_url, await make_token(database_url, "admin")) as api:
                    assert (await api.post("/api/v1/tasks", json={"type": "noop"})).status_code == 201
                    postgres.stop()  # the pools' connections die with it, and new ones are refused
                    for _ in range(3):  # the connections the pool held, then ones it cannot open
                        assert _database_unavailable(await api.post(
                            "/api/v1/tasks", json={"type": "noop"}, headers={"Idempotency-Key": "while-down"}))
                        assert _database_unavailable(await api.post(
                            "/api/v1/tasks/batch", json={"tasks": [{"type": "noop"}] * 2},
                            headers={"Idempotency-Key": "batch-while-down"}))
                        assert _database_unavailable(await api.get("/api/v1/tasks"))
                    postgres = EmbeddedTestPostgres(root / "data")  # the same cluster, started again
                    # the client retries with the same keys once the database answers again
                    await post_until_created(lambda: api, "/api/v1/tasks", {"type": "noop"},
                                             idempotency_key="while-down")
                    await post_until_created(lambda: api, "/api/v1/tasks/batch",
                                             {"tasks": [{"type": "noop"}] * 2}, idempotency_key="batch-while-down")
                    db = await asyncpg.connect(database_url)
                    try:
                        counts = [await db.fetchval(query) for query in (
                            "SELECT count(*) FROM tasks", "SELECT count(DISTINCT task_id) FROM task_transitions")]
                    finally:
                        await db.close()
                    assert counts == [4, 4], "a task was written twice, or only in part"
        finally:
            postgres.stop()
