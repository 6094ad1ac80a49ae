"""The transactional outbox: messages are rows first, and a relay publishes them.

``enqueue`` writes a row inside the caller's transaction, so a message exists if and only if the
state change that needs it committed. The relay claims rows with ``FOR UPDATE SKIP LOCKED`` (several
relays may run), publishes them concurrently with publisher confirms, persistent delivery and
``mandatory``, deletes what the broker confirmed and reschedules the rest. A crash between publish
and delete republishes: delivery is at-least-once and consumers deduplicate.

A process that wrote rows may publish them itself once committed, from memory
(:meth:`OutboxRelay.publish_committed`), saving the relay's claim. Such rows are written leased to
their writer (``available_at`` a grace period ahead, no NOTIFY): the other relays' claims skip them
until the grace has passed, so a writer killed between COMMIT and publish is covered by the next
sweep after it. A publish slower than the grace may be repeated by a sweep, at-least-once as above.

A command to one agent that the broker returns as unroutable (the agent's control queue is gone) is
dropped, with an audit record saying why, once that agent is ``gone`` or unknown: no queue will ever
take it. Every other unpublished row, task messages above all, is retried.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from opentelemetry import trace

from agents.sdk.messages import ControlCommand
from agents.sdk.telemetry import extract_context, inject_headers
from agents.sdk.topology import Topology, declare_retry_queue
from agents.sdk.trust import HEADER_DELIVERY_SECRET, HEADER_SIGNATURE, MessageSigner
from control_plane.agent_keys import DeliverySecrets
from control_plane.audit import audit
from control_plane.loops import ListeningLoop

log = logging.getLogger("devart.outbox")
_tracer = trace.get_tracer("devart.outbox")

NOTIFY_CHANNEL = "devart_outbox"


@dataclass(frozen=True)
class OutboxMessage:
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)


async def enqueue(conn: asyncpg.Connection, messages: Iterable[OutboxMessage]) -> None:
    rows = list(messages)
    if not rows:
        return
    await conn.execute(
        """INSERT INTO outbox (exchange, routing_key, body, headers)
           SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[])""",
        [m.exchange for m in rows], [m.routing_key for m in rows], [m.body for m in rows], [m.headers for m in rows],
    )


@dataclass(frozen=True)
class Outbound:
    """A stored outbox row to publish: claimed by a relay, or committed by this process."""

    id: int
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    attempts: int = 0


def retry_bucket_ms(delay_s: float) -> int:
    """Quantise a delay onto a geometric ladder (about 6% apart) so a bounded set of TTL queues serves
    every delay from 50 ms to hours."""
    ms = max(50.0, delay_s * 1000.0)
    step = round(math.log(ms / 50.0) / math.log(1.12))
    return int(round(50.0 * 1.12**step))


@dataclass
class RelayStats:
    published: int = 0
    failed: int = 0
    last_error: str = ""


class OutboxRelay(ListeningLoop):
    """Publishes outbox rows; woken by NOTIFY on insert and by a periodic sweep."""

    name = "outbox-relay"

    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: AbstractRobustConnection,
        topology: Topology,
        signer: MessageSigner,
        deliveries: DeliverySecrets,
        *,
        batch: int = 500,
        sweep_s: float = 1.0,
        retry_s: float = 2.0,
        lease_s: float = 5.0,
    ) -> None:
        super().__init__(pool, NOTIFY_CHANNEL, sweep_s)
        self._connection = connection
        self._topology = topology
        self._signer = signer
        self._deliveries = deliveries
        self._signed = frozenset({topology.tasks, topology.retry, topology.control})
        """Exchanges whose messages agents act on: signed, so agents can tell them from forgeries."""
        self._task_messages = frozenset({topology.tasks, topology.retry})
        """Exchanges of task messages: each gets its attempt's delivery secret here, never in a row."""
        self._batch = batch
        self._retry_s = retry_s
        self.lease_s = lease_s
        """How long a row written for :meth:`publish_committed` is left to its writer by the other relays."""
        self._channel: AbstractChannel | None = None
        self._retry_queues: set[int] = set()
        self._direct: set[asyncio.Task[None]] = set()
        self.stats = RelayStats()

    async def _channel_ready(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._retry_queues.clear()
        return self._channel

    async def run_once(self) -> None:
        await self.try_listen()
        while await self.publish_batch() >= self._batch:
            pass

    async def publish_batch(self) -> int:
        """Claim up to one batch of due rows and publish them; returns how many were claimed."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = [Outbound(**row) for row in await conn.fetch(
                """SELECT id, exchange, routing_key, body, headers, attempts FROM outbox
                   WHERE available_at <= now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
                self._batch,
            )]
            if not rows:
                return 0
            await self._settle(conn, rows, await self._publish_all(rows))
            return len(rows)

    def publish_committed(self, rows: list[Outbound]) -> None:
        """Publish rows this process has just committed, leased to it, without claiming them first;
        returns at once (the publish runs as a task of its own)."""
        if rows:
            # in no request's context: its statements are the relay's, not spans of the first request's trace
            publish = asyncio.create_task(self._publish_committed(rows), name="outbox-direct",
                                          context=contextvars.Context())
            self._direct.add(publish)
            publish.add_done_callback(self._direct.discard)

    async def _publish_committed(self, rows: list[Outbound]) -> None:
        try:
            async with asyncio.timeout(self.lease_s):  # past it, a sweep may publish them too
                results = await self._publish_all(rows)
        except TimeoutError as exc:
            results = [exc] * len(rows)
        try:
            async with self._pool.acquire() as conn:
                await self._settle(conn, rows, results)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # published but not deleted (or not rescheduled): the sweep after the lease covers them
            log.warning("outbox: %d directly published message(s) not settled: %s", len(rows), exc)

    async def _publish_all(self, rows: list[Outbound]) -> list[BaseException | None]:
        try:
            channel = await self._channel_ready()
            if len(rows) == 1:  # a light load's message: no task of its own to wait for
                try:
                    await self._publish(channel, rows[0])
                except Exception as exc:  # noqa: BLE001 - settled like gather's exceptions
                    return [exc]
                return [None]
            return await asyncio.gather(*(self._publish(channel, row) for row in rows), return_exceptions=True)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            return [exc] * len(rows)

    async def _settle(self, conn: asyncpg.Connection, rows: list[Outbound], results: list[BaseException | None]) -> None:
        """Delete what the broker confirmed and reschedule the rest (dropping orphaned commands)."""
        done = [row.id for row, res in zip(rows, results, strict=True) if not isinstance(res, BaseException)]
        failed = [(row.id, res) for row, res in zip(rows, results, strict=True) if isinstance(res, BaseException)]
        if done:
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", done)
        if failed:
            failed = await self._drop_orphaned_commands(conn, rows, failed)
        if failed:
            await conn.execute(
                """UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                          available_at = now() + make_interval(secs => $3)
                   WHERE id = ANY($1::bigint[])""",
                [row_id for row_id, _ in failed], repr(failed[0][1])[:500], self._retry_s,
            )
            self.stats.failed += len(failed)
            self.stats.last_error = repr(failed[0][1])[:500]
            log.warning("outbox: %d message(s) not published, retrying in %.1fs: %s",
                        len(failed), self._retry_s, self.stats.last_error)
        self.stats.published += len(done)

    async def stop(self) -> None:
        """Stop the loop once the direct publishes under way have settled."""
        await asyncio.gather(*self._direct, return_exceptions=True)
        await super().stop()

    async def _drop_orphaned_commands(
        self, conn: asyncpg.Connection, rows: list[Outbound], failed: list[tuple[int, BaseException]]
    ) -> list[tuple[int, BaseException]]:
        """Delete the returned agent commands whose agent is no longer alive, each with an audit record;
        returns the failures left to retry."""
        by_id = {row.id: row for row in rows}
        returned = {
            row_id: by_id[row_id].routing_key.removeprefix("agent.") for row_id, exc in failed
            if isinstance(exc, aio_pika.exceptions.PublishError) and by_id[row_id].exchange == self._topology.control
        }
        if not returned:
            return failed
        alive = {r["id"] for r in await conn.fetch(
            "SELECT id FROM agents WHERE id = ANY($1::text[]) AND state <> 'gone'", list(set(returned.values())))}
        orphaned = {row_id for row_id, agent_id in returned.items() if agent_id not in alive}
        for row_id in orphaned:
            row, agent_id = by_id[row_id], returned[row_id]
            command = ControlCommand.model_validate_json(row.body)
            reason = f"unroutable {command.action} command dropped: agent {agent_id} is gone or unknown"
            await audit(conn, actor="outbox-relay", action="outbox.command_dropped", target=agent_id, detail={
                "reason": reason, "action": command.action, "task_id": str(command.task_id) if command.task_id else None,
                "attempt": command.attempt, "outbox_id": row_id, "attempts": row.attempts + 1,
            })
            log.warning("outbox: %s (task %s)", reason, command.task_id or "-")
        if orphaned:
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", list(orphaned))
        return [(row_id, exc) for row_id, exc in failed if row_id not in orphaned]

    async def _publish(self, channel: AbstractChannel, row: Outbound) -> None:
        headers = dict(row.headers)
        # A PRODUCER span continuing the trace stored with the row (the submitting request's);
        # consumers see this span as their parent.
        with _tracer.start_as_current_span(
            f"publish {row.exchange}",
            context=extract_context(headers),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "publish",
                "messaging.destination.name": row.exchange,
                "messaging.rabbitmq.destination.routing_key": row.routing_key,
                "messaging.message.id": str(row.id),
            },
        ):
            inject_headers(headers)
            if row.exchange in self._signed:
                headers[HEADER_SIGNATURE] = self._signer.sign(bytes(row.body))
            if row.exchange in self._task_messages:
                headers[HEADER_DELIVERY_SECRET] = self._deliveries.header(row.body)
            if row.exchange == self._topology.retry:
                await self._ensure_retry_queue(channel, headers)
            message = aio_pika.Message(
                body=bytes(row.body),
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(row.id),
            )
            exchange = await channel.get_exchange(row.exchange, ensure=False)
            await exchange.publish(message, routing_key=row.routing_key, mandatory=True)

    async def _ensure_retry_queue(self, channel: AbstractChannel, headers: dict[str, Any]) -> None:
        for bucket in headers.get("BCC", []):
            delay_ms = int(bucket)
            if delay_ms not in self._retry_queues:
                await declare_retry_queue(channel, self._topology, delay_ms)
                self._retry_queues.add(delay_ms)
