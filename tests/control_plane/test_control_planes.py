"""More than one control plane on one database and broker: they share the work, one of them leads,
and killing one (SIGKILL) loses nothing, runs nothing twice and hands leadership over."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import httpx
import pytest

from agents.noop import build_agent as noop_agent
from agents.sdk import AgentRuntime, AgentRuntimeSettings, BrokerSettings
from control_plane.broker import PrivateRabbitMQ
from control_plane.leadership import LEADER_LOCK
from control_plane.serving import free_port
from tests.agents.sdk.broker import TcpProxy
from tests.support.system import api_ready, make_token, post_until_created, wait_all_succeeded, wait_for

HISTORY = ["pending", "queued", "running", "succeeded"]


class _ControlPlanes:
    """``devart serve`` processes on one database and broker, each on its own port."""

    def __init__(self, database_url: str, broker: BrokerSettings, *, lease_s: float = 10.0,
                 heartbeat_ttl_s: float = 5.0, outbox_lease_s: float = 5.0) -> None:
        self._env = dict(os.environ, **broker.environment(), DATABASE_URL=database_url, DEVART_EMBEDDED_BROKER="false",
                         DEVART_OUTBOX_DIRECT_LEASE_S=str(outbox_lease_s),
                         DEVART_OUTBOX_SWEEP_S="0.2", DEVART_HEARTBEAT_TTL_S=str(heartbeat_ttl_s),
                         DEVART_REAPER_INTERVAL_S="0.2",
                         DEVART_LEADER_INTERVAL_S="0.2", DEVART_LEASE_S=str(lease_s), DEVART_LOG_LEVEL="WARNING")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def _spawn(self, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "control_plane.cli", "serve"],
                                env=dict(self._env, **env, DEVART_PORT=str(port)))

    async def start(self, **env: str) -> str:
        """Start one more, with ``env`` over the common environment; returns its API's URL."""
        port = free_port()
        self.processes.append(self._spawn(port, env))
        url = f"http://127.0.0.1:{port}"
        self.urls.append(url)
        await wait_for(lambda: api_ready(url), timeout_s=90, interval_s=0.2, what=f"the control plane on {url}")
        return url

    async def kill(self, index: int) -> None:
        self.processes[index].send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.processes[index].wait)

    def stop_all(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


async def _leaders(db: asyncpg.Pool) -> int:
    """Sessions holding the leader's advisory lock (a bigint key: high and low halves)."""
    return await db.fetchval(
        """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1""",
        LEADER_LOCK)


async def _submit(urls: list[str], token: str, n: int, *, per_request: int = 100, concurrency: int = 4,
                  prefix: str = "") -> list[str]:
    """Submit ``n`` noop tasks in batches, round robin over ``urls``; a batch that gets no answer is
    sent again to the next control plane with the same Idempotency-Key, as a client behind a load
    balancer would."""
    sizes = [min(per_request, n - start) for start in range(0, n, per_request)]
    ids: list[list[str]] = [[] for _ in sizes]
    turn = itertools.count()
    pending = iter(range(len(sizes)))

    async def worker(apis: list[httpx.AsyncClient]) -> None:
        for i in pending:
            created = await post_until_created(lambda: apis[next(turn) % len(apis)], "/api/v1/tasks/batch",
                                               {"tasks": [{"type": "noop", "requires": ["noop"]}] * sizes[i]},
                                               idempotency_key=f"{prefix}batch-{i}")
            ids[i] = [task["id"] for task in created["tasks"]]

    clients = [httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
               for url in urls]
    try:
        await asyncio.gather(*(worker(clients) for _ in range(concurrency)))
    finally:
        for api in clients:
            await api.aclose()
    return [task_id for batch in ids for task_id in batch]


async def _assert_each_succeeded_once(db: asyncpg.Pool, ids: list[str], *, timeout_s: float) -> None:
    await wait_all_succeeded(db, ids, timeout_s=timeout_s, interval_s=0.5)
    keys = [uuid.UUID(i) for i in ids]
    assert len(set(ids)) == len(ids)
    histories = await db.fetch(
        """SELECT task_id, array_agg(to_status ORDER BY id) AS history FROM task_transitions
           WHERE task_id = ANY($1) GROUP BY task_id""", keys)
    wrong = [(r["task_id"], r["history"]) for r in histories if list(r["history"]) != HISTORY]
    assert not wrong, f"{len(wrong)} task(s) with another history than {HISTORY}, e.g. {wrong[:3]}"
    assert len(histories) == len(keys)
    attempts = await db.fetchrow(
        """SELECT count(*) AS n, count(*) FILTER (WHERE started_at IS NULL) AS unstarted, max(attempt) AS most
           FROM attempts WHERE task_id = ANY($1)""", keys)
    assert (attempts["n"], attempts["unstarted"], attempts["most"]) == (len(keys), 0, 1), dict(attempts)


@asynccontextmanager
async def _published_task_messages(broker: BrokerSettings, pool_id: str) -> AsyncIterator[Callable[[], Awaitable[Counter[str]]]]:
    """A queue of our own bound to the tasks exchange with ``pool_id``'s key, so it gets a copy of
    every task message published to the pool; yields a function that takes what it got so far,
    counted by task id."""
    connection = await aio_pika.connect(broker.amqp_url)
    try:
        channel = await connection.channel()
        spy = await channel.declare_queue(exclusive=True)
        await spy.bind(broker.topology().tasks, routing_key=pool_id)
        counted: Counter[str] = Counter()

        async def published() -> Counter[str]:
            while (message := await spy.get(no_ack=True, fail=False)) is not None:
                counted[json.loads(message.body)["task_id"]] += 1
            return counted

        yield published
    finally:
        await connection.close()


async def _pool_of_the_agent(db: asyncpg.Pool) -> str:
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents WHERE state = 'active'"), timeout_s=60,
                   what="the agent")
    return await db.fetchval("SELECT pool_id FROM agents")


