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
    NO_POOL_REASON,
    choose_pool,
    live_pools,
    message_headers,
    pool_rank,
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
WITH RECURSIVE kind AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS k (n int, type text, requires text[], reason text)
),
input AS (
    SELECT * FROM jsonb_to_recordset($3::jsonb)
        AS i (ord int, id uuid, kind int, input jsonb, sandbox jsonb, max_attempts int, timeout_s float8, backoff jsonb,
              idempotency_key text, request_hash text, created_by text, trace_id text, traceparent text, message jsonb,
              headers jsonb, remote text, start_timeout_s float8, deadline_s float8)
),
existing AS (  -- LIMIT (the key is unique anyway): one index probe per keyed task, never a scan of tasks
    SELECT t.* FROM input i
    CROSS JOIN LATERAL (SELECT * FROM tasks t WHERE t.created_by = i.created_by
                                                AND t.idempotency_key = i.idempotency_key LIMIT 1) t
    WHERE i.idempotency_key IS NOT NULL
),
fresh AS (
    SELECT i.* FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.created_by = i.created_by
                                                 AND e.idempotency_key = i.idempotency_key)
),
candidate AS (
    SELECT kind.n, c.id, c.free, c.n_skills, count(*) OVER (PARTITION BY kind.n) AS rivals
    FROM kind CROSS JOIN LATERAL ({live_pools(requires="kind.requires", type="kind.type", agent_ttl_s="$2")}) c
),
ranked AS (
    SELECT n, id, free, n_skills,
           (SELECT count(*) FROM tasks t WHERE t.pool_id = candidate.id AND t.status = 'queued') AS queued
    FROM candidate WHERE rivals > 1
),
contested AS (
    SELECT ord, kind, row_number() OVER (ORDER BY ord) AS step FROM fresh WHERE kind IN (SELECT n FROM ranked)
),
walk (step, ord, pool_id, added) AS (
    SELECT 0::bigint, 0, NULL::text, '{{}}'::jsonb
    UNION ALL
    SELECT c.step, c.ord, pick.id, w.added || jsonb_build_object(pick.id, coalesce((w.added ->> pick.id)::int, 0) + 1)
    FROM walk w
    JOIN contested c ON c.step = w.step + 1
    CROSS JOIN LATERAL (
        SELECT r.id FROM ranked r
        CROSS JOIN LATERAL (
            SELECT r.queued + coalesce((w.added ->> r.id)::int, 0)
                   + (SELECT count(*) FROM fresh f JOIN candidate sole ON sole.n = f.kind AND sole.rivals = 1
                      WHERE f.ord < c.ord AND sole.id = r.id) AS n
        ) queued
        WHERE r.n = c.kind
        ORDER BY {pool_rank(free="r.free", queued="queued.n", n_skills="r.n_skills", pool_id="r.id")}
        LIMIT 1
    ) pick
),
chosen AS (
    SELECT f.*, coalesce(sole.id, w.pool_id) AS pool_id
    FROM fresh f
    LEFT JOIN candidate sole ON sole.n = f.kind AND sole.rivals = 1
    LEFT JOIN walk w ON w.ord = f.ord
),
task AS (
    INSERT INTO tasks (id, type, requires, input, sandbox, status, status_reason, pool_id, attempt, max_attempts,
                       timeout_s, backoff, idempotency_key, request_hash, created_by, trace_id, traceparent,
                       start_timeout_s, start_deadline_at, deadline_s, expires_at)
    SELECT c.id, k.type, k.requires, c.input, c.sandbox,
           CASE WHEN c.pool_id IS NULL THEN 'pending' ELSE 'queued' END,
           CASE WHEN c.pool_id IS NULL THEN k.reason ELSE 'dispatched to ' || c.pool_id END,
           c.pool_id, CASE WHEN c.pool_id IS NULL THEN 0 ELSE 1 END,
           c.max_attempts, c.timeout_s, c.backoff, c.idempotency_key, c.request_hash, c.created_by, c.trace_id,
           c.traceparent, c.start_timeout_s, now() + make_interval(secs => c.start_timeout_s),
           c.deadline_s, now() + make_interval(secs => c.deadline_s)
    FROM chosen c JOIN kind k ON k.n = c.kind
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
    SELECT nextval('outbox_id_seq') AS id, task.id AS task_id, task.pool_id, i.headers,
           convert_to(jsonb_set(jsonb_set(i.message, '{{pool_id}}', to_jsonb(task.pool_id)),
                                '{{submitted_at}}', to_jsonb(task.created_at))::text, 'UTF8') AS body
    FROM task JOIN input i ON i.id = task.id WHERE task.pool_id IS NOT NULL
),
message AS (
    INSERT INTO outbox (id, exchange, routing_key, body, headers, available_at)
    SELECT id, $4, pool_id, body, headers, now() + make_interval(secs => $5) FROM outbound
),
audited AS (
    INSERT INTO audit_log (actor, action, target, detail, remote)
    SELECT task.created_by, 'task.create', task.id::text, jsonb_build_object('type', task.type), i.remote
    FROM task JOIN input i ON i.id = task.id
)
SELECT task.*, outbound.id AS outbox_id, outbound.body AS outbox_body
FROM task LEFT JOIN outbound ON outbound.task_id = task.id
UNION ALL
SELECT existing.*, NULL, NULL FROM existing
"""
"""Creates a set of tasks in one statement: each queued on the best live pool for it or left pending
with the reason, with its transitions, first attempt, outbox message and audit row. A task whose
idempotency key its caller used before is not written; the existing one is returned instead.

