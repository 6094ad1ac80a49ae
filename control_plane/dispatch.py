"""Capability-aware dispatch: which pool gets a task, and queuing an attempt through the outbox.

A pool can take a task when its skills cover the task's ``requires`` and it handles the task's
``type``, and it has at least one live agent (active or paused; draining agents take nothing new).
Among those, pools with free capacity (free slots beyond what is already queued) come first, then
the most specialised (fewest skills), then the shortest queue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from agents.sdk.messages import HEADER_TRACEPARENT, TaskMessage
from agents.sdk.topology import Topology
from control_plane.loops import LoopService
from control_plane.outbox import OutboxMessage, enqueue, retry_bucket_ms

NO_POOL_REASON = "no live agent pool has skills {requires} and handles type '{type}'"


@dataclass(frozen=True)
class BackoffPolicy:
    base_s: float
    factor: float
    cap_s: float
    jitter: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before ``attempt + 1`` after ``attempt`` failed: exponential, capped, jittered."""
        raw = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        spread = raw * self.jitter
        return max(0.0, raw + (rng or random).uniform(-spread, spread))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackoffPolicy:
        return cls(float(data["base_s"]), float(data["factor"]), float(data["cap_s"]), float(data["jitter"]))


def live_pools(*, requires: str, type: str, agent_ttl_s: str, exclude: str = "NULL::text") -> str:
    """The live pools that can take a task (its ``requires`` and ``type`` as SQL expressions), each
    with its free slots (``free``) and number of skills (``n_skills``): the candidates of dispatch."""
    return f"""
    SELECT p.id, cardinality(p.skills) AS n_skills,
           coalesce(sum(a.free_slots) FILTER (WHERE a.state = 'active'), 0) AS free
    FROM pools p
    JOIN agents a ON a.pool_id = p.id AND a.state IN ('active', 'paused')
                 AND a.last_heartbeat > now() - make_interval(secs => {agent_ttl_s})
    WHERE p.skills @> {requires} AND {type} = ANY (p.types) AND ({exclude} IS NULL OR p.id <> {exclude})
    GROUP BY p.id"""


def pool_rank(*, free: str, queued: str, n_skills: str, pool_id: str) -> str:
    """The ORDER BY of candidates, best first: free capacity beyond the queue, fewest skills, shortest queue."""
    return f"{free} - {queued} > 0 DESC, {n_skills}, {queued}, {pool_id}"


CANDIDATES = f"""
WITH candidates AS ({live_pools(requires="$1::text[]", type="$2", agent_ttl_s="$3", exclude="$4::text")})
SELECT id FROM candidates WHERE (SELECT count(*) FROM candidates) = 1
UNION ALL
(SELECT c.id
 FROM candidates c
 CROSS JOIN LATERAL (SELECT count(*) AS n FROM tasks t WHERE t.pool_id = c.id AND t.status = 'queued') queued
 WHERE (SELECT count(*) FROM candidates) > 1
 ORDER BY {pool_rank(free="c.free", queued="queued.n", n_skills="c.n_skills", pool_id="c.id")}
 LIMIT 1)
"""
"""The best pool for a task: $1 requires, $2 type, $3 agent TTL (s), $4 a pool to leave out or NULL.

Only several candidates are ranked: counting a pool's queued tasks reads an index entry and a heap
tuple per queued or running task of the pool (and per version not yet pruned), which the usual
case, one pool for the task's type, does not need on every submit."""


async def choose_pool(
    conn: asyncpg.Connection, *, type: str, requires: list[str], agent_ttl_s: float, exclude: str | None = None
) -> str | None:
    return await conn.fetchval(CANDIDATES, requires, type, agent_ttl_s, exclude)


def task_message(task: asyncpg.Record, *, attempt: int, pool_id: str) -> TaskMessage:
    return TaskMessage(
        task_id=task["id"],
        attempt=attempt,
        type=task["type"],
        input=task["input"],
        requires=list(task["requires"]),
        timeout_s=task["timeout_s"],
        max_attempts=task["max_attempts"],
        pool_id=pool_id,
        sandbox=task["sandbox"],
        submitted_at=task["created_at"],
    )


def message_headers(traceparent: str | None) -> dict[str, Any]:
    """AMQP headers of a task message: the submitting request's trace context, when there is one."""
    return {HEADER_TRACEPARENT: traceparent} if traceparent else {}


def outbox_for_attempt(
    task: asyncpg.Record, *, attempt: int, pool_id: str, topology: Topology, delay_s: float = 0.0
) -> OutboxMessage:
    """The message delivering ``attempt`` to ``pool_id``: direct, or through a delay queue."""
    body = task_message(task, attempt=attempt, pool_id=pool_id).model_dump_json().encode()
    headers = message_headers(task["traceparent"])
    if delay_s <= 0:
        return OutboxMessage(topology.tasks, pool_id, body, headers)
    headers["BCC"] = [topology.retry_bucket(retry_bucket_ms(delay_s))]
    return OutboxMessage(topology.retry, pool_id, body, headers)