async def test_two_control_planes_publish_each_submitted_task_once(
    database_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool
) -> None:
    """Each control plane publishes the tasks it committed itself, single or batched; the other's
    relay, woken by nothing and sweeping every 0.2 s, leaves them alone: one message per task
    reaches the broker."""
    planes = _ControlPlanes(database_url, broker_settings)
    try:
        urls = [await planes.start(), await planes.start()]
        async with AgentRuntime(noop_agent(slots=8), AgentRuntimeSettings(
                broker=broker_settings, heartbeat_interval_s=0.5, api_url=urls[0],
                token=await make_token(database_url, "agent"))):
            pool_id = await _pool_of_the_agent(db)
            token = await make_token(database_url, "ci")
            async with _published_task_messages(broker_settings, pool_id) as published:
                apis = [httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
                        for url in urls]
                turn = itertools.count()
                try:
                    created = await asyncio.gather(*(
                        post_until_created(lambda: apis[next(turn) % 2], "/api/v1/tasks",
                                           {"type": "noop", "requires": ["noop"]}, idempotency_key=f"one-{i}")
                        for i in range(120)))
                    batches = await asyncio.gather(*(
                        post_until_created(lambda: apis[next(turn) % 2], "/api/v1/tasks/batch",
                                           {"tasks": [{"type": "noop", "requires": ["noop"]}] * 10},
                                           idempotency_key=f"ten-{i}")
                        for i in range(6)))
                finally:
                    for api in apis:
                        await api.aclose()
                ids = [task["id"] for task in created] + [task["id"] for batch in batches for task in batch["tasks"]]
                await _assert_each_succeeded_once(db, ids, timeout_s=120)
                # nothing left to publish: every copy the broker routed is in the spy queue by now
                await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"), what="an empty outbox")
                counted = await published()
            assert set(counted) == set(ids)
            assert {task: n for task, n in counted.items() if n != 1} == {}, "a task message was published twice"
    finally:
        planes.stop_all()


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/tasks", {"type": "noop", "requires": ["noop"]}),
    ("/api/v1/tasks/batch", {"tasks": [{"type": "noop", "requires": ["noop"]}] * 3}),
], ids=["single", "batch"])
async def test_a_control_plane_killed_between_commit_and_publish_has_its_task_published_after_the_lease(
    database_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool, path: str, body: dict
) -> None:
    """The control plane that commits a task (or a batch) talks to the broker through a proxy that
    passes nothing on once the test holds it: the tasks are committed (201), their publish never
    reaches the broker, and the process is killed. The other control plane's relay publishes them,
    once their lease passed."""
    lease_s = 3.0
    planes = _ControlPlanes(database_url, broker_settings, outbox_lease_s=lease_s)
    broker = urlsplit(broker_settings.amqp_url)
    proxy = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    await proxy.start()
    try:
        other = await planes.start()
        await wait_for(lambda: _leaders(db), what="the first control plane to lead")
        proxied = urlunsplit(broker._replace(netloc=f"{broker.netloc.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}"))
        stalled = await planes.start(AMQP_URL=proxied)
        async with AgentRuntime(noop_agent(slots=2), AgentRuntimeSettings(
                broker=broker_settings, heartbeat_interval_s=0.5, api_url=other,
                token=await make_token(database_url, "agent"))):
            pool_id = await _pool_of_the_agent(db)
            async with _published_task_messages(broker_settings, pool_id) as published, httpx.AsyncClient(
                    base_url=stalled, headers={"Authorization": f"Bearer {await make_token(database_url, 'ci')}"},
                    timeout=30.0) as api:
                proxy.hold()
                answer = await api.post(path, json=body)
                assert answer.status_code == 201, answer.text
                ids = [task["id"] for task in answer.json().get("tasks", [answer.json()])]
                await planes.kill(1)
                await wait_all_succeeded(db, ids, timeout_s=60)
                waited = await db.fetchval(
                    """SELECT min(extract(epoch FROM a.started_at - t.created_at)) FROM tasks t
                       JOIN attempts a ON a.task_id = t.id AND a.attempt = 1 WHERE t.id = ANY($1::uuid[])""",
                    [uuid.UUID(i) for i in ids])
                # not published before their lease passed (the rows were the dead writer's until then)
                assert waited >= lease_s, waited
                await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"), what="an empty outbox")
                assert await published() == Counter(dict.fromkeys(ids, 1))
    finally:
        planes.stop_all()
        await proxy.close()


