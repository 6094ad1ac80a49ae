"""The reaper: agents that went silent, tasks past their lease or deadline, orphaned pool queues."""

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
from control_plane.dispatch import choose_pool, queue_attempt, record_transition
from control_plane.loops import LoopService
from control_plane.outbox import enqueue
from control_plane.tasks import cancel_command

log = logging.getLogger("devart.reaper")


class Reaper(LoopService):
    name = "reaper"

    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: AbstractRobustConnection,
        topology: Topology,
        *,
        interval_s: float,
        agent_ttl_s: float,
        deadline_grace_s: float,
    ) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._connection = connection
        self._topology = topology
        self._agent_ttl_s = agent_ttl_s
        self._grace_s = deadline_grace_s
        self._broker_up_since: float | None = None

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

    async def time_out_tasks(self, conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            expired = await conn.fetch(
                """SELECT id, attempt, agent_id, status, lease_expires_at < now() AS lease_lost FROM tasks
                   WHERE status = 'running'
                     AND (lease_expires_at < now() OR deadline_at + make_interval(secs => $1) < now())
                   FOR UPDATE SKIP LOCKED""",
                self._grace_s,
            )
            for task in expired:
                reason = (
                    f"agent {task['agent_id']} went silent past its lease" if task["lease_lost"] else "deadline exceeded"
                )
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
                await record_transition(conn, task["id"], task["attempt"], "running", "timed_out", "reaper", reason)
                if task["agent_id"]:
                    await enqueue(conn, [cancel_command(self._topology, task["agent_id"], task["id"], task["attempt"], reason)])
            return len(expired)

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
