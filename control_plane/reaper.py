"""The reaper: agents that went silent, tasks past their lease or deadline, orphaned pool queues,
and queued tasks whose message vanished from their pool queue.

Every task ends: a running one by its timeout or lease, a waiting one (pending or queued) by its
start deadline, any open one by its overall deadline. A queued task whose message is no longer in
its pool queue (another consumer took it: a second installation without its own broker prefix, a
tool reading the queue) is published again, a bounded number of times before it fails. It is
looked for only where nothing else can hold it, as the broker's management API counts messages
(control_plane/queue_counts.py): its pool queue holds none, ready or unacknowledged (an agent holds
a task's message unacknowledged until its result is confirmed), and the events queue none either
(one message there may carry the results of many tasks, and the task is queued until it is
applied); and only when two passes ``requeue_after_s`` apart both find it so, since those counts
are a few seconds old. Where the management API cannot say, nothing is published again.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

import aio_pika
import asyncpg
from aio_pika.abc import AbstractRobustConnection
from pydantic import ValidationError

from agents.sdk.messages import TaskMessage
from agents.sdk.topology import Topology
from control_plane.dispatch import (
    choose_pool,
    outbox_for_attempt,
    queue_attempt,
    queue_retry,
    record_transition,
)
from control_plane.loops import LoopService
from control_plane.outbox import enqueue
from control_plane.queue_counts import QueueCounts
from control_plane.tasks import TaskEndHook, cancel_command

log = logging.getLogger("devart.reaper")


class Reaper(LoopService):
    name = "reaper"

    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: AbstractRobustConnection,
        topology: Topology,
        queue_counts: QueueCounts,
        *,
        interval_s: float,
        agent_ttl_s: float,
        deadline_grace_s: float,
        requeue_after_s: float = 30.0,
        max_republish: int = 3,
        on_tasks_ended: TaskEndHook | None = None,
    ) -> None:
        super().__init__(interval_s)
        self._on_tasks_ended = on_tasks_ended
        self._pool = pool
        self._connection = connection
        self._topology = topology
        self._queue_counts = queue_counts
        self._agent_ttl_s = agent_ttl_s
        self._grace_s = deadline_grace_s
        self._requeue_after_s = requeue_after_s
        self._max_republish = max_republish
        self._broker_up_since: float | None = None
        self._suspected_lost: dict[UUID, float] = {}  # task id -> when a pass first found its message missing

    def _hearing_agents(self) -> bool:
        """True once the broker has been reachable for a whole agent TTL: silence during a broker
        outage (or just after it) is ours, not the agents', and must not time their tasks out."""
        now = time.monotonic()
        if not self._connection.connected.is_set() or self._connection.is_closed:
            self._broker_up_since = None
            return False
        if self._broker_up_since is None:
            self._broker_up_since = now
        return now - self._broker_up_since >= self._agent_ttl_s

    async def run_once(self) -> None:
        if not self._hearing_agents():
            return
        async with self._pool.acquire() as conn:
            gone = await conn.fetch(
                """UPDATE agents SET state = 'gone', free_slots = 0
                   WHERE state <> 'gone' AND last_heartbeat < now() - make_interval(secs => $1)
                   RETURNING id""",
                self._agent_ttl_s,
            )
            for row in gone:
                log.warning("agent %s is gone (silent for more than %.0fs)", row["id"], self._agent_ttl_s)
            await self.time_out_tasks(conn)
            for pool_id in await self._orphaned_pools(conn):
                await self.redispatch_orphans(conn, pool_id)
            await self.recover_lost_messages(conn)

    async def time_out_tasks(self, conn: asyncpg.Connection) -> int:
        """End running tasks past their lease or attempt deadline, and any task past its start or
        overall deadline; returns how many ended."""
        return await self._time_out_running(conn) + await self._time_out_waiting(conn)

    async def _time_out_waiting(self, conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            expired = await conn.fetch(
                """SELECT id, attempt, agent_id, status, type, requires, pool_id, start_timeout_s, deadline_s,
                          expires_at < now() AS expired
                   FROM tasks
                   WHERE (status IN ('pending', 'queued') AND start_deadline_at < now())
                      OR (status IN ('pending', 'queued', 'running') AND expires_at < now())
                   FOR UPDATE SKIP LOCKED"""
            )
            for task in expired:
                await self._time_out(conn, task, _waiting_reason(task))
            await self._ended(conn, [task["id"] for task in expired])
            return len(expired)

    async def _time_out_running(self, conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            expired = await conn.fetch(
                """SELECT id, attempt, max_attempts, agent_id, status,
                          deadline_at + make_interval(secs => $1) < now() AS deadline_passed FROM tasks
                   WHERE status = 'running'
                     AND (lease_expires_at < now() OR deadline_at + make_interval(secs => $1) < now())
                   FOR UPDATE SKIP LOCKED""",
                self._grace_s,
            )
            for task in expired:
                if task["deadline_passed"]:
                    await self._time_out(conn, task, "deadline exceeded")
                else:
                    await self._agent_gone(conn, task)
            await self._ended(conn, [task["id"] for task in expired])
            return len(expired)

    async def _agent_gone(self, conn: asyncpg.Connection, task: asyncpg.Record) -> None:
        """Fail the running attempt of ``task`` (locked by the caller) whose agent went silent past
        its lease, as a retryable error: the next attempt is queued per the task's policy, or the
        task is dead once its attempts are used up. The agent is told to cancel, should it come back.

        A dead agent's connection closes and the broker hands its message to another agent at once
        (the attempt is redelivered, no lease lapses); this is for an agent that stopped without its
        connection closing (frozen, cut off), whose message the broker keeps until its heartbeat
        timeout says the connection is dead."""
        silent = f"agent {task['agent_id']} is gone: silent past its lease"
        exhausted = task["attempt"] >= task["max_attempts"]
        reason = f"attempts exhausted ({task['attempt']}/{task['max_attempts']}): {silent}" if exhausted else silent
        error = {"message": silent, "type": "AgentGone", "reason": "error", "retryable": True}
        await conn.execute(
            """UPDATE attempts SET status = 'failed', finished_at = now(), error = $3
               WHERE task_id = $1 AND attempt = $2 AND finished_at IS NULL""",
            task["id"], task["attempt"], error,
        )
        await conn.execute(
            """UPDATE tasks SET status = $2, status_reason = $3, error = $4, finished_at = now(), updated_at = now(),
                      lease_expires_at = NULL
               WHERE id = $1""",
            task["id"], "dead" if exhausted else "failed", reason[:500], error,
        )
        await record_transition(conn, task["id"], task["attempt"], "running", "dead" if exhausted else "failed",
                                "reaper", reason[:500])
        await enqueue(conn, [cancel_command(self._topology, task["agent_id"], task["id"], task["attempt"], silent)])
        if not exhausted:
            await queue_retry(conn, task["id"], task["attempt"], delay_s=None, agent_ttl_s=self._agent_ttl_s,
                              topology=self._topology)

    async def _ended(self, conn: asyncpg.Connection, task_ids: list[UUID]) -> None:
        if task_ids and self._on_tasks_ended is not None:
            await self._on_tasks_ended(conn, task_ids)

    async def _time_out(self, conn: asyncpg.Connection, task: asyncpg.Record, reason: str) -> None:
        """End ``task`` (locked by the caller) as timed_out; a running attempt's agent is told to stop."""
        await conn.execute(
            """UPDATE tasks SET status = 'timed_out', status_reason = $2, finished_at = now(),
                      updated_at = now(), lease_expires_at = NULL
               WHERE id = $1""",
            task["id"], reason,
        )
        await conn.execute(
            """UPDATE attempts SET status = 'timed_out', finished_at = now()
               WHERE task_id = $1 AND attempt = $2 AND finished_at IS NULL""",
            task["id"], task["attempt"],
        )
        await record_transition(conn, task["id"], task["attempt"], task["status"], "timed_out", "reaper", reason)
        if task["status"] == "running" and task["agent_id"]:
            await enqueue(conn, [cancel_command(self._topology, task["agent_id"], task["id"], task["attempt"], reason)])

    async def _orphaned_pools(self, conn: asyncpg.Connection) -> list[str]:
        """Pools with open tasks but no live agent."""
        rows = await conn.fetch(
            """SELECT DISTINCT t.pool_id FROM tasks t
               WHERE t.status IN ('queued', 'running') AND t.pool_id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.pool_id = t.pool_id AND a.state IN ('active', 'paused')
                                 AND a.last_heartbeat > now() - make_interval(secs => $1))""",
            self._agent_ttl_s,
        )
        return [r["pool_id"] for r in rows]

    async def redispatch_orphans(self, conn: asyncpg.Connection, pool_id: str, limit: int = 1000) -> int:
        """Move the messages of a pool without agents to another matching pool, one transaction each.

        The message is acknowledged only after the task's new pool and the new message are
        committed, so a crash here at worst delivers the task twice (deduplicated downstream).
        """
        channel = await self._connection.channel()
        moved = 0
        try:
            queue = await channel.get_queue(self._topology.pool_queue(pool_id), ensure=True)
            for _ in range(limit):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                try:
                    task_msg = TaskMessage.model_validate_json(message.body)
                except ValidationError:
                    await message.reject(requeue=False)  # dead-lettered as poison
                    continue
                target = await self._move(conn, task_msg.task_id, task_msg.attempt, pool_id)
                if target is False:
                    await message.nack(requeue=True)
                    break
                await message.ack()
                moved += target is not None
        except aio_pika.exceptions.ChannelClosed as exc:
            log.debug("pool queue %s not available: %s", pool_id, exc)
        finally:
            if not channel.is_closed:
                await channel.close()
        if moved:
            log.warning("re-dispatched %d task(s) from pool %s, which has no live agents", moved, pool_id)
        return moved

    async def _move(self, conn: asyncpg.Connection, task_id: UUID, attempt: int, pool_id: str) -> str | None | bool:
        """New pool id; None when the message was stale (drop it); False when no pool can take it now."""
        async with conn.transaction():
            task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
            if task is None or task["attempt"] != attempt or task["status"] not in ("queued", "running"):
                return None
            target = await choose_pool(
                conn, type=task["type"], requires=list(task["requires"]), agent_ttl_s=self._agent_ttl_s, exclude=pool_id
            )
            if target is None:
                await conn.execute(
                    "UPDATE tasks SET status_reason = $2 WHERE id = $1",
                    task_id, f"pool {pool_id} has no live agents and no other pool matches; waiting",
                )
                return False
            await queue_attempt(
                conn, task, attempt=attempt, pool_id=target, topology=self._topology, actor="reaper",
                reason=f"re-dispatched from {pool_id}, which has no live agents",
            )
            return target

    async def recover_lost_messages(self, conn: asyncpg.Connection) -> int:
        """Publish again the queued tasks whose message is nowhere (see the module's docstring):
        tasks queued for ``requeue_after_s`` with nothing left in the outbox for their pool, found
        missing by two passes ``requeue_after_s`` apart. Returns how many were published again or failed."""
        stale = await conn.fetch(
            """SELECT t.pool_id, array_agg(t.id) AS ids FROM tasks t
               JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt
               WHERE t.status = 'queued' AND t.pool_id IS NOT NULL
                 AND t.updated_at < now() - make_interval(secs => $1)
                 AND coalesce(a.retry_at, '-infinity') < now() - make_interval(secs => $1)
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.routing_key = t.pool_id)
               GROUP BY t.pool_id""",
            self._requeue_after_s,
        )
        now = time.monotonic()
        suspected: dict[UUID, float] = {}
        recovered = 0
        # one message in the events queue may carry the results of many tasks, each queued until applied
        if stale and await self._messages_held(self._topology.events_queue):
            stale = []
        for row in stale:
            if await self._messages_held(self._topology.pool_queue(row["pool_id"])):
                continue
            for task_id in row["ids"]:
                suspected[task_id] = self._suspected_lost.get(task_id, now)
            due = [t for t in row["ids"] if now - suspected[t] >= self._requeue_after_s]
            if not due:
                continue
            log.warning("pool queue %s is empty but %d task(s) wait there: publishing %d again",
                        row["pool_id"], len(row["ids"]), len(due))
            for task_id in due:
                recovered += await self._republish(conn, task_id, row["pool_id"], len(row["ids"]))
                del suspected[task_id]
        self._suspected_lost = suspected
        return recovered

    async def _messages_held(self, queue: str) -> bool:
        """Whether ``queue`` holds any message, ready or unacknowledged; True too when the broker cannot say."""
        held = await self._queue_counts.messages(queue)
        return held is None or held > 0

    async def _republish(self, conn: asyncpg.Connection, task_id: UUID, pool_id: str, waiting: int) -> int:
        async with conn.transaction():
            task = await conn.fetchrow(
                """SELECT t.*, a.republished FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt
                   WHERE t.id = $1 AND t.status = 'queued' AND t.pool_id = $2 FOR UPDATE OF t SKIP LOCKED""",
                task_id, pool_id,
            )
            if task is None:
                return 0
            seen = f"pool queue {pool_id} held no message for {waiting} waiting task(s)"
            if task["republished"] >= self._max_republish:
                reason = (f"its message went missing {task['republished'] + 1} times ({seen}) without reaching an agent of "
                          "this installation; another consumer is taking this installation's messages "
                          "(does a second installation share the broker with the same DEVART_BROKER_PREFIX?)")
                await conn.execute(
                    """UPDATE tasks SET status = 'failed', status_reason = $2, finished_at = now(), updated_at = now(),
                              error = $3
                       WHERE id = $1""",
                    task_id, reason[:500], {"message": reason, "type": "LostMessage", "reason": "error", "retryable": False},
                )
                await conn.execute(
                    "UPDATE attempts SET status = 'failed', finished_at = now() WHERE task_id = $1 AND attempt = $2",
                    task_id, task["attempt"],
                )
                await record_transition(conn, task_id, task["attempt"], "queued", "failed", "reaper", reason[:500])
                await self._ended(conn, [task_id])
                return 1
            reason = f"message missing ({seen}); published again ({task['republished'] + 1}/{self._max_republish})"
            await conn.execute(
                "UPDATE tasks SET status_reason = $2, updated_at = now() WHERE id = $1", task_id, reason,
            )
            await conn.execute(
                "UPDATE attempts SET republished = republished + 1 WHERE task_id = $1 AND attempt = $2",
                task_id, task["attempt"],
            )
            await record_transition(conn, task_id, task["attempt"], "queued", "queued", "reaper", reason)
            await enqueue(conn, [outbox_for_attempt(task, attempt=task["attempt"], pool_id=pool_id, topology=self._topology)])
            return 1


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _waiting_reason(task: asyncpg.Record) -> str:
    if task["expired"]:
        return f"overall deadline of {_seconds(task['deadline_s'])} from submission passed while {task['status']}"
    if task["status"] == "pending":
        requires = f" with skills {sorted(task['requires'])}" if task["requires"] else ""
        return f"no live pool for type '{task['type']}'{requires} within {_seconds(task['start_timeout_s'])}"
    return (f"not started within {_seconds(task['start_timeout_s'])} of being queued on {task['pool_id']} "
            "(no agent of that pool took it)")
