"""A queue consumer on aiormq's channel beneath a robust aio-pika one.

aio-pika wraps every delivery in an ``IncomingMessage`` and runs the callback in a task of its own,
besides the task aiormq already runs it in; an agent pays that for every task it takes. This
consumer registers its callback with aiormq directly, so it gets aiormq's ``DeliveredMessage`` in
aiormq's task. aio-pika does not know of it and so does not restore it: the consumer consumes again,
under the same tag, when its robust channel has been reopened (after a lost connection or a channel
error; the channel has restored its prefetch and declared the queue again by then) and when the
broker cancelled it (its queue was deleted: it is declared again first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

log = logging.getLogger("devart.agent")

DeliveryCallback = Callable[[DeliveredMessage], Awaitable[None]]


class QueueConsumer:
    """Deliveries of ``queue`` (declared on ``channel``) to ``callback``, unacked until the caller settles them."""

    def __init__(self, channel: AbstractRobustChannel, queue: AbstractRobustQueue, callback: DeliveryCallback) -> None:
        self._channel = channel
        self._queue = queue
        self._callback = callback
        self._tag: str | None = None
        """Set while consuming is wanted, kept across restores; None once stopped."""
        self._lock = asyncio.Lock()
        self._restoring: set[asyncio.Task[None]] = set()
        channel.reopen_callbacks.add(self._on_reopen)

    async def start(self) -> None:
        """Start consuming (nothing if already consuming)."""
        async with self._lock:
            if self._tag is None:
                self._tag = await self._consume(None)

    async def stop(self) -> None:
        """Stop consuming: the broker sends nothing more; deliveries already taken stay the caller's."""
        async with self._lock:
            tag, self._tag = self._tag, None
            if tag is None:
                return
            channel = await self._channel.get_underlay_channel()
            await channel.basic_cancel(tag)

    async def close(self) -> None:
        """Stop restoring (the connection is being closed)."""
        self._channel.reopen_callbacks.discard(self._on_reopen)
        for task in self._restoring:
            task.cancel()
        await asyncio.gather(*self._restoring, return_exceptions=True)

    async def _consume(self, tag: str | None) -> str:
        channel = await self._channel.get_underlay_channel()
        channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        ok = await channel.basic_consume(self._queue.name, self._callback, no_ack=False, consumer_tag=tag)
        assert ok.consumer_tag is not None
        return ok.consumer_tag

    async def _restore(self, *, queue_gone: bool) -> None:
        try:
            async with self._lock:
                channel = await self._channel.get_underlay_channel()
                if self._tag is None or self._tag in channel.consumers:
                    return
                if queue_gone:
                    await self._queue.restore()  # declared and bound again
                await self._consume(self._tag)
        except Exception as exc:  # the channel is lost again: its next reopen consumes again
            log.warning("could not consume %s again: %s: %s", self._queue.name, type(exc).__name__, exc)
            return
        log.info("consuming %s again", self._queue.name)

    async def _on_reopen(self, _channel: object) -> None:
        await self._restore(queue_gone=False)

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag != self._tag:
            return
        task = asyncio.create_task(self._restore(queue_gone=True), name="agent-consumer-restore")
        self._restoring.add(task)
        task.add_done_callback(self._restoring.discard)