async def record_transition(
    conn: asyncpg.Connection, task_id: UUID, attempt: int, from_status: str | None, to_status: str,
    actor: str, reason: str = "",
) -> None:
    await conn.execute(
        """INSERT INTO task_transitions (task_id, attempt, from_status, to_status, actor, reason)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        task_id, attempt, from_status, to_status, actor, reason,
    )


async def queue_attempt(
    conn: asyncpg.Connection,
    task: asyncpg.Record,
    *,
    attempt: int,
    pool_id: str,
    topology: Topology,
    actor: str,
    reason: str,
    delay_s: float = 0.0,
) -> None:
    """Move ``task`` to ``queued`` for ``attempt`` on ``pool_id`` and enqueue its message (caller's tx)."""
    await conn.execute(
        # A task already waiting keeps its start deadline; one queued again (a retry, or taken back
        # from a pool without agents) gets a new one, counted from when its message becomes available.
        """UPDATE tasks SET status = 'queued', status_reason = $3, pool_id = $2, attempt = $4, agent_id = NULL,
                  lease_expires_at = NULL, deadline_at = NULL, updated_at = now(),
                  start_deadline_at = CASE WHEN status IN ('pending', 'queued') AND start_deadline_at IS NOT NULL
                                           THEN start_deadline_at
                                           ELSE now() + make_interval(secs => $5 + start_timeout_s) END
           WHERE id = $1""",
        task["id"], pool_id, reason, attempt, max(0.0, delay_s),
    )
    await conn.execute(
        """INSERT INTO attempts (task_id, attempt, pool_id, status, retry_at)
           VALUES ($1, $2, $3, 'queued', CASE WHEN $4 > 0 THEN now() + make_interval(secs => $4) END)
           ON CONFLICT (task_id, attempt) DO UPDATE SET pool_id = EXCLUDED.pool_id""",
        task["id"], attempt, pool_id, delay_s,
    )
    await record_transition(conn, task["id"], attempt, task["status"], "queued", actor, reason)
    await enqueue(conn, [outbox_for_attempt(task, attempt=attempt, pool_id=pool_id, topology=topology, delay_s=delay_s)])


async def queue_retry(
    conn: asyncpg.Connection, task_id: UUID, failed_attempt: int, *, delay_s: float | None, agent_ttl_s: float,
    topology: Topology,
) -> None:
    """Queue the attempt after ``failed_attempt`` of ``task_id`` (locked, just failed, attempts left) on
    the best live pool (else its last one), after ``delay_s`` or the task's backoff (caller's tx)."""
    task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    delay = delay_s if delay_s is not None else BackoffPolicy.from_json(task["backoff"]).delay(failed_attempt)
    pool = await choose_pool(conn, type=task["type"], requires=list(task["requires"]), agent_ttl_s=agent_ttl_s)
    await queue_attempt(
        conn, task, attempt=failed_attempt + 1, pool_id=pool or task["pool_id"], topology=topology, actor="retry",
        reason=f"retry {failed_attempt + 1}/{task['max_attempts']} in {delay:.2f}s", delay_s=delay,
    )


async def dispatch_pending(
    conn: asyncpg.Connection, *, topology: Topology, agent_ttl_s: float, limit: int = 500
) -> int:
    """Queue pending tasks that a live pool can now take; returns how many were dispatched."""
    dispatched = 0
    async with conn.transaction():
        pending = await conn.fetch(
            """SELECT * FROM tasks WHERE status = 'pending' ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED""",
            limit,
        )
        for task in pending:
            pool = await choose_pool(conn, type=task["type"], requires=list(task["requires"]), agent_ttl_s=agent_ttl_s)
            if pool is None:
                continue
            await queue_attempt(
                conn, task, attempt=max(1, task["attempt"]), pool_id=pool, topology=topology,
                actor="dispatcher", reason=f"dispatched to {pool}",
            )
            dispatched += 1
    return dispatched


class Dispatcher(LoopService):
    """Dispatches pending tasks when pools appear (woken by agent hellos) and on a slow sweep."""

    name = "dispatcher"

    def __init__(self, pool: asyncpg.Pool, topology: Topology, *, interval_s: float, agent_ttl_s: float) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._topology = topology
        self._agent_ttl_s = agent_ttl_s

    async def run_once(self) -> None:
        async with self._pool.acquire() as conn:
            while await dispatch_pending(conn, topology=self._topology, agent_ttl_s=self._agent_ttl_s) > 0:
                pass
