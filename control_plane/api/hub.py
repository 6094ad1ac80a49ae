"""One LISTEN connection per API process, fanned out to every live SSE subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

log = logging.getLogger("devart.hub")

CHANNELS = ("devart_events", "devart_logs")


class EventHub:
    """Subscribers get ``(channel, payload)`` pairs; a subscriber that falls behind is dropped
    (its stream ends, and the client reconnects) rather than slowing everyone down."""

    def __init__(self, pool: asyncpg.Pool, *, queue_size: int = 1000) -> None:
        self._pool = pool
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[tuple[str, str] | None]] = set()
        self._conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._conn = await self._pool.acquire()
        for channel in CHANNELS:
            await self._conn.add_listener(channel, self._on_notify)

    async def stop(self) -> None:
        for queue in list(self._subscribers):
            queue.put_nowait(None)
        if self._conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                for channel in CHANNELS:
                    await self._conn.remove_listener(channel, self._on_notify)
            await self._pool.release(self._conn)
            self._conn = None

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((channel, payload))
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                log.warning("dropping a slow event subscriber")

    def is_subscribed(self, queue: asyncio.Queue[tuple[str, str] | None]) -> bool:
        return queue in self._subscribers

    async def notifications(
        self, queue: asyncio.Queue[tuple[str, str] | None], *, idle_s: float
    ) -> AsyncIterator[tuple[str, str] | None]:
        """``(channel, payload)`` as they come, ``None`` after each ``idle_s`` of silence (time for a
        keepalive); ends when the hub stops or drops this subscriber."""
        while self.is_subscribed(queue):
            try:
                item = await asyncio.wait_for(queue.get(), timeout=idle_s)
            except TimeoutError:
                yield None
                continue
            if item is None:
                return
            yield item

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[tuple[str, str] | None]]:
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
