"""Applying agent events to Postgres: the control plane is the only writer of task state.

Events arrive at least once and possibly out of order across agents. Each is applied in a
transaction guarded by the task's current ``(status, attempt)``, so a duplicate or a stale event
changes nothing; log lines are keyed by ``(task, attempt, seq)``. Events are applied in batches and
acknowledged only after the commit: a batch of results alone (what an agent's short tasks send) by
one statement that is its own transaction, any other batch in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, TypeGuard
from uuid import UUID

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from opentelemetry import trace
from pydantic import ValidationError

from agents.sdk.messages import (
    BATCH_TYPE,
    HEADER_DEAD_REASON,
    AgentBye,
    AgentHeartbeat,
    AgentHello,
    Event,
    TaskFailed,
    TaskLog,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
    decode_events,
    event_headers,
    safe_text,
)
from agents.sdk.telemetry import extract_context
from agents.sdk.topology import Topology, declare_events_queue, declare_exchanges
from agents.sdk.trust import HEADER_SIGNATURE
from control_plane.agent_keys import DeliverySecrets, EventVerifier
from control_plane.dispatch import queue_retry
from control_plane.outbox import OutboxMessage, enqueue
from control_plane.tasks import TERMINAL, TaskEndHook, cancel_command

log = logging.getLogger("devart.events")
_tracer = trace.get_tracer("devart.events")

# A deadlock or serialization failure aborts the whole batch and is worth retrying as it is.
_TRANSIENT = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
              asyncpg.TransactionRollbackError)


@dataclass
class EventsConfig:
    lease_s: float
    agent_ttl_s: float
    topology: Topology
    deliveries: DeliverySecrets
    on_tasks_ended: TaskEndHook | None = None


@dataclass
class _Effects:
    """What to do after a batch committed."""

    agents_joined: bool = False
    log_tasks: set[UUID] = field(default_factory=set)
    ended_tasks: set[UUID] = field(default_factory=set)
    """Tasks that got a result event: the end hook runs for them before the batch commits."""


class EventApplier:
    """Applies decoded events inside a caller's transaction.

    ``started_at`` and ``finished_at`` are the agent's own times (never later than ours), so they say
    when the work ran, not when the control plane heard of it.
    """

    def __init__(self, config: EventsConfig) -> None:
        self._config = config

    async def apply(self, conn: asyncpg.Connection, event: Event, effects: _Effects) -> None:
        """One event that is applied on its own (started and succeeded ones go set-based)."""
        match event:
            case AgentHello():
                await self._hello(conn, event)
                effects.agents_joined = True
            case AgentHeartbeat():
                await self._heartbeat(conn, event)
            case AgentBye():
                await conn.execute(
                    "UPDATE agents SET state = 'gone', free_slots = 0, running = '[]' WHERE id = $1", event.agent_id
                )
            case TaskProgress():
                await conn.execute(
                    """UPDATE attempts SET progress = $3, progress_msg = $4
                       WHERE task_id = $1 AND attempt = $2 AND agent_id = $5""",
                    event.task_id, event.attempt, event.progress, event.message, event.agent_id,
                )
            case TaskLog():
                await self._log(conn, event)
                effects.log_tasks.add(event.task_id)
            case TaskFailed():
                await self._failed(conn, event)
                effects.ended_tasks.add(event.task_id)

    async def _hello(self, conn: asyncpg.Connection, ev: AgentHello) -> None:
        await conn.execute(
            """INSERT INTO pools (id, skills, types, input_schemas) VALUES ($1, $2, $3, $4)
               ON CONFLICT (id) DO UPDATE SET input_schemas = EXCLUDED.input_schemas
               WHERE pools.input_schemas IS DISTINCT FROM EXCLUDED.input_schemas""",
            ev.pool_id, sorted(set(ev.skills)), sorted(set(ev.types)), ev.input_schemas,
        )
        await conn.execute(
            """INSERT INTO agents (id, name, pool_id, slots, free_slots, state, host, pid, version, last_seq)
               VALUES ($1, $2, $3, $4, $4, 'active', $5, $6, $7, $8)
               ON CONFLICT (id) DO UPDATE SET state = 'active', slots = EXCLUDED.slots,
                   last_heartbeat = now(), last_seq = greatest(agents.last_seq, EXCLUDED.last_seq)""",
            ev.agent_id, ev.name, ev.pool_id, ev.slots, ev.host, ev.pid, ev.version, ev.seq,
        )

    async def _heartbeat(self, conn: asyncpg.Connection, ev: AgentHeartbeat) -> None:
        running = [r.model_dump(mode="json") for r in ev.running]
        updated = await conn.execute(
            """UPDATE agents SET last_heartbeat = now(), free_slots = $2, state = $3, running = $4,
                      last_seq = greatest(last_seq, $5)
               WHERE id = $1 AND last_seq < $5""",
            ev.agent_id, ev.free_slots, ev.state, running, ev.seq,
        )
        if updated == "UPDATE 0" or not ev.running:
            return
        await conn.execute(
            """UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $2)
               FROM unnest($3::uuid[], $4::int[]) AS r(task_id, attempt)
               WHERE t.id = r.task_id AND t.attempt = r.attempt AND t.status = 'running' AND t.agent_id = $1""",
            ev.agent_id, self._config.lease_s, [r.task_id for r in ev.running], [r.attempt for r in ev.running],
        )
        await conn.execute(
            """UPDATE attempts a SET progress = r.progress, progress_msg = r.message
               FROM unnest($1::uuid[], $2::int[], $3::float8[], $4::text[]) AS r(task_id, attempt, progress, message)
               WHERE a.task_id = r.task_id AND a.attempt = r.attempt AND r.progress IS NOT NULL AND a.agent_id = $5""",
            [r.task_id for r in ev.running], [r.attempt for r in ev.running],
            [r.progress for r in ev.running], [r.message for r in ev.running], ev.agent_id,
        )

    async def apply_batch(self, conn: asyncpg.Connection, events: list[Event], effects: _Effects) -> None:
        """Apply a batch of events, set-based where it can be (one statement for all started events,
        one for all succeeded ones), in the caller's transaction.

        The tasks the batch moves are locked first, in id order, so two control planes applying
        overlapping batches wait for each other instead of deadlocking. Agent events go first, then
        starts, then progress and logs, then results: an agent sends a task's events in that order.
        """
        moving = sorted({e.task_id for e in events if isinstance(e, TaskStarted | TaskSucceeded | TaskFailed)})
        if moving:
            await conn.execute("SELECT 1 FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", moving)
        for event in events:
            if isinstance(event, AgentHello | AgentHeartbeat | AgentBye):
                await self.apply(conn, event, effects)
        await self._started(conn, [e for e in events if isinstance(e, TaskStarted)])
        for event in events:
            if isinstance(event, TaskProgress | TaskLog):
                await self.apply(conn, event, effects)
        succeeded = [e for e in events if isinstance(e, TaskSucceeded)]
        await self._finish(conn, [_Finish.succeeded(e) for e in succeeded])
        effects.ended_tasks.update(e.task_id for e in succeeded)
        for event in events:
            if isinstance(event, TaskFailed):
                await self.apply(conn, event, effects)

    async def _started(self, conn: asyncpg.Connection, events: list[TaskStarted]) -> None:
        if not events:
            return
        # One row per task in a statement (a task's duplicates wait for the next statement).
        rounds: list[dict[UUID, TaskStarted]] = []
        for ev in events:
            free = next((r for r in rounds if ev.task_id not in r), None)
            if free is None:
                rounds.append(free := {})
            free[ev.task_id] = ev
        for batch in rounds:
            rows = await conn.fetch(
                _START, list(batch), [e.attempt for e in batch.values()], [e.agent_id for e in batch.values()],
                self._config.lease_s, [e.ts for e in batch.values()],
            )
            known = {row["task_id"]: row for row in rows}
            for ev in batch.values():
                task = known.get(ev.task_id)
                if task is None:
                    log.warning("started event for unknown task %s", ev.task_id)
                    continue
                current = task["attempt"] == ev.attempt
                if task["finished_here"] or (current and task["status"] not in TERMINAL):
                    continue  # moved now, or a late start of an attempt this agent already finished
                # A stale or cancelled attempt is running somewhere: tell that agent to stop it.
                reason = "task is " + task["status"] if current else f"attempt {ev.attempt} is superseded"
                await enqueue(conn, [cancel_command(self._config.topology, ev.agent_id, ev.task_id, ev.attempt, reason)])

    async def _log(self, conn: asyncpg.Connection, ev: TaskLog) -> None:
        await conn.execute(
            """INSERT INTO task_logs (task_id, attempt, agent_id, seq, ts, stream, line)
               SELECT $1, $2, $3, s, ts, st, l
               FROM unnest($4::int[], $5::timestamptz[], $6::text[], $7::text[]) WITH ORDINALITY AS x(s, ts, st, l, n)
               WHERE EXISTS (SELECT 1 FROM tasks WHERE id = $1)
               ORDER BY n
               ON CONFLICT DO NOTHING""",
            ev.task_id, ev.attempt, ev.agent_id, [ln.seq for ln in ev.lines], [ln.ts for ln in ev.lines],
            [ln.stream for ln in ev.lines], [ln.text for ln in ev.lines],
        )

    async def _finish(self, conn: asyncpg.Connection, rows: list[_Finish]) -> None:
        if not rows:
            return
        # One row per (task, attempt) in a statement, like starts.
        rounds: list[dict[tuple[UUID, int], _Finish]] = []
        for row in rows:
            free = next((r for r in rounds if (row.task_id, row.attempt) not in r), None)
            if free is None:
                rounds.append(free := {})
            free[(row.task_id, row.attempt)] = row
        for batch in rounds:
            await conn.execute(_FINISH, *_Finish.columns(list(batch.values())), False)

    @staticmethod
    def results_alone(events: list[Event]) -> TypeGuard[list[TaskSucceeded]]:
        """Whether ``events`` are results of distinct attempts and nothing else: what
        :meth:`apply_results` applies."""
        return bool(events) and all(isinstance(e, TaskSucceeded) for e in events) and (
            len({(e.task_id, e.attempt) for e in events}) == len(events))

    async def apply_results(self, conn: asyncpg.Connection, events: list[TaskSucceeded]) -> set[UUID]:
        """Apply results of distinct attempts, outside any transaction: one statement, which locks
        their tasks in id order, is its own transaction (no BEGIN, no separate lock, no COMMIT).

        Returns the tasks it left alone because a running workflow step waits for them: the end hook
        must see their end in the transaction that records it (:meth:`apply_batch`'s)."""
        rows = await conn.fetch(_FINISH, *_Finish.columns([_Finish.succeeded(e) for e in events]),
                                self._config.on_tasks_ended is not None)
        return {row["task_id"] for row in rows}

    async def _failed(self, conn: asyncpg.Connection, ev: TaskFailed) -> None:
        task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", ev.task_id)  # locked by apply_batch
        if task is None or (task["status"] == "running" and task["agent_id"] != ev.agent_id):
            return  # only the agent running the attempt may fail it
        error = {"message": ev.error, "type": ev.error_type, "reason": ev.reason, "retryable": ev.retryable}
        attempt_status = {"timeout": "timed_out", "cancelled": "cancelled"}.get(ev.reason, "failed")
        retry = False
        if ev.reason != "error":
            task_status, reason = attempt_status, f"{ev.reason}: {ev.error}"[:500]
        elif not ev.retryable:
            task_status, reason = "failed", ev.error[:500]
        elif ev.attempt >= task["max_attempts"]:
            task_status = "dead"
            reason = f"attempts exhausted ({ev.attempt}/{task['max_attempts']}): {ev.error}"[:500]
        else:
            task_status, reason, retry = "failed", ev.error[:500], True
        await self._finish(conn, [_Finish(ev.task_id, ev.attempt, ev.agent_id, attempt_status, task_status, reason,
                                          ev.result, error, ev.ts, ev.started_at)])
        if task["attempt"] != ev.attempt or task["status"] not in ("queued", "running"):
            return
        if task_status == "dead":
            await enqueue(conn, [_dead_copy(self._config.topology, task, ev, reason)])
        if retry:
            await queue_retry(conn, task["id"], ev.attempt, delay_s=ev.retry_delay_s,
                              agent_ttl_s=self._config.agent_ttl_s, topology=self._config.topology)


class _Finish(NamedTuple):
    """One attempt's end, as the set-based finish statement takes it."""

    task_id: UUID
    attempt: int
    agent_id: str
    attempt_status: str
    task_status: str
    reason: str
    result: dict
    error: dict | None
    ts: datetime
    started_at: datetime | None

    @classmethod
    def succeeded(cls, ev: TaskSucceeded) -> _Finish:
        return cls(ev.task_id, ev.attempt, ev.agent_id, "succeeded", "succeeded", f"succeeded on {ev.agent_id}",
                   ev.result, None, ev.ts, ev.started_at)

    @staticmethod
    def columns(rows: list[_Finish]) -> list[list[object]]:
        """``rows`` as the finish statement's first ten parameters, one array per field."""
        return [list(column) for column in zip(*rows, strict=True)]


# The started events of a batch, one statement: for each task whose current attempt this is and
# that is still open (and not already running on this agent: a duplicate), mark it running, open
# the attempt and record the transition. Returns each named task as it was before, and whether the
# event's agent has already finished that attempt (its start arrived after its result). The tasks
# are locked by the caller. $1 tasks, $2 attempts, $3 agents, $4 lease (s), $5 agents' times.
_START = """
WITH ev AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $5::timestamptz[]) AS e(task_id, attempt, agent_id, ts)
),
before AS (
    SELECT t.id, t.status, t.attempt, t.agent_id, ev.attempt AS ev_attempt, ev.agent_id AS ev_agent, ev.ts
    FROM tasks t JOIN ev ON ev.task_id = t.id
),
moved AS (
    UPDATE tasks t SET status = 'running', status_reason = '', agent_id = b.ev_agent,
           started_at = coalesce(t.started_at, least(now(), b.ts)), updated_at = now(),
           lease_expires_at = now() + make_interval(secs => $4),
           deadline_at = now() + make_interval(secs => t.timeout_s)
    FROM before b
    WHERE t.id = b.id AND b.attempt = b.ev_attempt AND b.status IN ('pending', 'queued', 'running')
      AND NOT (b.status = 'running' AND b.agent_id IS NOT DISTINCT FROM b.ev_agent)
    RETURNING t.id, b.ev_attempt, b.ev_agent, b.ts, b.status AS from_status
),
opened AS (
    UPDATE attempts a SET status = 'running', agent_id = m.ev_agent,
           started_at = coalesce(a.started_at, least(now(), m.ts)), deliveries = a.deliveries + 1
    FROM moved m WHERE a.task_id = m.id AND a.attempt = m.ev_attempt
),
recorded AS (
    INSERT INTO task_transitions (task_id, attempt, from_status, to_status, actor, reason)
    SELECT id, ev_attempt, from_status, 'running', ev_agent,
           CASE WHEN from_status = 'running' THEN 'redelivered to ' ELSE 'started on ' END || ev_agent
    FROM moved ORDER BY id
)
SELECT b.id AS task_id, b.status, b.attempt,
       coalesce(a.finished_at IS NOT NULL AND a.agent_id = b.ev_agent, false) AS finished_here
FROM before b LEFT JOIN attempts a ON a.task_id = b.id AND a.attempt = b.ev_attempt
"""

# The ends of a batch's attempts, one statement: lock their tasks in id order (as apply_batch does
# first; run alone, the statement is its transaction), close each attempt if still open and, when
# it is its task's current attempt and the task is still queued or running, finish the task and
# record the transition. Only the agent running an attempt may end it (a queued one: whoever the
# broker gave it to). A result whose start was not applied yet (sent with it, or applied later by
# another control plane) records the start too: queued -> running -> the result, as if it had come
# first. With $11, tasks a running workflow step waits for are left alone and returned (the engine
# advances their runs in the transaction that ends them). $1 tasks, $2 attempts, $3 agents,
# $4 attempt statuses, $5 task statuses, $6 reasons, $7 results, $8 errors, $9 agents' end times,
# $10 agents' start times.
_FINISH = """
WITH ev AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                         $8::jsonb[], $9::timestamptz[], $10::timestamptz[])
        AS e(task_id, attempt, agent_id, attempt_status, task_status, reason, result, error, ts, started_at)
),
waited_for AS (
    SELECT DISTINCT s.task_id FROM run_steps s JOIN ev USING (task_id) WHERE $11 AND s.state = 'running'
),
before AS (
    SELECT t.id, t.status AS from_status, t.attempt AS current_attempt, ev.*
    FROM tasks t JOIN ev ON ev.task_id = t.id
    WHERE (t.status <> 'running' OR t.agent_id IS NOT DISTINCT FROM ev.agent_id)
      AND t.id NOT IN (SELECT task_id FROM waited_for)
    ORDER BY t.id
    FOR UPDATE OF t
),
closed AS (
    UPDATE attempts a SET status = b.attempt_status, finished_at = least(now(), b.ts), result = b.result,
           error = b.error, agent_id = coalesce(a.agent_id, b.agent_id),
           started_at = coalesce(a.started_at, least(now(), b.started_at)),
           deliveries = a.deliveries + CASE WHEN a.started_at IS NULL AND b.started_at IS NOT NULL THEN 1 ELSE 0 END
    FROM before b
    WHERE a.task_id = b.id AND a.attempt = b.attempt AND a.finished_at IS NULL
),
finished AS (
    UPDATE tasks t SET status = b.task_status, status_reason = b.reason, result = b.result, error = b.error,
           finished_at = least(now(), b.ts), updated_at = now(), lease_expires_at = NULL,
           agent_id = coalesce(t.agent_id, b.agent_id), started_at = coalesce(t.started_at, least(now(), b.started_at))
    FROM before b
    WHERE t.id = b.id AND b.current_attempt = b.attempt AND b.from_status IN ('queued', 'running')
    RETURNING t.id, b.attempt, b.agent_id, b.from_status, b.task_status, b.reason,
              b.from_status = 'queued' AND b.started_at IS NOT NULL AS starts_too
),
recorded AS (
    INSERT INTO task_transitions (task_id, attempt, from_status, to_status, actor, reason)
    SELECT id, attempt, from_status, to_status, agent_id, reason FROM (
        SELECT id, attempt, 1 AS step, 'queued' AS from_status, 'running' AS to_status, agent_id,
               'started on ' || agent_id AS reason
        FROM finished WHERE starts_too
        UNION ALL
        SELECT id, attempt, 2, CASE WHEN starts_too THEN 'running' ELSE from_status END, task_status, agent_id, reason
        FROM finished
    ) AS steps ORDER BY id, step
)
SELECT task_id FROM waited_for
"""


class _Received(NamedTuple):
    """An authentic event, the message it came in, and its own trace context."""

    message: AbstractIncomingMessage
    event: Event
    trace_headers: Mapping[str, object] | None


def _body(received: _Received) -> bytes:
    """What to keep of a refused or failing event: its message, or only its part of a batch (the
    batch's other events are applied)."""
    if received.message.type == BATCH_TYPE:
        return received.event.model_dump_json().encode()
    return received.message.body


def _dead_copy(topology: Topology, task: asyncpg.Record, ev: TaskFailed, reason: str) -> OutboxMessage:
    body = json.dumps({"task_id": str(task["id"]), "attempt": ev.attempt, "type": task["type"]}).encode()
    return OutboxMessage(topology.dead, "", body, {HEADER_DEAD_REASON: reason})


class EventsConsumer:
    """Consumes ``devart.control.events`` and applies events in batched transactions."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: AbstractRobustConnection,
        config: EventsConfig,
        *,
        batch: int = 256,
        prefetch: int = 512,
        on_agents_joined: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._config = config
        self._applier = EventApplier(config)
        self._verifier = EventVerifier(config.deliveries)
        self._batch = batch
        self._prefetch = prefetch
        self._on_agents_joined = on_agents_joined
        self._buffer: list[AbstractIncomingMessage] = []
        self._ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self.applied = 0

    async def start(self) -> None:
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        await declare_exchanges(channel, self._config.topology)
        self._queue = await declare_events_queue(channel, self._config.topology)
        self._worker = asyncio.create_task(self._work(), name="events-consumer")
        self._tag = await self._queue.consume(self._on_message)

    async def stop(self) -> None:
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except Exception as exc:  # the channel may already be gone with the broker
                log.debug("cancelling events consumer: %s", exc)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.append(message)
        self._ready.set()

    async def _work(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._buffer:
                batch, self._buffer = self._buffer[: self._batch], self._buffer[self._batch :]
                try:
                    await self._apply_batch(batch)
                except (aio_pika.exceptions.AMQPError, RuntimeError) as exc:
                    # The channel went away with the broker: these deliveries come again after the
                    # reconnect, and applying an event twice changes nothing.
                    log.warning("could not acknowledge %d event(s) (%s); they will be redelivered", len(batch), exc)
                except Exception:  # a bug must not stop the consumer: the batch comes again
                    log.exception("applying %d event(s) failed; they will be redelivered", len(batch))
                    for message in batch:
                        with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
                            await message.nack(requeue=True)
                    await asyncio.sleep(1.0)

    async def _apply_batch(self, messages: list[AbstractIncomingMessage]) -> None:
        received: list[tuple[AbstractIncomingMessage, list[Event]]] = []
        set_aside: list[tuple[bytes, str]] = []
        for message in messages:
            try:
                received.append((message, decode_events(message.type, message.body)))
            except (ValidationError, ValueError, RecursionError) as exc:
                set_aside.append((message.body, f"undecodable: {exc}"))
        decoded = await self._authentic(received, set_aside)
        while True:
            try:
                effects = await self._apply_all(decoded)
                break
            except _TRANSIENT as exc:
                log.warning("database unavailable while applying events, retrying: %s", exc)
                await asyncio.sleep(1.0)
            except Exception as exc:  # one event's fault must not hold back the others
                log.error("batch of %d events failed (%s); applying one by one", len(decoded), exc)
                effects = await self._apply_one_by_one(decoded, set_aside)
                break
        if set_aside:
            await self._store_bad_events(set_aside)
        for message in messages:
            await message.ack()
        self.applied += len(decoded)
        await self._after_commit(effects)

    async def _authentic(
        self, received: list[tuple[AbstractIncomingMessage, list[Event]]],
        set_aside: list[tuple[bytes, str]],
    ) -> list[_Received]:
        """The events signed by the agent they name about its own pool, task events with their proof
        of delivery, each with its message; the others are set aside with the reason. A batch is
        signed as a whole by the one agent all its events name, and carries results only (what an
        agent batches), each with its own proof."""
        if not received:
            return []
        signed: list[_Received] = []
        async with self._pool.acquire() as conn:
            for message, events in received:
                agents = {event.agent_id for event in events}
                signature = (message.headers or {}).get(HEADER_SIGNATURE)
                if len(agents) > 1:
                    refused = f"an event batch naming {len(agents)} agents"
                elif message.type == BATCH_TYPE and not all(isinstance(e, TaskSucceeded | TaskFailed) for e in events):
                    refused = "an event batch with other events than results"
                else:  # results name no pool: the first event stands for the batch's signature
                    refused = await self._verifier.refusal(conn, events[0], message.body, signature)
                if refused is None:
                    signed.extend(_Received(message, event, event_headers(message.type, message.headers, i)) for i, event in enumerate(events))
                else:
                    log.warning("refused a %s message: %s", message.type or events[0].kind, refused)
                    set_aside.append((message.body, refused))
            foreign = await self._verifier.foreign_attempts(conn, [r.event for r in signed])
        refused = self._verifier.undelivered([r.event for r in signed]) | foreign
        for i, reason in refused.items():
            log.warning("refused a %s event: %s", signed[i].event.kind, reason)
            set_aside.append((_body(signed[i]), reason))
        return [r for i, r in enumerate(signed) if i not in refused]

    async def _apply_all(self, decoded: list[_Received]) -> _Effects:
        effects = _Effects()
        # A CONSUMER span per task event in the task's trace, child of the agent's publish span; the
        # batch's set-based statements and its commit are shared, so each span covers all of them.
        spans = [
            _tracer.start_span(
                f"apply {event.kind}", context=extract_context(trace_headers), kind=trace.SpanKind.CONSUMER,
                attributes={"messaging.system": "rabbitmq", "messaging.operation.type": "process",
                            "messaging.destination.name": self._config.topology.events_queue,
                            "messaging.batch.message_count": len(decoded),
                            "devart.task_id": str(task_id), "devart.attempt": getattr(event, "attempt", 0)},
            )
            for _, event, trace_headers in decoded
            if (task_id := getattr(event, "task_id", None)) is not None  # agent lifecycle events: no trace
        ]
        events = [r.event for r in decoded]
        try:
            async with self._pool.acquire() as conn:
                if self._applier.results_alone(events):
                    waiting = await self._applier.apply_results(conn, events)
                    events = [e for e in events if e.task_id in waiting]
                if events:
                    async with conn.transaction():
                        await self._apply_in_transaction(conn, events, effects)
        except BaseException as exc:
            for span in spans:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()
        return effects

    async def _apply_in_transaction(self, conn: asyncpg.Connection, events: list[Event], effects: _Effects) -> None:
        await self._applier.apply_batch(conn, events, effects)
        for task_id in effects.log_tasks:
            await conn.execute("SELECT pg_notify('devart_logs', $1)", str(task_id))
        if effects.ended_tasks and self._config.on_tasks_ended is not None:
            await self._config.on_tasks_ended(conn, sorted(effects.ended_tasks))

    async def _apply_one_by_one(
        self, decoded: list[_Received], set_aside: list[tuple[bytes, str]]
    ) -> _Effects:
        effects = _Effects()
        for received in decoded:
            event = received.event
            try:
                one = await self._apply_all([received])
            except _TRANSIENT:
                raise
            except Exception as exc:  # set aside with the reason; the consumer goes on
                set_aside.append((_body(received), f"{event.kind} event could not be applied: {type(exc).__name__}: {exc}"))
                continue
            effects.agents_joined |= one.agents_joined
            effects.log_tasks |= one.log_tasks
        return effects

    async def _store_bad_events(self, bad: list[tuple[bytes, str]]) -> None:
        for _, reason in bad:
            log.error("agent event set aside in dead_letters: %s", reason[:300])
        async with self._pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO dead_letters (reason, body, headers) VALUES ($1, $2, '{}')",
                [(safe_text(f"agent event: {reason}"[:1000]), body) for body, reason in bad],
            )

    async def _after_commit(self, effects: _Effects) -> None:
        if effects.agents_joined and self._on_agents_joined is not None:
            await self._on_agents_joined()
