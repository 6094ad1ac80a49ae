"""The consumer side of the raw aio-pika floor: take a request, publish a reply (confirmed), ack.

    python -m bench.raw_echo AMQP_URL REQUEST_QUEUE PREFETCH

Replies go to the queue named in each request's ``reply_to``, with the request's
``correlation_id``. The order (reply confirmed, then ack) is devart's agent protocol stripped of
everything else, so the benchmark measures what the broker itself costs.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from agents.sdk.connection import connect_robust


async def serve(amqp_url: str, request_queue: str, prefetch: int) -> None:
    """Echo until SIGTERM/SIGINT."""
    connection = await connect_robust(amqp_url)
    async with connection:
        publish = await connection.channel(publisher_confirms=True)
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=prefetch)
        queue = await consume.get_queue(request_queue, ensure=True)

        async def on_request(message: AbstractIncomingMessage) -> None:
            reply = aio_pika.Message(message.body, correlation_id=message.correlation_id,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await publish.default_exchange.publish(reply, routing_key=message.reply_to or "", mandatory=True)
            await message.ack()

        await queue.consume(on_request)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], int(sys.argv[3])))
