"""Attack: an agent speaks for another agent of its own pool. Both are registered in that pool with
tokens scoped to it and sign with their genuine keys, so the signature and pool checks let through
an intruder's ``started`` that made the victim's running attempt the intruder's (its ``succeeded``
then finished it with the intruder's result), and its claim of an attempt still queued. Now every
task event carries a proof of delivery (the HMAC of its agent id under the attempt's delivery
secret, which only the attempt's task message carries), and the events consumer sets aside one
that does not prove the attempt was delivered to its agent. A redelivery after a crash still
completes: the agent the broker hands the message to next holds the secret too."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import asyncpg
import httpx
from pydantic import BaseModel

from agents import noop
from agents.sdk import (
    Agent,
    AgentHeartbeat,
    AgentHello,
    BrokerSettings,
    RunningTask,
    TaskContext,
    TaskLog,
    TaskStarted,
    TaskSucceeded,
    task_handler,
    trust,
)
from agents.sdk.messages import BATCH_TYPE, LogLine, batch_routing_key
from agents.sdk.trust import HEADER_DELIVERY_SECRET, AgentCredentials, delivery_proof, register
from control_plane.service import ControlPlane
from tests.control_plane.test_end_to_end import _finished
from tests.security import delivery_agent
from tests.security.test_events_forged import _rows, _task
from tests.security.test_events_pools import _heartbeat_after, _signed_publish, _status, _token
from tests.support.system import StartAgent, wait_all_succeeded, wait_for

ROOT = Path(__file__).resolve().parents[2]
releases: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
"""Per agent id: set to let that agent's held tasks finish."""


class Nothing(BaseModel):
    pass


@task_handler("hold", input=Nothing)
async def hold(ctx: TaskContext, data: Nothing) -> dict[str, str]:
    await ctx.log(f"held by {ctx.agent_id}")
    await releases[ctx.agent_id].wait()
    return {"by": ctx.agent_id}


async def _submit(admin: httpx.AsyncClient) -> dict:
    response = await admin.post("/api/v1/tasks", json={"type": "hold", "requires": ["python"]})
    assert response.status_code == 201, response.text
    return response.json()


async def _started_event(spy: aio_pika.abc.AbstractQueue, task_id: str) -> TaskStarted:
    """The first started event for ``task_id`` seen on the events exchange (what any reader of the
    events queue sees)."""
    async with asyncio.timeout(20):
        async for message in spy.iterator():
            async with message.process():
                if message.type == "started" and message.routing_key == f"task.{task_id}.started":
                    return TaskStarted.model_validate_json(message.body)
    raise AssertionError("the events exchange closed")


