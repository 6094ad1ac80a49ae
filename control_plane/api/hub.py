"""One LISTEN connection per API process, fanned out to every live SSE stream.

A stream holds no database connection: it is a bounded queue fed by the hub. Notifications are
handed out in batches, at most one per ``sse_flush_s`` per stream, with the event frames built once
for all streams: the cost of fan-out grows with the number of streams, not with streams x events.
Streams are counted
per process and per token; beyond ``sse_max_streams`` or ``sse_max_streams_per_token`` a new one
gets 429. Every ``sse_revocation_check_s`` the hub asks Postgres which of its streams' tokens were
revoked (on any API process) and closes those streams; a revocation through this process closes
them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from control_plane.auth import Principal
from control_plane.errors import TooManyRequests
from control_plane.loops import LoopService
from control_plane.settings import Settings

log = logging.getLogger("devart.hub")

CHANNELS = ("devart_events", "devart_logs")


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str


@dataclass(frozen=True)
class Batch:
    """The notifications of one flush, and the ``devart_events`` ones framed as SSE once for all."""

    notifications: tuple[Notification, ...]
    event_frames: bytes


@dataclass(eq=False)
class Stream:
    """One open SSE stream: what the hub has for it, and whose token opened it."""

    token_id: UUID
    queue: asyncio.Queue[Batch | None]
    closed: bool = False
    reason: str = ""
    _hub: EventHub | None = field(default=None, repr=False)

    def close(self, reason: str = "") -> None:
        """End the stream (idempotent); its generator sees ``None`` next."""
        if self.closed:
            return
        self.closed, self.reason = True, reason
        if self._hub is not None:
            self._hub._forget(self)
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class EventHub(LoopService):
    """Subscribers get :class:`Notification` s; a stream that falls behind is closed (the client
    reconnects) rather than slowing everyone down."""

    name = "sse-hub"

    def __init__(self, pool: asyncpg.Pool, settings: Settings, *, queue_size: int = 1000) -> None:
        super().__init__(settings.sse_revocation_check_s)
        self._pool = pool
        self._settings = settings
        self._queue_size = queue_size
        self._streams: set[Stream] = set()
        self._per_token: Counter[UUID] = Counter()
        self._conn: asyncpg.Connection | None = None
        self._pending: list[Notification] = []
        self._flush_at: asyncio.TimerHandle | None = None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def listen(self) -> None:
        self._conn = await self._pool.acquire()
        for channel in CHANNELS:
            await self._conn.add_listener(channel, self._on_notify)

    async def stop(self) -> None:
        await super().stop()
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        for stream in list(self._streams):
            stream.close("server stopping")
        if self._conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                for channel in CHANNELS:
                    await self._conn.remove_listener(channel, self._on_notify)
            await self._pool.release(self._conn)
            self._conn = None

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._pending.append(Notification(channel, payload))
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self._settings.sse_flush_s, self._flush)

    def _flush(self) -> None:
        self._flush_at = None
        pending, self._pending = tuple(self._pending), []
        if not pending or not self._streams:
            return
        frames = b"".join(f"event: {_kind(n.payload)}\ndata: {n.payload}\n\n".encode()
                          for n in pending if n.channel == "devart_events")
        batch = Batch(pending, frames)
        for stream in list(self._streams):
            try:
                stream.queue.put_nowait(batch)
            except asyncio.QueueFull:
                log.warning("closing a slow event stream")
                stream.close("too slow")

    def open(self, who: Principal) -> Stream:
        """Register a stream for ``who``, or raise :class:`TooManyRequests` past a cap."""
        s = self._settings
        if len(self._streams) >= s.sse_max_streams:
            raise TooManyRequests(f"this server has {s.sse_max_streams} open streams, its limit; retry later")
        if self._per_token[who.token_id] >= s.sse_max_streams_per_token:
            raise TooManyRequests(
                f"this token has {s.sse_max_streams_per_token} open streams, its limit; close one first",
                field="Authorization",
            )
        stream = Stream(who.token_id, asyncio.Queue(self._queue_size), _hub=self)
        self._streams.add(stream)
        self._per_token[who.token_id] += 1
        return stream

    def _forget(self, stream: Stream) -> None:
        if stream in self._streams:
            self._streams.discard(stream)
            self._per_token[stream.token_id] -= 1
            if self._per_token[stream.token_id] <= 0:
                del self._per_token[stream.token_id]

    def revoke(self, token_id: UUID) -> None:
        """Close every stream of ``token_id`` now."""
        for stream in [s for s in self._streams if s.token_id == token_id]:
            stream.close("token revoked")

    async def run_once(self) -> None:
        """Close the streams whose token was revoked (here or on another API process)."""
        tokens = list(self._per_token)
        if not tokens:
            return
        async with self._pool.acquire() as conn:
            revoked = await conn.fetch(
                "SELECT id FROM api_tokens WHERE id = ANY($1::uuid[]) AND revoked_at IS NOT NULL", tokens
            )
        for row in revoked:
            self.revoke(row["id"])

    async def notifications(self, stream: Stream) -> AsyncIterator[Batch | None]:
        """Batches of notifications as they come, ``None`` after each ``sse_heartbeat_s`` of silence (time for
        a keepalive); ends when the stream is closed."""
        idle_s = self._settings.sse_heartbeat_s
        first = random.uniform(0.5, 1.0) * idle_s  # streams opened together do not beat together
        while not stream.closed:
            wait, first = first or idle_s, 0.0
            try:
                async with asyncio.timeout(wait):  # no task per wait, unlike wait_for
                    item = await stream.queue.get()
            except TimeoutError:
                yield None
                continue
            if item is None:
                return
            yield item


def _kind(payload: str) -> str:
    try:
        return str(json.loads(payload).get("kind", "task"))
    except (ValueError, AttributeError):
        return "task"