The pool of a task that one live pool can take is that pool. Tasks that several can take are placed
one after the other in order (``walk``), each counting the queue with the set's tasks placed before
it, so a set is spread over equal pools as the same tasks created one by one would be.

The tasks come as one JSON document ($3, one object per task; $1 the kinds of task, by type and
requires), not as arrays: the planner's estimate of a JSON record set does not depend on its length
(as that of an array's ``unnest`` does), so after its first runs the prepared statement keeps one
generic plan instead of planning this statement again on every run (milliseconds, many times the
run itself for a set of one)."""


@dataclass(frozen=True)
class Submitter:
    """Who submits tasks and in which context: the same for every task of one request."""

    created_by: str
    traceparent: str | None
    """The submitting request's span, which parents the tasks' publish spans."""
    topology: Topology
    agent_ttl_s: float
    remote: str = ""


@dataclass(frozen=True)
class Creation:
    """One task to create, by whom (in the context of its request), under which idempotency key."""

    task: NewTask
    by: Submitter
    idempotency_key: str | None = None


Created = tuple[asyncpg.Record, bool]
"""The task's row and whether it existed already (an idempotent replay)."""


async def create_each(
    conn: asyncpg.Connection, creations: Sequence[Creation], *, lease_s: float = 0.0
) -> list[Created | Conflict]:
    """Store the tasks of ``creations`` and queue each on the best live pool (or leave it pending
    with the reason), with their transitions, first attempts, outbox messages and audit rows, in one
    statement (one round trip), in the caller's transaction.

    Returns, per creation in order, ``(task, replayed)``, or the :class:`Conflict` of an idempotency
    key its caller used already with a different body (nothing is written for it). A key used again
    with the same body, before or earlier in ``creations``, returns the existing task. A concurrent
    transaction that commits one of the keys first makes the statement raise
    ``asyncpg.UniqueViolationError`` (the transaction is aborted; written again, the task replays).
    With ``lease_s``, the outbox rows are leased to the caller for that long (the other relays leave
    them alone): the caller publishes them once committed, from :func:`task_message`.
    """
    hashes = [request_hash(creation.task) if creation.idempotency_key is not None else None for creation in creations]
    first_of_key: dict[tuple[str, str], int] = {}
    written: list[int] = []
    for i, creation in enumerate(creations):
        key = creation.idempotency_key
        if key is None or first_of_key.setdefault((creation.by.created_by, key), i) == i:
            written.append(i)
    ids = [uuid.uuid4() for _ in written]
    rows = await conn.fetch(_CREATE, *_parameters(
        [creations[i] for i in written], ids, [hashes[i] for i in written], lease_s)) if written else []
    by_id = {row["id"]: row for row in rows}
    by_key = {(row["created_by"], row["idempotency_key"]): row for row in rows if row["idempotency_key"] is not None}
    ours = iter(ids)
    outcomes: list[Created | Conflict] = []
    for i, creation in enumerate(creations):
        key = creation.idempotency_key
        first = key is None or first_of_key[(creation.by.created_by, key)] == i
        row = by_id.get(next(ours)) if first else None
        if row is not None:
            outcomes.append((row, False))
            continue
        existing = by_key[(creation.by.created_by, key or "")]
        if existing["request_hash"] != hashes[i]:
            outcomes.append(_reused(key or ""))
        else:
            outcomes.append((existing, True))
    return outcomes


def _parameters(creations: list[Creation], ids: list[UUID], hashes: list[str | None], lease_s: float) -> list[Any]:
    kinds: dict[tuple[str, tuple[str, ...]], int] = {}
    for creation in creations:
        kinds.setdefault((creation.task.type, tuple(creation.task.requires)), len(kinds) + 1)
    first = creations[0].by  # the topology and the agents' TTL are the process's
    tasks = []
    for position, (creation, task_id, digest) in enumerate(zip(creations, ids, hashes, strict=True), start=1):
        task, traceparent = creation.task, creation.by.traceparent
        tasks.append({
            "ord": position, "id": str(task_id), "kind": kinds[(task.type, tuple(task.requires))], "input": task.input,
            "sandbox": task.sandbox, "max_attempts": task.max_attempts, "timeout_s": task.timeout_s,
            "backoff": task.backoff, "idempotency_key": creation.idempotency_key, "request_hash": digest,
            "created_by": creation.by.created_by, "trace_id": traceparent.split("-")[1] if traceparent else None,
            "traceparent": traceparent,
            # the first attempt's message; the statement fills in the chosen pool and the creation time
            "message": TaskMessage(task_id=task_id, attempt=1, type=task.type, input=task.input,
                                   requires=task.requires, timeout_s=task.timeout_s, max_attempts=task.max_attempts,
                                   pool_id="", sandbox=task.sandbox).model_dump(mode="json"),
            "headers": message_headers(traceparent), "remote": creation.by.remote,
            "start_timeout_s": task.start_timeout_s, "deadline_s": task.deadline_s,
        })
    kind_rows = [{"n": n, "type": type, "requires": list(requires),
                  "reason": NO_POOL_REASON.format(requires=sorted(requires), type=type)}
                 for (type, requires), n in kinds.items()]
    return [kind_rows, first.agent_ttl_s, tasks, first.topology.tasks, lease_s]


async def create_task(
    conn: asyncpg.Connection, task: NewTask, by: Submitter, *, idempotency_key: str | None, lease_s: float = 0.0
) -> Created:
    """:func:`create_each` for one task, raising its :class:`Conflict`; as the statement's own
    implicit transaction, a concurrent request that won the race for the key is answered as a replay."""
    try:
        (outcome,) = await create_each(conn, [Creation(task, by, idempotency_key)], lease_s=lease_s)
    except asyncpg.UniqueViolationError:
        existing = await _by_idempotency_key(conn, by.created_by, idempotency_key or "", request_hash(task))
        if existing is None:
            raise
        return existing, True
    if isinstance(outcome, Conflict):
        raise outcome
    return outcome


async def create_tasks(
    conn: asyncpg.Connection, tasks: list[NewTask], by: Submitter, *, idempotency_key: str | None,
    lease_s: float = 0.0,
) -> tuple[list[asyncpg.Record], bool]:
    """Create ``tasks`` all or none, in order, in the caller's transaction (which an exception from
    here must roll back: a :class:`Conflict` is raised once the others are written).

    With an idempotency key, task ``i`` is created under ``<key>#<i>``, so repeating the same batch
    returns the same tasks (``replayed`` is true when every one existed already).
    """
    outcomes = await create_each(
        conn, [Creation(task, by, f"{idempotency_key}#{i}" if idempotency_key else None) for i, task in enumerate(tasks)],
        lease_s=lease_s,
    )
    created = []
    for outcome in outcomes:
        if isinstance(outcome, Conflict):
            raise outcome
        created.append(outcome)
    return [row for row, _ in created], all(replayed for _, replayed in created)


def task_message(row: asyncpg.Record, by: Submitter) -> Outbound | None:
    """The outbox row :func:`create_each` wrote for ``row``'s first attempt, as stored; None for a
    replay or a task left pending."""
    if row.get("outbox_id") is None:
        return None
    return Outbound(row["outbox_id"], by.topology.tasks, row["pool_id"], row["outbox_body"],
                    message_headers(by.traceparent))


def _reused(key: str) -> Conflict:
    return Conflict(f"Idempotency-Key {key!r} was already used with a different request body", field="Idempotency-Key")


async def _by_idempotency_key(
    conn: asyncpg.Connection, created_by: str, key: str, digest: str
) -> asyncpg.Record | None:
    row = await conn.fetchrow("SELECT * FROM tasks WHERE created_by = $1 AND idempotency_key = $2", created_by, key)
    if row is None:
        return None
    if row["request_hash"] != digest:
        raise _reused(key)
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