async def test_an_agent_cannot_claim_log_to_or_finish_an_attempt_delivered_to_another_agent_of_its_pool(
    admin: httpx.AsyncClient, base_url: str, start_agent: StartAgent, cp: ControlPlane,
    broker_settings: BrokerSettings, database_url: str,
) -> None:
    intruder_agent = Agent("intruder", skills=["python"], slots=1, handlers=[hold])
    victim_agent = Agent("victim", skills=["python"], slots=1, handlers=[hold])
    pool, intruder_id, victim_id = victim_agent.pool_id, intruder_agent.agent_id, victim_agent.agent_id
    assert intruder_agent.pool_id == pool
    # both real agents of the one pool, each registered over HTTP with a token scoped to it
    intruders_token = await _token(admin, "intruders", [pool])
    intruder: AgentCredentials = await register(base_url, intruders_token, intruder_id, pool)
    await start_agent(intruder_agent, credentials=intruder)
    own = await _submit(admin)
    await wait_for(lambda: _status(admin, own["id"], "running"), what="the intruder's own task to run on it")
    await start_agent(victim_agent, credentials=await register(
        base_url, await _token(admin, "victims", [pool]), victim_id, pool))

    connection = await aio_pika.connect(broker_settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        spy = await channel.declare_queue(exclusive=True)  # a broker client reading task events
        await spy.bind(broker_settings.topology().events, routing_key="task.#")
        delivered = await _submit(admin)
        victims_start = await _started_event(spy, delivered["id"])
    assert victims_start.agent_id == victim_id and victims_start.proof is not None
    running = await wait_for(lambda: _status(admin, delivered["id"], "running"), what="a task running on the victim")
    assert running["agent_id"] == victim_id
    queued = await _submit(admin)
    assert (await _task(admin, queued["id"]))["status"] == "queued"

    # proofs the intruder has or can make: none; one from a guessed secret; its genuine proof of its
    # own attempt; and the victim's proof read off the events queue
    own_proof = delivery_proof(cp.deliveries.secret(uuid.UUID(own["id"]), 1), intruder_id)
    proofs = {"none": None, "guessed": delivery_proof(secrets.token_bytes(32), intruder_id), "own attempt's": own_proof,
              "the victim's": victims_start.proof}
    now = datetime.now(UTC)
    forged = []
    for target in (delivered, queued):
        for proof in proofs.values():
            common = {"agent_id": intruder_id, "task_id": target["id"], "attempt": 1, "proof": proof}
            forged += [
                TaskStarted(**common, seq=0, pool_id=pool),
                TaskLog(**common, seq=1, lines=[LogLine(seq=0, ts=now, text="the intruder was here")]),
                TaskSucceeded(**common, seq=2, started_at=now, result={"by": "the intruder"}),
            ]
    for event in forged:
        await _signed_publish(broker_settings, intruder, event)
    # a batch of results, as the intruder's batcher sends them: each event carries its own proof
    batch = [TaskSucceeded(agent_id=intruder_id, seq=3, task_id=target["id"], attempt=1, proof=own_proof,
                           started_at=now, result={"by": "the intruder"}) for target in (delivered, queued)]
    body = b"[" + b",".join(e.model_dump_json().encode() for e in batch) + b"]"
    await _publish_batch(broker_settings, intruder_id, body, intruder.sign_event(body))
    forged += batch
    # a heartbeat needs no proof, but its progress counts only for the attempts bound to its agent:
    # a second agent the intruder's token registers says hello, then lists the victim's attempts
    spare = await register(base_url, intruders_token, "intruder-spare", pool)
    await _signed_publish(broker_settings, spare, AgentHello(
        agent_id="intruder-spare", seq=0, name="spare", pool_id=pool, skills=["python"], types=["hold"], slots=1))
    await _signed_publish(broker_settings, spare, AgentHeartbeat(
        agent_id="intruder-spare", seq=1, pool_id=pool, free_slots=0,
        running=[RunningTask(task_id=target["id"], attempt=1, progress=0.99, message="the intruder's")
                 for target in (delivered, queued)]))
    published_at = (await _rows(database_url, "SELECT now() AS at"))[0]["at"]

    async def refusals() -> list[str]:
        rows = await _rows(database_url, "SELECT reason FROM dead_letters WHERE reason LIKE $1", f"%{intruder_id}%")
        return [r["reason"] for r in rows] if len(rows) >= len(forged) else []

    reasons = await wait_for(refusals, what="every forged event set aside")
    assert sorted(reasons) == sorted(
        f"agent event: {e.kind} event for task {e.task_id} attempt 1 from agent {intruder_id!r} "
        f"{'without a proof of delivery' if e.proof is None else 'with a proof of delivery that does not match'}: "
        "the attempt's task message was not delivered to that agent"
        for e in forged
    ), reasons
    # the events queue got past the forgeries: nothing of them was applied
    await wait_for(lambda: _heartbeat_after(database_url, victim_id, published_at), what="a later heartbeat")
    now_delivered, now_queued = await _task(admin, delivered["id"]), await _task(admin, queued["id"])
    assert (now_delivered["status"], now_delivered["agent_id"], now_delivered["result"]) == ("running", victim_id, None)
    assert (now_queued["status"], now_queued["agent_id"], now_queued["result"]) == ("queued", None, None)
    await wait_for(lambda: _rows(database_url, "SELECT 1 FROM agents WHERE id = 'intruder-spare' AND free_slots = 0"),
                   what="the spare agent's heartbeat applied")
    progress = await _rows(database_url, "SELECT progress FROM attempts WHERE task_id = ANY($1)",
                           [uuid.UUID(t["id"]) for t in (delivered, queued)])
    assert [r["progress"] for r in progress] == [None, None]

    releases[victim_id].set()  # the victim finishes its task, then takes the queued one and finishes it
    for task in (delivered, queued):
        done = await wait_for(lambda t=task: _status(admin, t["id"], "succeeded"), what="the victim's results")
        assert (done["agent_id"], done["result"]) == (victim_id, {"by": victim_id}), done
        assert {t["actor"] for t in done["transitions"]} == {"admin-token", "dispatcher", victim_id}, done["transitions"]
        lines = (await admin.get(f"/api/v1/tasks/{task['id']}/logs")).json()["lines"]
        assert [(line["agent_id"], line["line"]) for line in lines] == [(victim_id, f"held by {victim_id}")]
    releases[intruder_id].set()
    mine = await wait_for(lambda: _status(admin, own["id"], "succeeded"), what="the intruder's own result")
    assert (mine["agent_id"], mine["result"]) == (intruder_id, {"by": intruder_id})


async def _publish_batch(broker_settings: BrokerSettings, agent_id: str, body: bytes, signature: str) -> None:
    connection = await aio_pika.connect(broker_settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(broker_settings.topology().events)
        await events.publish(aio_pika.Message(body, type=BATCH_TYPE, headers={trust.HEADER_SIGNATURE: signature},
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key=batch_routing_key(agent_id))


async def test_a_task_redelivered_after_its_agent_is_killed_finishes_on_the_other_agent_of_the_pool(
    admin: httpx.AsyncClient, base_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool, tmp_path: Path,
) -> None:
    """The first agent's start binds the attempt to it; SIGKILL hands the unacked message to the
    other agent, whose start (sent first, as for every redelivered attempt, although its run ends
    at once) moves the attempt to it with the same attempt's proof, so its result is applied."""
    pool = delivery_agent.build_agent().pool_id
    env = dict(os.environ, **broker_settings.environment(), DEVART_AGENT_API_URL=base_url,
               DEVART_AGENT_TOKEN=await _token(admin, "redelivery", [pool]), DEVART_AGENT_HEARTBEAT_INTERVAL_S="0.3")
    processes = [await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.security.delivery_agent",
                                                      cwd=ROOT, env=env) for _ in range(2)]
    try:
        await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM agents WHERE pool_id = $1 AND state = 'active'",
                                           pool), what="both agents of the pool", timeout_s=60)
        created = (await admin.post("/api/v1/tasks", json={
            "type": "once", "requires": ["redelivery"], "input": {"marker": str(tmp_path / "marker")}})).json()
        first = await wait_for(lambda: db.fetchrow("SELECT agent_id FROM tasks WHERE id = $1 AND status = 'running'",
                                                   uuid.UUID(created["id"])), what="the task to start")
        pid = await db.fetchval("SELECT pid FROM agents WHERE id = $1", first["agent_id"])
        killed = next(p for p in processes if p.pid == pid)
        killed.send_signal(signal.SIGKILL)
        await killed.wait()

        task = await _finished(admin, created["id"], timeout_s=30)
        survivor = task["agent_id"]
        assert task["status"] == "succeeded", task
        assert survivor != first["agent_id"]
        assert task["result"] == {"by": survivor, "first": first["agent_id"]}
        assert [(a["attempt"], a["deliveries"], a["agent_id"]) for a in task["attempts"]] == [(1, 2, survivor)]
        assert [(t["to_status"], t["actor"], t["reason"]) for t in task["transitions"][2:]] == [
            ("running", first["agent_id"], f"started on {first['agent_id']}"),
            ("running", survivor, f"redelivered to {survivor}"),
            ("succeeded", survivor, f"succeeded on {survivor}"),
        ]
        assert not await db.fetch("SELECT reason FROM dead_letters WHERE reason LIKE 'agent event%'")
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_an_agent_killed_amid_a_burst_leaves_no_task_lost_or_ended_twice(
    admin: httpx.AsyncClient, base_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool,
) -> None:
    """Results of several tasks are confirmed by the broker together, and their acks go out after
    that turn of the agent's loop, coalesced into as few frames as the tags allow. SIGKILL amid a
    burst leaves deliveries whose results were confirmed but not acked, and others not reported
    yet: the broker hands them all to the next agent of the pool, and every task ends once."""
    pool = noop.build_agent().pool_id
    env = dict(os.environ, **broker_settings.environment(), DEVART_AGENT_API_URL=base_url,
               DEVART_AGENT_TOKEN=await _token(admin, "burst", [pool]), DEVART_AGENT_HEARTBEAT_INTERVAL_S="0.3")

    async def spawn() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "agents.noop", "--slots", "8",
                                                    cwd=ROOT, env=env)

    processes = [await spawn()]
    try:
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM agents WHERE pool_id = $1 AND state = 'active'",
                                           pool), what="the agent of the pool", timeout_s=60)
        response = await admin.post("/api/v1/tasks/batch", json={"tasks": [
            {"type": "noop", "requires": ["noop"]} for _ in range(200)]})
        assert response.status_code == 201, response.text
        ids = [t["id"] for t in response.json()["tasks"]]
        await wait_for(lambda: db.fetchval("SELECT count(*) >= 20 FROM tasks WHERE id = ANY($1) AND status = "
                                           "'succeeded'", [uuid.UUID(i) for i in ids]), what="a part of the burst")
        processes[0].send_signal(signal.SIGKILL)
        await processes[0].wait()
        processes.append(await spawn())

        await wait_all_succeeded(db, ids, timeout_s=60)
        ends = await db.fetch("SELECT task_id, count(*) AS ends FROM task_transitions WHERE task_id = ANY($1) "
                              "AND to_status = 'succeeded' GROUP BY task_id", [uuid.UUID(i) for i in ids])
        assert len(ends) == len(ids) and {r["ends"] for r in ends} == {1}
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_a_dead_lettered_task_message_is_kept_and_shown_without_its_delivery_secret(
    admin: httpx.AsyncClient, start_agent: StartAgent, broker_settings: BrokerSettings, db: asyncpg.Pool,
) -> None:
    """A consumer of the pool queue that fails every delivery of a real task message: the broker
    dead-letters it with its headers, and what ``dead_letters`` keeps and the API shows has lost
    the secret the message carried."""
    runtime = await start_agent(Agent("paused", skills=["python"], slots=1, handlers=[hold]))
    assert (await admin.post(f"/api/v1/agents/{runtime.agent.agent_id}/pause")).status_code == 202
    await wait_for(lambda: db.fetchval("SELECT state = 'paused' FROM agents WHERE id = $1", runtime.agent.agent_id),
                   what="the agent paused (its pool stays live, its queue unconsumed)")
    created = await _submit(admin)
    topology = broker_settings.topology()
    connection = await aio_pika.connect(broker_settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.pool_queue(runtime.agent.pool_id))
        for _ in range(topology.delivery_limit + 1):
            delivery = await wait_for(lambda: queue.get(no_ack=False, fail=False), what="a delivery")
            secret = delivery.headers[HEADER_DELIVERY_SECRET]
            await delivery.nack(requeue=True)
    assert trust.delivery_secret(secret) is not None
    dead = await _finished(admin, created["id"])
    assert dead["status"] == "dead" and "delivery limit" in dead["status_reason"], dead
    letters = [d for d in (await admin.get("/api/v1/dead-letters")).json()["items"] if d["task_id"] == created["id"]]
    assert len(letters) == 1 and "x-death" in letters[0]["headers"], letters
    assert HEADER_DELIVERY_SECRET not in letters[0]["headers"]
    stored = await db.fetchrow("SELECT headers::text AS headers, body FROM dead_letters WHERE task_id = $1",
                               uuid.UUID(created["id"]))
    secret_text = secret.decode() if isinstance(secret, bytes) else secret
    for text in (stored["headers"], bytes(stored["body"]).decode(), str(letters[0])):
        assert secret_text not in text
