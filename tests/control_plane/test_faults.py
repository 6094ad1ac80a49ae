"""Failure on purpose: poison messages, a killed agent, cancel and deadlines, a vanished pool."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import httpx

from agents.noop import build_agent as noop_agent
from agents.sandbox import SandboxSettings
from agents.sdk import AgentRuntimeSettings, TaskMessage
from agents.sdk.topology import declare_pool_queue
from agents.sdk.trust import HEADER_SIGNATURE, MessageSigner
from agents.shell import build_shell_agent
from control_plane.broker import BrokerUnavailable
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.control_plane.test_end_to_end import _finished
from tests.support.connections import assert_failed_connect_leaves_nothing, wrong_password
from tests.support.processes import marker, running
from tests.support.system import StartAgent, make_token, post_until_created, wait_for


async def _publish(amqp_url: str, exchange: str, routing_key: str, body: bytes, signer: MessageSigner,
                   headers: dict[str, str] | None = None) -> None:
    """Publish as the control plane does, signed: these messages test what agents do with bodies."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        await target.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                              headers={HEADER_SIGNATURE: signer.sign(body), **(headers or {})}),
                             routing_key=routing_key, mandatory=True)


async def _dead_letters(db: asyncpg.Pool, n: int) -> list[asyncpg.Record] | None:
    rows = await db.fetch("SELECT * FROM dead_letters ORDER BY id")
    return rows if len(rows) >= n else None


async def test_poison_messages_reach_dead_letters_with_reason(
    cp: ControlPlane, admin: httpx.AsyncClient, start_agent: StartAgent, db: asyncpg.Pool, amqp_url: str
) -> None:
    agent = await start_agent(noop_agent(skills=["python"]))
    pool = agent.agent.pool_id
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents"), what="the agent's hello")

    await _publish(amqp_url, cp.topology.tasks, pool, b"\x00 not json", cp.signer)
    rows = await wait_for(lambda: _dead_letters(db, 1), what="the garbage message in dead_letters")
    assert rows[0]["task_id"] is None and "undecodable" in rows[0]["reason"]

    # A real task whose message names a type the pool does not handle.
    created = (await admin.post("/api/v1/tasks", json={"type": "compile", "requires": ["python"]})).json()
    assert created["status"] == "pending"
    wrong = TaskMessage(task_id=uuid.UUID(created["id"]), attempt=1, type="compile", timeout_s=5, pool_id=pool)
    await _publish(amqp_url, cp.topology.tasks, pool, wrong.model_dump_json().encode(), cp.signer)
    task = await _finished(admin, created["id"])
    assert task["status"] == "dead"
    assert "unknown task type" in task["status_reason"]


async def test_delivery_limit_makes_a_message_poison(
    cp: ControlPlane, admin: httpx.AsyncClient, db: asyncpg.Pool, amqp_url: str
) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "noop"})).json()
    message = TaskMessage(task_id=uuid.UUID(created["id"]), attempt=1, type="noop", timeout_s=5, pool_id="pool-crashy")
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await declare_pool_queue(channel, cp.topology, "pool-crashy")
        await _publish(amqp_url, cp.topology.tasks, "pool-crashy", message.model_dump_json().encode(), cp.signer)
        # A consumer that crashes on every delivery: the broker counts and finally dead-letters it.
        for _ in range(cp.topology.delivery_limit + 1):
            delivery = await wait_for(lambda: queue.get(no_ack=False, fail=False), what="a redelivery")
            await delivery.nack(requeue=True)
    task = await _finished(admin, created["id"])
    assert task["status"] == "dead"
    assert "delivery limit" in task["status_reason"]


def _agent_process(runtime_settings: AgentRuntimeSettings, base_url: str, token: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **runtime_settings.broker.environment(), DEVART_AGENT_HEARTBEAT_INTERVAL_S="0.3",
               DEVART_AGENT_API_URL=base_url, DEVART_AGENT_TOKEN=token)
    return subprocess.Popen([sys.executable, "-m", "tests.agents.sdk.sample_agent", "--slots", "1"], env=env)


