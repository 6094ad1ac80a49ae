"""Terminal events of several tasks in one broker message: the agent sends those that are ready
together as one signed batch, the control plane applies every event of it, and a batch that is not
signed by the one agent all its events name is set aside whole."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from uuid import UUID

import aio_pika
import asyncpg
import httpx
from pydantic import BaseModel

from agents.sdk import Agent, BrokerSettings, TaskContext, TaskSucceeded, task_handler
from agents.sdk.messages import BATCH_TYPE, HEADER_TRACEPARENTS, AgentHello, batch_routing_key
from agents.sdk.trust import HEADER_SIGNATURE, delivery_proof, event_signature_valid
from control_plane.service import ControlPlane
from tests.support.system import StartAgent, register_in_database, wait_for

release = asyncio.Event()


class Nothing(BaseModel):
    pass


@task_handler("hold", input=Nothing)
async def hold(ctx: TaskContext, data: Nothing) -> dict[str, str]:
    await release.wait()
    return {"task": str(ctx.task_id)}


async def _statuses(admin: httpx.AsyncClient, ids: list[str]) -> list[str]:
    return [(await admin.get(f"/api/v1/tasks/{i}")).json()["status"] for i in ids]


async def test_results_ready_together_travel_in_one_signed_batch_and_all_apply(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings, db: asyncpg.Pool,
    cp: ControlPlane,
) -> None:
    release.clear()
    runtime = await start_agent(Agent("holder", skills=["python"], slots=4, handlers=[hold]), event_batch_s=0.3)
    topology = broker_settings.topology()
    connection = await aio_pika.connect(broker_settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        spy = await channel.declare_queue(exclusive=True)
        await spy.bind(topology.events, routing_key=batch_routing_key(runtime.agent.agent_id))
        created = (await admin.post("/api/v1/tasks/batch", json={"tasks": [
            {"type": "hold", "requires": ["python"]} for _ in range(4)]})).json()["tasks"]
        ids = [t["id"] for t in created]

        async def all_running() -> bool:
            return await _statuses(admin, ids) == ["running"] * 4

        await wait_for(all_running, what="four tasks running on one agent")
        release.set()

        async def all_succeeded() -> bool:
            return await _statuses(admin, ids) == ["succeeded"] * 4

        await wait_for(all_succeeded, what="the four results applied")
        async with asyncio.timeout(10):
            message = await anext(spy.iterator())
        async with message.process():
            pass
    assert message.type == BATCH_TYPE
    events = json.loads(message.body)
    assert sorted(e["task_id"] for e in events) == sorted(ids)
    assert {e["kind"] for e in events} == {"succeeded"}
    # each result carries the proof of delivery of its own attempt
    assert [e["proof"] for e in events] == [
        delivery_proof(cp.deliveries.secret(UUID(e["task_id"]), 1), runtime.agent.agent_id) for e in events]
    assert event_signature_valid(runtime.credentials.event_key, message.body, message.headers[HEADER_SIGNATURE])
    assert len(message.headers[HEADER_TRACEPARENTS]) == 4
    for task_id in ids:
        history = await db.fetch("SELECT to_status FROM task_transitions WHERE task_id = $1 ORDER BY id", task_id)
        assert [r["to_status"] for r in history] == ["pending", "queued", "running", "succeeded"]


async def test_a_batch_not_signed_by_the_agent_all_its_events_name_is_set_aside(
    admin: httpx.AsyncClient, start_agent: StartAgent, cp: ControlPlane, broker_settings: BrokerSettings,
    database_url: str, db: asyncpg.Pool,
) -> None:
    release.clear()
    runtime = await start_agent(Agent("holder", skills=["python"], slots=2, handlers=[hold]))
    created = (await admin.post("/api/v1/tasks/batch", json={"tasks": [
        {"type": "hold", "requires": ["python"]} for _ in range(2)]})).json()["tasks"]
    ids = [t["id"] for t in created]

    async def both_running() -> bool:
        return await _statuses(admin, ids) == ["running"] * 2

    await wait_for(both_running, what="two tasks running on the real agent")
    intruder = await register_in_database(cp, database_url, "intruder-agent", "intruder-pool")

    def result(task_id: str, agent_id: str) -> bytes:
        return TaskSucceeded(agent_id=agent_id, seq=99, task_id=task_id, attempt=1, result={"by": "the attacker"},
                             ts=datetime.now(UTC)).model_dump_json().encode()

    # the holder's results, signed by the intruder; and one event of each agent, signed by the intruder
    as_holder = b"[" + b",".join(result(i, runtime.agent.agent_id) for i in ids) + b"]"
    mixed = b"[" + result(ids[0], "intruder-agent") + b"," + result(ids[1], runtime.agent.agent_id) + b"]"
    # the intruder's own events, its hello announcing the holder's pool behind a result
    hello = AgentHello(agent_id="intruder-agent", seq=1, name="intruder", pool_id=runtime.agent.pool_id,
                       skills=["python"], types=["hold"], slots=1).model_dump_json().encode()
    hello_inside = b"[" + result(ids[0], "intruder-agent") + b"," + hello + b"]"
    connection = await aio_pika.connect(broker_settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(broker_settings.topology().events)
        for body in (as_holder, mixed, hello_inside):
            await events.publish(aio_pika.Message(body, type=BATCH_TYPE, headers={HEADER_SIGNATURE: intruder.sign_event(body)},
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                 routing_key=batch_routing_key("intruder-agent"))

    async def all_refused() -> list[str]:
        rows = await db.fetch("SELECT reason, body FROM dead_letters ORDER BY id")
        return [r["reason"] for r in rows] if {bytes(r["body"]) for r in rows} >= {as_holder, mixed, hello_inside} else []

    reasons = await wait_for(all_refused, what="the forged batches set aside")
    assert any("forged" in r for r in reasons) and any("naming 2 agents" in r for r in reasons), reasons
    assert any("other events than results" in r for r in reasons), reasons
    assert await db.fetchval("SELECT count(*) FROM agents WHERE id = 'intruder-agent'") == 0
    assert await _statuses(admin, ids) == ["running"] * 2
    release.set()

    async def both_succeeded() -> bool:
        return await _statuses(admin, ids) == ["succeeded"] * 2

    await wait_for(both_succeeded, what="the real agent's results")
    for task_id in ids:
        assert (await admin.get(f"/api/v1/tasks/{task_id}")).json()["result"] == {"task": task_id}


async def test_results_delivered_twice_in_one_batch_or_again_later_apply_once(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings, db: asyncpg.Pool,
    cp: ControlPlane,
) -> None:
    """A batch of results is applied by one statement outside a transaction; the same batch again,
    a batch naming one attempt twice, a late result of the attempt and one of an attempt that does
    not exist change nothing more, and the agent's own results, arriving last, are ignored."""
    release.clear()
    runtime = await start_agent(Agent("holder", skills=["python"], slots=2, handlers=[hold]))
    agent_id = runtime.agent.agent_id
    created = (await admin.post("/api/v1/tasks/batch", json={"tasks": [
        {"type": "hold", "requires": ["python"]} for _ in range(2)]})).json()["tasks"]
    ids = [t["id"] for t in created]

    async def both_running() -> bool:
        return await _statuses(admin, ids) == ["running"] * 2

    await wait_for(both_running, what="two tasks running on the real agent")

    def result(task_id: str, attempt: int, by: str) -> bytes:
        proof = delivery_proof(cp.deliveries.secret(UUID(task_id), attempt), agent_id)
        return TaskSucceeded(agent_id=agent_id, seq=99, task_id=task_id, attempt=attempt, proof=proof,
                             started_at=datetime.now(UTC), result={"by": by}).model_dump_json().encode()

    both = b"[" + b",".join(result(i, 1, "the first batch") for i in ids) + b"]"
    twice = b"[" + result(ids[0], 1, "a duplicate") + b"," + result(ids[0], 1, "a duplicate") + b"]"
    late = b"[" + result(ids[1], 1, "a late copy") + b"," + result(ids[1], 2, "no such attempt") + b"]"
    assert cp.workers is not None
    applied_before = cp.workers.events.applied
    connection = await aio_pika.connect(broker_settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(broker_settings.topology().events)
        for body in (both, both, twice, late):
            await events.publish(aio_pika.Message(body, type=BATCH_TYPE, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                                  headers={HEADER_SIGNATURE: runtime.credentials.sign_event(body)}),
                                 routing_key=batch_routing_key(agent_id))

    async def all_applied() -> bool:
        return cp.workers is not None and cp.workers.events.applied >= applied_before + 8

    await wait_for(all_applied, what="the four batches applied")
    release.set()  # the agent's own results come last, then a third task's: once it succeeded, they were applied
    third = (await admin.post("/api/v1/tasks", json={"type": "hold", "requires": ["python"]})).json()["id"]

    async def third_succeeded() -> bool:
        return await _statuses(admin, [third]) == ["succeeded"]

    await wait_for(third_succeeded, what="a task after the agent's own results")
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    for task_id in ids:
        task = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
        assert (task["status"], task["result"]) == ("succeeded", {"by": "the first batch"}), task
        history = await db.fetch("SELECT to_status FROM task_transitions WHERE task_id = $1 ORDER BY id", UUID(task_id))
        assert [r["to_status"] for r in history] == ["pending", "queued", "running", "succeeded"]
        attempts = await db.fetch("SELECT attempt, status, result FROM attempts WHERE task_id = $1", UUID(task_id))
        assert [(a["attempt"], a["status"], json.loads(a["result"])) for a in attempts] == [
            (1, "succeeded", {"by": "the first batch"})]
