"""Coalesced acks on a real broker: one frame for a run of consecutive tags, nothing acked that was
not asked for, and a connection lost with acks pending gives every unacked delivery back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
from aiormq.abc import DeliveredMessage

from agents.sdk.acks import Acker
from agents.sdk.connection import connect_robust
from agents.sdk.topology import Topology, declare_exchanges, declare_pool_queue
from tests.agents.sdk.broker import until

POOL = "acks"


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> None:
    for i in range(count):
        await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=queue)


async def _take(amqp_url: str, topology: Topology, count: int) -> tuple[aio_pika.abc.AbstractConnection,
                                                                           list[DeliveredMessage]]:
    """A consumer connection holding ``count`` deliveries of the pool queue, in tag order (aiormq's
    messages, as the agent's consumer gets them)."""
    connection = await connect_robust(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=count)
    queue = await declare_pool_queue(channel, topology, POOL)
    held: list[DeliveredMessage] = []

    async def keep(message: DeliveredMessage) -> None:
        held.append(message)

    await (await channel.get_underlay_channel()).basic_consume(queue.name, keep)
    await until(lambda: len(held) == count, what=f"{count} deliveries")
    held.sort(key=lambda m: m.delivery_tag or 0)
    return connection, held


async def _ready(amqp_url: str, topology: Topology, count: int) -> list[bytes]:
    """The bodies of the ``count`` messages ready in the pool queue (taken and acked)."""
    connection, held = await _take(amqp_url, topology, count)
    async with connection:
        for message in held:
            assert message.delivery_tag is not None
            await message.channel.basic_ack(message.delivery_tag)
        return sorted(m.body for m in held)


async def _nothing_ready(channel: aio_pika.abc.AbstractChannel, queue: str) -> bool:
    return await (await channel.declare_queue(queue, passive=True)).get(no_ack=True, fail=False) is None


@asynccontextmanager
async def _pool_queue_of(
    amqp_url: str, topology: Topology, count: int
) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, str]]:
    """The pool queue with ``count`` messages published to it: a channel of the publisher and its name."""
    publisher = await connect_robust(amqp_url)
    async with publisher:
        channel = await publisher.channel()
        await declare_exchanges(channel, topology)
        queue = (await declare_pool_queue(channel, topology, POOL)).name
        await _publish(channel, queue, count)
        yield channel, queue


async def test_acks_of_a_turn_settle_exactly_the_deliveries_asked_for(amqp_url: str, topology: Topology) -> None:
    async with _pool_queue_of(amqp_url, topology, 8) as (channel, queue):
        connection, held = await _take(amqp_url, topology, 8)
        acker = Acker()
        async with connection:
            # tags 1..8; 3 and 7 stay unsettled (a long task, a task still running), 5 goes back
            for message in (held[0], held[1], held[3]):
                acker.ack(message)
            await acker.nack(held[4], requeue=True)
            await acker.flush()
            for message in (held[5], held[7]):
                acker.ack(message)
            # the connection closes with these acks still due: they go out first, or not at all
            await acker.flush()
        # 3 and 7 were never acked; 5 was requeued (and is ready once more)
        assert await _ready(amqp_url, topology, 3) == sorted([b"2", b"4", b"6"])
        assert await _nothing_ready(channel, queue)


async def test_a_run_of_consecutive_tags_is_one_ack(amqp_url: str, topology: Topology) -> None:
    async with _pool_queue_of(amqp_url, topology, 6) as (channel, queue):
        connection, held = await _take(amqp_url, topology, 6)
        async with connection:
            consumer_channel = held[0].channel
            sent: list[tuple[int, bool]] = []
            basic_ack = consumer_channel.basic_ack

            async def recorded(delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
                sent.append((delivery_tag, multiple))
                await basic_ack(delivery_tag, multiple=multiple, wait=wait)

            consumer_channel.basic_ack = recorded  # type: ignore[method-assign]  # aiormq's, to see the frames
            acker = Acker()
            for message in (held[2], held[1], held[0], held[4]):
                acker.ack(message)
            await acker.flush()
            assert sent == [(3, True), (5, False)]
            acker.ack(held[3])
            acker.ack(held[5])
            await acker.flush()
            assert sent[2:] == [(6, True)]
        assert await _nothing_ready(channel, queue)
