"""Broker topology: exchange and queue names, and the one function that declares them.

Both the control plane and agents declare what they use (declarations are idempotent), so either
side may start first. ``prefix`` isolates several installations (or tests) on one broker.

Delayed retries need no plugin: a retry is published to ``devart.retry`` with routing key = pool id
and a ``BCC`` header naming the delay bucket. The bucket queue holds it for its TTL and then
dead-letters it to ``devart.tasks`` with its own routing key (BCC is dropped by the broker), so it
lands back in the pool queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue


@dataclass(frozen=True)
class Topology:
    prefix: str = ""
    delivery_limit: int = 5
    """Deliveries of one message to a pool queue before the broker dead-letters it (poison)."""
    queue_expires_ms: int | None = None
    """Delete a queue unused this long (``x-expires``); only for throwaway installations and tests."""

    def queue_arguments(self, **arguments: object) -> dict[str, object]:
        if self.queue_expires_ms is not None:
            arguments["x-expires"] = self.queue_expires_ms
        return arguments

    @property
    def tasks(self) -> str:
        return f"{self.prefix}devart.tasks"

    @property
    def retry(self) -> str:
        return f"{self.prefix}devart.retry"

    @property
    def dead(self) -> str:
        return f"{self.prefix}devart.dead"

    @property
    def events(self) -> str:
        return f"{self.prefix}devart.events"

    @property
    def control(self) -> str:
        return f"{self.prefix}devart.control"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}devart.dead"

    @property
    def events_queue(self) -> str:
        return f"{self.prefix}devart.control.events"

    def pool_queue(self, pool_id: str) -> str:
        return f"{self.prefix}devart.pool.{pool_id}"

    def retry_queue(self, delay_ms: int) -> str:
        return f"{self.prefix}devart.retry.{delay_ms}"

    @staticmethod
    def retry_bucket(delay_ms: int) -> str:
        return str(delay_ms)

    def agent_queue(self, agent_id: str) -> str:
        return f"{self.prefix}devart.agent.{agent_id}"


async def declare_exchanges(channel: AbstractChannel, topo: Topology) -> dict[str, AbstractExchange]:
    durable = {"durable": True}
    return {
        "tasks": await channel.declare_exchange(topo.tasks, aio_pika.ExchangeType.DIRECT, **durable),
        "retry": await channel.declare_exchange(topo.retry, aio_pika.ExchangeType.DIRECT, **durable),
        "dead": await channel.declare_exchange(topo.dead, aio_pika.ExchangeType.FANOUT, **durable),
        "events": await channel.declare_exchange(topo.events, aio_pika.ExchangeType.TOPIC, **durable),
        "control": await channel.declare_exchange(topo.control, aio_pika.ExchangeType.TOPIC, **durable),
    }


async def declare_pool_queue(channel: AbstractChannel, topo: Topology, pool_id: str) -> AbstractQueue:
    """The competing-consumers queue of one pool (quorum, delivery limit, dead letters)."""
    queue = await channel.declare_queue(
        topo.pool_queue(pool_id),
        durable=True,
        arguments=topo.queue_arguments(**{
            "x-queue-type": "quorum",
            "x-delivery-limit": topo.delivery_limit,
            "x-dead-letter-exchange": topo.dead,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }),
    )
    await queue.bind(topo.tasks, routing_key=pool_id)
    return queue


async def declare_retry_queue(channel: AbstractChannel, topo: Topology, delay_ms: int) -> AbstractQueue:
    """A holding queue for one delay: classic (cheap, one per delay bucket), durable, per-queue TTL."""
    queue = await channel.declare_queue(
        topo.retry_queue(delay_ms),
        durable=True,
        arguments=topo.queue_arguments(**{"x-message-ttl": delay_ms, "x-dead-letter-exchange": topo.tasks}),
    )
    await queue.bind(topo.retry, routing_key=topo.retry_bucket(delay_ms))
    return queue


async def declare_dead_queue(channel: AbstractChannel, topo: Topology) -> AbstractQueue:
    queue = await channel.declare_queue(
        topo.dead_queue, durable=True, arguments=topo.queue_arguments(**{"x-queue-type": "quorum"})
    )
    await queue.bind(topo.dead)
    return queue


async def declare_events_queue(channel: AbstractChannel, topo: Topology) -> AbstractQueue:
    queue = await channel.declare_queue(
        topo.events_queue, durable=True, arguments=topo.queue_arguments(**{"x-queue-type": "quorum"})
    )
    await queue.bind(topo.events, routing_key="task.#")
    await queue.bind(topo.events, routing_key="agent.#")
    return queue