@pytest.fixture
async def private_broker() -> AsyncIterator[PrivateRabbitMQ]:
    home = Path(tempfile.mkdtemp(prefix="devart-test-rmq-"))
    home.chmod(0o755)  # the broker drops root for its own user, which must reach its data
    broker = PrivateRabbitMQ(home)
    await broker.start()
    yield broker
    await broker.stop()


async def test_two_control_planes_share_the_work_and_the_leadership_fails_over(
    database_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool
) -> None:
    planes = _ControlPlanes(database_url, broker_settings)
    try:
        first = await planes.start()
        await wait_for(lambda: _leaders(db), what="the first control plane to lead")
        second = await planes.start()
        assert await _leaders(db) == 1
        async with AgentRuntime(noop_agent(slots=8), AgentRuntimeSettings(
                broker=broker_settings, heartbeat_interval_s=0.5, api_url=first,
                token=await make_token(database_url, "agent"))):
            await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents"), timeout_s=60, what="the agent")
            token = await make_token(database_url, "ci")
            ids = await _submit([first, second], token, 300, per_request=10)
            await _assert_each_succeeded_once(db, ids, timeout_s=120)
            assert await db.fetchval("SELECT count(*) FROM outbox") == 0
            # Both applied events: each control plane's consumer is on the events queue.
            assert await _leaders(db) == 1

            await planes.kill(0)  # the leader, started first
            await wait_for(lambda: _leaders(db), timeout_s=30, what="the second control plane to take the lead")
            # The reaper now runs there: a task no pool can take times out at its start deadline.
            async with httpx.AsyncClient(base_url=second, headers={"Authorization": f"Bearer {token}"}) as api:
                stranded = await api.post("/api/v1/tasks", json={"type": "nobody-runs-this", "start_timeout_s": 1})
                assert stranded.status_code == 201, stranded.text

                async def timed_out() -> bool:
                    task = (await api.get(f"/api/v1/tasks/{stranded.json()['id']}")).json()
                    return task["status"] == "timed_out"

                await wait_for(timed_out, timeout_s=30, what="the new leader's reaper to time the task out")
            more = await _submit([second], token, 100, per_request=10, prefix="after-")
            await _assert_each_succeeded_once(db, more, timeout_s=120)
    finally:
        planes.stop_all()


TASKS_AT_SCALE = int(os.environ.get("DEVART_TEST_SCALE_TASKS", "10000"))


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_ten_thousand_tasks_through_two_control_planes_one_killed_and_the_broker_restarted(
    private_broker: PrivateRabbitMQ, database_url: str, db: asyncpg.Pool
) -> None:
    broker = BrokerSettings(amqp_url=private_broker.url, prefix="")
    # A lease and an agent TTL longer than any broker restart or stall on a loaded machine: this
    # test is about messages, not about telling a silent agent from a slow one.
    planes = _ControlPlanes(database_url, broker, lease_s=120.0, heartbeat_ttl_s=60.0)
    began = time.monotonic()
    try:
        first = await planes.start()
        second = await planes.start()
        async with AgentRuntime(noop_agent(slots=32), AgentRuntimeSettings(
                broker=broker, heartbeat_interval_s=0.5, reconnect_interval_s=0.5, api_url=second,
                token=await make_token(database_url, "agent"))):
            await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents"), timeout_s=60, what="the agent")
            token = await make_token(database_url, "ci")
            submitting = asyncio.create_task(_submit([first, second], token, TASKS_AT_SCALE))

            async def some_done(n: int) -> bool:
                return await db.fetchval("SELECT count(*) FROM tasks WHERE status = 'succeeded'") >= n

            await wait_for(lambda: some_done(TASKS_AT_SCALE // 4), timeout_s=300, interval_s=0.2,
                           what="a quarter of the tasks to succeed")
            await planes.kill(0)
            await wait_for(lambda: some_done(TASKS_AT_SCALE // 2), timeout_s=300, interval_s=0.2,
                           what="half of the tasks to succeed")
            await private_broker.stop()
            await private_broker.start()
            ids = await submitting
            assert len(ids) == TASKS_AT_SCALE
            await _assert_each_succeeded_once(db, ids, timeout_s=400)
            assert await db.fetchval("SELECT count(*) FROM tasks") == TASKS_AT_SCALE, "a task was created twice"
    finally:
        planes.stop_all()
    print(f"{TASKS_AT_SCALE} tasks through two control planes, one killed, broker restarted: "
          f"{time.monotonic() - began:.0f} s, load average {os.getloadavg()[0]:.1f}")
