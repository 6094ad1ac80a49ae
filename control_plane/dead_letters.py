"""The dead-letter consumer: messages that reached ``devart.dead`` mark their task ``dead``.

Messages get there because an agent refused them as poison (undecodable, unknown task type; the
reason is in the ``x-devart-dead-reason`` header), because the pool queue's delivery limit was
exceeded (``x-death`` reason ``delivery_limit``), or because the control plane gave up on a task
(attempts exhausted; the task is already ``dead``). Every one is kept in ``dead_letters``; a task
that is still waiting for the dead attempt moves to ``dead`` with the reason, and ``retry`` replays it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import UUID

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from agents.sdk.messages import HEADER_DEAD_REASON, safe_text
from agents.sdk.topology import Topology, declare_dead_queue, declare_exchanges
from agents.sdk.trust import HEADER_DELIVERY_SECRET
from control_plane.dispatch import record_transition
from control_plane.tasks import TaskEndHook

log = logging.getLogger("devart.dead")

_TRANSIENT = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


def dead_reason(headers: dict[str, Any]) -> str:
    if reason := headers.get(HEADER_DEAD_REASON):
        return str(reason)
    deaths = headers.get("x-death") or []
    if deaths:
        first = deaths[0]
        why = first.get("reason", "unknown")
        why = why.decode() if isinstance(why, bytes) else str(why)
        queue = first.get("queue", "")
        queue = queue.decode() if isinstance(queue, bytes) else str(queue)
        if why == "delivery_limit":
            return f"poison: delivery limit exceeded on {queue}"
        return f"dead-lettered by the broker ({why}) from {queue}"
    return "dead-lettered (no reason given)"


def _task_ref(body: bytes) -> tuple[UUID, int | None] | None:
    """The task and attempt a dead message names, if it names any. A body nested too deep for the
    parser (``[`` x 5000: RecursionError) names none, like any other undecodable body."""
    try:
        data = json.loads(body)
        return UUID(str(data["task_id"])), (int(data["attempt"]) if "attempt" in data else None)
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def _plain(value: Any) -> Any:
    """AMQP header values as storable JSON (bytes decoded, NUL and lone surrogates replaced)."""
    if isinstance(value, bytes):
        return safe_text(value.decode(errors="replace"))
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return safe_text(str(value))


async def record_dead_letter(
    conn: asyncpg.Connection, body: bytes, headers: dict[str, Any], on_tasks_ended: TaskEndHook | None = None
) -> UUID | None:
    """Keep the message and mark its task dead when the task still waits for that attempt."""
    reason = safe_text(dead_reason(headers))
    ref = _task_ref(body)
    task_id = ref[0] if ref else None
    async with conn.transaction():
        if ref is not None:
            task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", ref[0])
            if task is None:
                task_id = None
            elif task["status"] in ("pending", "queued", "running") and ref[1] in (None, max(1, task["attempt"])):
                await conn.execute(
                    """UPDATE tasks SET status = 'dead', status_reason = $2, finished_at = now(), updated_at = now(),
                              lease_expires_at = NULL, error = $3
                       WHERE id = $1""",
                    task["id"], reason[:500], {"message": reason, "type": "DeadLetter", "reason": "dead"},
                )
                await conn.execute(
                    """UPDATE attempts SET status = 'dead', finished_at = now()
                       WHERE task_id = $1 AND attempt = $2 AND finished_at IS NULL""",
                    task["id"], task["attempt"],
                )
                await record_transition(conn, task["id"], task["attempt"], task["status"], "dead", "dead-letter", reason)
                if on_tasks_ended is not None:
                    await on_tasks_ended(conn, [task["id"]])
        await conn.execute(
            "INSERT INTO dead_letters (task_id, reason, body, headers) VALUES ($1, $2, $3, $4)",
            task_id, reason[:1000], body,
            _plain({k: v for k, v in headers.items() if k != HEADER_DELIVERY_SECRET}),  # a secret, and shown
        )
    return task_id


class DeadLetterConsumer:
    def __init__(
        self, pool: asyncpg.Pool, connection: AbstractRobustConnection, topology: Topology,
        on_tasks_ended: TaskEndHook | None = None,
    ) -> None:
        self._pool = pool
        self._on_tasks_ended = on_tasks_ended
        self._connection = connection
        self._topology = topology
        self._queue: AbstractQueue | None = None

    async def start(self) -> None:
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=32)
        await declare_exchanges(channel, self._topology)
        self._queue = await declare_dead_queue(channel, self._topology)
        await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        try:
            async with self._pool.acquire() as conn:
                task_id = await record_dead_letter(conn, message.body, headers, self._on_tasks_ended)
        except _TRANSIENT as exc:
            log.warning("cannot record a dead letter yet (%s); it goes back to the queue", exc)
            await asyncio.sleep(1.0)
            await message.nack(requeue=True)
            return
        except Exception as exc:  # one bad message must not stop the consumer
            await self._keep_unrecordable(message, exc)
            return
        log.warning("dead letter for task %s: %s", task_id, dead_reason(headers))
        await message.ack()

    async def _keep_unrecordable(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        """A message whose reason or headers could not be stored: keep its body with why."""
        reason = f"unrecordable dead letter ({type(exc).__name__}: {exc})"[:1000]
        log.error("%s", reason)
        try:
            async with self._pool.acquire() as conn:
                await conn.execute("INSERT INTO dead_letters (reason, body, headers) VALUES ($1, $2, '{}')",
                                   reason, message.body)
        except _TRANSIENT as again:
            log.warning("cannot record a dead letter yet (%s); it goes back to the queue", again)
            await message.nack(requeue=True)
            return
        await message.ack()


async def list_dead_letters(
    conn: asyncpg.Connection, *, limit: int, before: int | None = None
) -> tuple[list[asyncpg.Record], int | None]:
    """Newest first, with the current status of the task each names; returns the page and the id to
    pass as ``before`` for the next one (None at the end)."""
    rows = await conn.fetch(
        """SELECT d.id, d.task_id, d.reason, d.at, d.headers, substring(d.body FROM 1 FOR 2000) AS body,
                  length(d.body) AS body_bytes, t.status AS task_status, t.type AS task_type
           FROM dead_letters d LEFT JOIN tasks t ON t.id = d.task_id
           WHERE ($1::bigint IS NULL OR d.id < $1) ORDER BY d.id DESC LIMIT $2""",
        before, limit + 1,
    )
    return rows[:limit], rows[limit - 1]["id"] if len(rows) > limit else None
