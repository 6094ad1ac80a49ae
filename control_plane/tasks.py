"""The task aggregate: creating, reading, listing, cancelling and retrying tasks (plain SQL)."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from agents.sdk.messages import ControlCommand, TaskMessage
from agents.sdk.topology import Topology
from control_plane.dispatch import (
    CANDIDATES,
    NO_POOL_REASON,
    choose_pool,
    message_headers,
    queue_attempt,
    record_transition,
)
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.outbox import Outbound, OutboxMessage, enqueue

TERMINAL = frozenset({"succeeded", "failed", "dead", "cancelled", "timed_out"})
RETRYABLE_FROM = frozenset({"failed", "dead", "cancelled", "timed_out"})
CANCELLABLE = frozenset({"pending", "queued", "running"})

TaskEndHook = Callable[[asyncpg.Connection, Sequence[UUID]], Awaitable[None]]
"""Called in the transaction that may have ended tasks for good (terminal, no retry coming), with
their ids: the workflow engine advances their runs there. Must ignore tasks that did not end."""


@dataclass(frozen=True)
class NewTask:
    type: str
    input: dict[str, Any]
    requires: list[str]
    timeout_s: float
    max_attempts: int
    backoff: dict[str, float]
    sandbox: dict[str, Any]
    start_timeout_s: float
    deadline_s: float | None = None


def request_hash(task: NewTask) -> str:
    canonical = json.dumps(task.__dict__, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


_CREATE = f"""
WITH pool AS ({CANDIDATES}),
task AS (
    INSERT INTO tasks (id, type, requires, input, sandbox, status, status_reason, pool_id, attempt, max_attempts,
                       timeout_s, backoff, idempotency_key, request_hash, created_by, trace_id, traceparent,
                       start_timeout_s, start_deadline_at, deadline_s, expires_at)
    SELECT $5, $2, $1, $6, $7,
           CASE WHEN pool.id IS NULL THEN 'pending' ELSE 'queued' END,
           CASE WHEN pool.id IS NULL THEN $8 ELSE 'dispatched to ' || pool.id END,
           pool.id, CASE WHEN pool.id IS NULL THEN 0 ELSE 1 END,
           $9, $10, $11, $12, $13, $14, $15, $16,
           $21, now() + make_interval(secs => $21), $22::float8, now() + make_interval(secs => $22::float8)
    FROM (VALUES (1)) AS one LEFT JOIN pool ON true
    RETURNING *
),
history AS (
    INSERT INTO task_transitions (task_id, attempt, from_status, to_status, actor, reason)
    SELECT id, 0, NULL, 'pending', created_by, 'created' FROM task
    UNION ALL
    SELECT id, 1, 'pending', 'queued', 'dispatcher', status_reason FROM task WHERE pool_id IS NOT NULL
),
attempt AS (
    INSERT INTO attempts (task_id, attempt, pool_id, status)
    SELECT id, 1, pool_id, 'queued' FROM task WHERE pool_id IS NOT NULL
),
outbound AS (
    SELECT nextval('outbox_id_seq') AS id, pool_id,
           convert_to(jsonb_set(jsonb_set($18::jsonb, '{{pool_id}}', to_jsonb(pool_id)),
                                '{{submitted_at}}', to_jsonb(created_at))::text, 'UTF8') AS body
    FROM task WHERE pool_id IS NOT NULL
),
message AS (
    INSERT INTO outbox (id, exchange, routing_key, body, headers, available_at)
    SELECT id, $17, pool_id, body, $19, now() + make_interval(secs => $23) FROM outbound
),
audited AS (
    INSERT INTO audit_log (actor, action, target, detail, remote)
    SELECT created_by, 'task.create', id::text, jsonb_build_object('type', type), $20 FROM task
)
SELECT task.*, outbound.id AS outbox_id, outbound.body AS outbox_body FROM task LEFT JOIN outbound ON true
"""


@dataclass(frozen=True)
class Submitter:
    """Who submits tasks and in which context: the same for every task of one request."""

    created_by: str
    traceparent: str | None
    """The submitting request's span, which parents the tasks' publish spans."""
    topology: Topology
    agent_ttl_s: float
    remote: str = ""


async def create_task(
    conn: asyncpg.Connection, task: NewTask, by: Submitter, *, idempotency_key: str | None, lease_s: float = 0.0
) -> tuple[asyncpg.Record, bool]:
    """Store a task and queue it on the best live pool (or leave it pending with the reason), with
    its transitions, first attempt, outbox message and audit row, in one statement (so one round
    trip and one implicit transaction).

    Returns ``(task, replayed)``: with an idempotency key already used by this caller, the same
    body returns the existing task and a different body is a conflict. With ``lease_s``, the outbox
    row is leased to the caller for that long (the other relays leave it alone): the caller
    publishes it once committed, from :func:`task_message`.
    """
    try:
        return await _create(conn, task, by, idempotency_key, lease_s)
    except asyncpg.UniqueViolationError:
        # A concurrent request with the same key won the race: answer as a replay.
        existing = await _by_idempotency_key(conn, by.created_by, idempotency_key or "", request_hash(task))
        if existing is None:
            raise
        return existing, True


async def create_tasks(
    conn: asyncpg.Connection, tasks: list[NewTask], by: Submitter, *, idempotency_key: str | None
) -> tuple[list[asyncpg.Record], bool]:
    """Create ``tasks`` all or none, in one transaction, in order.

    With an idempotency key, task ``i`` is created under ``<key>#<i>``, so repeating the same batch
    returns the same tasks (``replayed`` is true when every one existed already).
    """
    async def create_all() -> tuple[list[asyncpg.Record], bool]:
        async with conn.transaction():
            created = [await _create(conn, task, by, f"{idempotency_key}#{i}" if idempotency_key else None)
                       for i, task in enumerate(tasks)]
        return [row for row, _ in created], all(replayed for _, replayed in created)

    try:
        return await create_all()
    except asyncpg.UniqueViolationError:
        # A concurrent request with the same key created some of them: once more, now as replays.
        return await create_all()


def task_message(row: asyncpg.Record, by: Submitter) -> Outbound | None:
    """The outbox row :func:`create_task` wrote for ``row``'s first attempt, as stored; None for a
    replay or a task left pending."""
    if row.get("outbox_id") is None:
        return None
    return Outbound(row["outbox_id"], by.topology.tasks, row["pool_id"], row["outbox_body"],
                    message_headers(by.traceparent))


async def _create(
    conn: asyncpg.Connection, task: NewTask, by: Submitter, idempotency_key: str | None, lease_s: float = 0.0
) -> tuple[asyncpg.Record, bool]:
    digest = None  # only a replay compares it
    if idempotency_key is not None:
        digest = request_hash(task)
        existing = await _by_idempotency_key(conn, by.created_by, idempotency_key, digest)
        if existing is not None:
            return existing, True
    task_id = uuid.uuid4()
    trace_id = by.traceparent.split("-")[1] if by.traceparent else None
    # The first attempt's message; the statement fills in the chosen pool and the creation time.
    message = TaskMessage(
        task_id=task_id, attempt=1, type=task.type, input=task.input, requires=task.requires,
        timeout_s=task.timeout_s, max_attempts=task.max_attempts, pool_id="", sandbox=task.sandbox,
    )
    row = await conn.fetchrow(
        _CREATE,
        task.requires, task.type, by.agent_ttl_s, None, task_id, task.input, task.sandbox,
        NO_POOL_REASON.format(requires=sorted(task.requires), type=task.type),
        task.max_attempts, task.timeout_s, task.backoff, idempotency_key, digest, by.created_by, trace_id,
        by.traceparent, by.topology.tasks, message.model_dump(mode="json"), message_headers(by.traceparent), by.remote,
        task.start_timeout_s, task.deadline_s, lease_s,
    )
    return row, False


async def _by_idempotency_key(
    conn: asyncpg.Connection, created_by: str, key: str, digest: str
) -> asyncpg.Record | None:
    row = await conn.fetchrow("SELECT * FROM tasks WHERE created_by = $1 AND idempotency_key = $2", created_by, key)
    if row is None:
        return None
    if row["request_hash"] != digest:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used with a different request body", field="Idempotency-Key"
        )
    return row


async def get_task(conn: asyncpg.Connection, task_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    if row is None:
        raise NotFound(f"task {task_id} does not exist", field="task_id")
    return row


async def attempts(conn: asyncpg.Connection, task_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM attempts WHERE task_id = $1 ORDER BY attempt", task_id)


async def transitions(conn: asyncpg.Connection, task_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM task_transitions WHERE task_id = $1 ORDER BY id", task_id)


def encode_cursor(created_at: datetime, task_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(task_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, task_id = json.loads(raw)
        return datetime.fromisoformat(created_at), UUID(task_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is not a cursor returned by this API", field="cursor") from exc


async def list_tasks(
    conn: asyncpg.Connection,
    *,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    type: str | None = None,
    agent_id: str | None = None,
    pool_id: str | None = None,
    created_since: datetime | None = None,
    created_before: datetime | None = None,
) -> tuple[list[asyncpg.Record], str | None]:
    """Newest first; returns the page and the cursor of the next one (None at the end)."""
    after = decode_cursor(cursor) if cursor else (None, None)
    rows = await conn.fetch(
        """SELECT * FROM tasks
           WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR type = $2)
             AND ($3::text IS NULL OR agent_id = $3) AND ($4::text IS NULL OR pool_id = $4)
             AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::uuid))
             AND ($8::timestamptz IS NULL OR created_at >= $8) AND ($9::timestamptz IS NULL OR created_at < $9)
           ORDER BY created_at DESC, id DESC LIMIT $7""",
        status, type, agent_id, pool_id, after[0], after[1], limit + 1, created_since, created_before,
    )
    next_cursor = encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def cancel_command(topology: Topology, agent_id: str, task_id: UUID, attempt: int, reason: str) -> OutboxMessage:
    body = ControlCommand(action="cancel", task_id=task_id, attempt=attempt, reason=reason).model_dump_json().encode()
    return OutboxMessage(topology.control, f"agent.{agent_id}", body)


async def cancel_task(
    conn: asyncpg.Connection, task_id: UUID, *, actor: str, reason: str, topology: Topology
) -> asyncpg.Record:
    """Cancel a task that has not finished; a running attempt is told to stop (its process tree is killed)."""
    async with conn.transaction():
        task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        if task is None:
            raise NotFound(f"task {task_id} does not exist", field="task_id")
        if task["status"] not in CANCELLABLE:
            raise Conflict(f"task {task_id} is {task['status']}; only pending, queued or running tasks can be cancelled")
        await conn.execute(
            """UPDATE tasks SET status = 'cancelled', status_reason = $2, finished_at = now(), updated_at = now(),
                      lease_expires_at = NULL
               WHERE id = $1""",
            task_id, reason,
        )
        await conn.execute(
            "UPDATE attempts SET status = 'cancelled', finished_at = now() WHERE task_id = $1 AND attempt = $2 "
            "AND finished_at IS NULL",
            task_id, task["attempt"],
        )
        await record_transition(conn, task_id, task["attempt"], task["status"], "cancelled", actor, reason)
        if task["status"] == "running" and task["agent_id"]:
            await enqueue(conn, [cancel_command(topology, task["agent_id"], task_id, task["attempt"], reason)])
    return await get_task(conn, task_id)


async def retry_task(
    conn: asyncpg.Connection, task_id: UUID, *, actor: str, topology: Topology, agent_ttl_s: float,
    attempts_budget: int,
) -> asyncpg.Record:
    """Start a new attempt of a finished, unsuccessful task, with a fresh attempt budget."""
    async with conn.transaction():
        task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        if task is None:
            raise NotFound(f"task {task_id} does not exist", field="task_id")
        if task["status"] not in RETRYABLE_FROM:
            raise Conflict(
                f"task {task_id} is {task['status']}; only failed, dead, cancelled or timed_out tasks can be retried"
            )
        attempt = task["attempt"] + 1
        await conn.execute(
            """UPDATE tasks SET max_attempts = $2, result = NULL, error = NULL, finished_at = NULL, attempt = $3,
                      status = 'pending', status_reason = $4, updated_at = now(),
                      start_deadline_at = now() + make_interval(secs => start_timeout_s),
                      expires_at = now() + make_interval(secs => deadline_s)
               WHERE id = $1""",
            task_id, task["attempt"] + attempts_budget, attempt,
            NO_POOL_REASON.format(requires=sorted(task["requires"]), type=task["type"]),
        )
        await record_transition(conn, task_id, attempt, task["status"], "pending", actor, "retry requested")
        task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
        pool = await choose_pool(conn, type=task["type"], requires=list(task["requires"]), agent_ttl_s=agent_ttl_s)
        if pool is not None:
            await queue_attempt(
                conn, task, attempt=attempt, pool_id=pool, topology=topology, actor=actor,
                reason=f"retry dispatched to {pool}",
            )
    return await get_task(conn, task_id)


async def task_logs(
    conn: asyncpg.Connection, task_id: UUID, *, after: int | None, limit: int
) -> list[asyncpg.Record]:
    """Log lines in the order they were stored, after the line at ``position`` ``after``."""
    return await conn.fetch(
        """SELECT position, attempt, agent_id, seq, ts, stream, line FROM task_logs
           WHERE task_id = $1 AND position > $2 ORDER BY position LIMIT $3""",
        task_id, after or 0, limit,
    )