async def _running_on_one_of_two(admin: httpx.AsyncClient, runtime_settings: AgentRuntimeSettings,
                                 db: asyncpg.Pool, base_url: str, token: str, processes: list[subprocess.Popen[bytes]],
                                 task: dict) -> tuple[str, str]:
    """Start two agent processes (into ``processes``, for the caller to kill), submit ``task`` (a
    sleep, with an hour's timeout) and wait until it runs: its id and the agent running it."""
    processes.extend(_agent_process(runtime_settings, base_url, token) for _ in range(2))
    await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM agents WHERE state = 'active'"), what="two agents")
    created = (await admin.post("/api/v1/tasks", json={
        "type": "sleep", "requires": ["test"], "timeout_s": 3600, **task})).json()
    running = await wait_for(lambda: db.fetchrow(
        "SELECT agent_id FROM tasks WHERE id = $1 AND status = 'running'", uuid.UUID(created["id"])),
        what="the task to start")
    return created["id"], running["agent_id"]


async def test_agent_killed_mid_task_hands_it_over(
    admin: httpx.AsyncClient, runtime_settings: AgentRuntimeSettings, db: asyncpg.Pool, base_url: str,
    database_url: str,
) -> None:
    """The killed agent's connection closes, so the broker gives its unacknowledged task message to
    the other agent at once: the task ends on it well before its hour's timeout (and the 10 s lease
    of these tests), its one attempt delivered twice, and the reaper never acts on it."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        task_id, first = await _running_on_one_of_two(admin, runtime_settings, db, base_url,
                                                      await make_token(database_url, "agent"), processes,
                                                      {"input": {"seconds": 2}})
        logs_url = f"/api/v1/tasks/{task_id}/logs"
        await wait_for(lambda: _lines(admin, logs_url), what="the first agent's log line")
        pid = await db.fetchval("SELECT pid FROM agents WHERE id = $1", first)
        os.kill(pid, signal.SIGKILL)

        task = await _finished(admin, task_id, timeout_s=30)
        assert task["status"] == "succeeded"
        assert task["agent_id"] != first
        assert len(task["attempts"]) == 1
        assert task["attempts"][0]["deliveries"] == 2
        succeeded = [t for t in task["transitions"] if t["to_status"] == "succeeded"]
        assert len(succeeded) == 1
        assert [t["to_status"] for t in task["transitions"]] == ["pending", "queued", "running", "running", "succeeded"]
        assert not [t for t in task["transitions"] if t["actor"] == "reaper"]
        await wait_for(lambda: db.fetchval("SELECT state = 'gone' FROM agents WHERE id = $1", first),
                       what="the killed agent to be marked gone")
        # both agents numbered their lines of the attempt from 0, and every line is kept, in order
        assert [(line["agent_id"], line["seq"], line["line"]) for line in await _lines(admin, logs_url)] == [
            (first, 0, "sleeping 2.0s"), (task["agent_id"], 0, "sleeping 2.0s"),
            (task["agent_id"], 1, "woke up"),
        ]
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def test_a_cancel_for_a_gone_agent_is_dropped_and_audited(
    admin: httpx.AsyncClient, runtime_settings: AgentRuntimeSettings, db: asyncpg.Pool, base_url: str,
    database_url: str,
) -> None:
    process = _agent_process(runtime_settings, base_url, await make_token(database_url, "agent"))
    try:
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM agents WHERE state = 'active'"), what="the agent")
        created = (await admin.post("/api/v1/tasks", json={
            "type": "sleep", "input": {"seconds": 600}, "requires": ["test"]})).json()
        task_id = uuid.UUID(created["id"])
        running = await wait_for(lambda: db.fetchrow(
            "SELECT agent_id FROM tasks WHERE id = $1 AND status = 'running'", task_id), what="the task to start")
    finally:
        process.kill()
        process.wait()
    await wait_for(lambda: db.fetchval("SELECT state = 'gone' FROM agents WHERE id = $1", running["agent_id"]),
                   what="the agent to be gone")
    # The task still runs on paper, so cancelling it enqueues a cancel for the gone agent, whose
    # control queue died with it: the broker returns that publish as unroutable.
    assert (await admin.post(f"/api/v1/tasks/{task_id}/cancel")).json()["status"] == "cancelled"
    dropped = await wait_for(lambda: db.fetchrow(
        "SELECT actor, target, detail->>'reason' AS reason FROM audit_log "
        "WHERE action = 'outbox.command_dropped' AND detail->>'task_id' = $1", str(task_id)),
        what="the dropped cancel in the audit log")
    assert dropped["actor"] == "outbox-relay" and dropped["target"] == running["agent_id"]
    assert dropped["reason"] == (
        f"unroutable cancel command dropped: agent {running['agent_id']} is gone or unknown")
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE routing_key = $1",
                             f"agent.{running['agent_id']}") == 0


async def _lines(api: httpx.AsyncClient, url: str) -> list[dict]:
    return (await api.get(url)).json()["lines"]


def _sandbox(tmp_path: Path) -> SandboxSettings:
    return SandboxSettings(root=tmp_path / "sandboxes", kill_grace_s=1)


async def test_cancel_kills_the_process_tree(
    admin: httpx.AsyncClient, start_agent: StartAgent, tmp_path: Path
) -> None:
    await start_agent(build_shell_agent(slots=1, settings=_sandbox(tmp_path)))
    mark = marker()
    created = (await admin.post("/api/v1/tasks", json={
        "type": "shell", "requires": ["shell"], "input": {"script": f"sleep {mark} & echo child=$!; wait"}})).json()

    async def child_started() -> bool:
        lines = (await admin.get(f"/api/v1/tasks/{created['id']}/logs")).json()["lines"]
        return any(re.fullmatch(r"child=\d+", line["line"]) for line in lines)

    await wait_for(child_started, what="the grandchild's pid in the task log")
    assert running(mark)
    cancelled = await admin.post(f"/api/v1/tasks/{created['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"

    async def gone() -> bool:
        return not running(mark)

    await wait_for(gone, what=f"the grandchild (sleep {mark}) to be killed")
    task = await wait_for(lambda: _attempt_closed(admin, created["id"]), what="the attempt to close")
    assert task["attempts"][0]["status"] == "cancelled"


async def _attempt_closed(api: httpx.AsyncClient, task_id: str) -> dict | None:
    task = (await api.get(f"/api/v1/tasks/{task_id}")).json()
    return task if task["attempts"] and task["attempts"][-1]["finished_at"] else None


async def test_deadline_times_out(admin: httpx.AsyncClient, start_agent: StartAgent, tmp_path: Path) -> None:
    await start_agent(build_shell_agent(slots=1, settings=_sandbox(tmp_path)))
    created = (await admin.post("/api/v1/tasks", json={
        "type": "shell", "requires": ["shell"], "timeout_s": 1, "input": {"command": ["sleep", "30"]}})).json()
    task = await _finished(admin, created["id"])
    assert task["status"] == "timed_out"
    assert task["attempts"][0]["status"] == "timed_out"


async def test_tasks_of_a_vanished_pool_move_to_another(
    admin: httpx.AsyncClient, start_agent: StartAgent, db: asyncpg.Pool
) -> None:
    lonely = await start_agent(noop_agent(skills=["python"]))
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM agents"), what="the first agent")
    assert (await admin.post(f"/api/v1/agents/{lonely.agent.agent_id}/pause")).status_code == 202
    await wait_for(lambda: db.fetchval("SELECT state = 'paused' FROM agents"), what="the pause")
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["python"]})).json()
    assert created["status"] == "queued" and created["pool_id"] == lonely.agent.pool_id

    other = await start_agent(noop_agent(skills=["python", "docker"]))
    await lonely.drain()
    task = await _finished(admin, created["id"])
    assert task["status"] == "succeeded"
    assert task["agent_id"] == other.agent.agent_id
    assert any("re-dispatched" in t["reason"] for t in task["transitions"])


async def test_a_control_plane_refused_by_the_broker_leaves_nothing_open(settings: Settings) -> None:
    broker = settings.broker.model_copy(update={"amqp_url": wrong_password(settings.broker.amqp_url)})
    plane = ControlPlane(settings.model_copy(update={"broker": broker}))
    await assert_failed_connect_leaves_nothing(plane.__aenter__, BrokerUnavailable)


async def test_a_frozen_agents_attempt_fails_as_agent_gone_and_is_retried(
    admin: httpx.AsyncClient, runtime_settings: AgentRuntimeSettings, db: asyncpg.Pool, base_url: str,
    database_url: str,
) -> None:
    """An agent that stops without its connection closing (SIGSTOP: frozen, or cut off) keeps its
    task message unacknowledged until the broker's heartbeat timeout; its heartbeats stop, so once
    its lease (10 s here) lapses the reaper fails the attempt as the agent gone and queues the next,
    which the other agent runs, long before the task's hour's timeout."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        task_id, first = await _running_on_one_of_two(admin, runtime_settings, db, base_url,
                                                      await make_token(database_url, "agent"), processes,
                                                      {"input": {"seconds": 2}, "max_attempts": 2, "backoff": {"base_s": 0.1}})
        pid = await db.fetchval("SELECT pid FROM agents WHERE id = $1", first)
        os.kill(pid, signal.SIGSTOP)

        task = await _finished(admin, task_id, timeout_s=60)
        assert task["status"] == "succeeded", task["status_reason"]
        assert task["agent_id"] != first
        assert [(a["attempt"], a["status"]) for a in task["attempts"]] == [(1, "failed"), (2, "succeeded")]
        assert task["attempts"][0]["error"]["type"] == "AgentGone"
        gone = [t for t in task["transitions"] if t["actor"] == "reaper"]
        assert [(t["from_status"], t["to_status"]) for t in gone] == [("running", "failed")]
        assert gone[0]["reason"] == f"agent {first} is gone: silent past its lease"
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def test_a_connection_lost_mid_transaction_answers_503_and_writes_nothing(
    admin: httpx.AsyncClient, database_url: str, db: asyncpg.Pool
) -> None:
    blocker, terminator = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            # Both requests' transactions stop at their first read of tasks, and each backend that
            # waits there is ended, as a failover or an operator ends a session.
            await blocker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            single = asyncio.create_task(admin.post("/api/v1/tasks", json={"type": "noop"},
                                                    headers={"Idempotency-Key": "lost-single"}))
            batch = asyncio.create_task(admin.post("/api/v1/tasks/batch", json={"tasks": [{"type": "noop"}] * 2},
                                                   headers={"Idempotency-Key": "lost-batch"}))

            async def answered() -> bool:
                # outside the blocker's transaction, which would see one snapshot of pg_stat_activity
                await terminator.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'")
                return single.done() and batch.done()

            await wait_for(answered, what="both requests to be answered")
    finally:
        await blocker.close()
        await terminator.close()
    for response in (single.result(), batch.result()):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "2"
        assert response.json()["error"]["message"].startswith("the database is unavailable")
    for table in ("tasks", "attempts", "task_transitions", "outbox"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, f"a row of {table} outlived its transaction"
    # the client retries, with the same keys, and gets its tasks once each
    await post_until_created(lambda: admin, "/api/v1/tasks", {"type": "noop"}, idempotency_key="lost-single")
    await post_until_created(lambda: admin, "/api/v1/tasks/batch", {"tasks": [{"type": "noop"}] * 2},
                             idempotency_key="lost-batch")
    assert await db.fetchval("SELECT count(*) FROM tasks") == 3
