"""One LISTEN connection per API process, fanned out to every live SSE stream.

A stream holds no database connection: it is a bounded queue fed by the hub. Streams are counted
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
    kind: str
    """The ``kind`` of a ``devart_events`` payload (task, incident, ...), parsed once for every stream."""


@dataclass(eq=False)
class Stream:
    """One open SSE stream: what the hub has for it, and whose token opened it."""

    token_id: UUID
    queue: asyncio.Queue[Notification | None]
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

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def listen(self) -> None:
        self._conn = await self._pool.acquire()
        for channel in CHANNELS:
            await self._conn.add_listener(channel, self._on_notify)

    async def stop(self) -> None:
        await super().stop()
        for stream in list(self._streams):
            stream.close("server stopping")
        if self._conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                for channel in CHANNELS:
                    await self._conn.remove_listener(channel, self._on_notify)
            await self._pool.release(self._conn)
            self._conn = None

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        item = Notification(channel, payload, _kind(payload) if channel == "devart_events" else "")
        for stream in list(self._streams):
            try:
                stream.queue.put_nowait(item)
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

    async def notifications(self, stream: Stream) -> AsyncIterator[Notification | None]:
        """Notifications as they come, ``None`` after each ``sse_heartbeat_s`` of silence (time for
        a keepalive); ends when the stream is closed."""
        idle_s = self._settings.sse_heartbeat_s
        while not stream.closed:
            try:
                item = await asyncio.wait_for(stream.queue.get(), timeout=idle_s)
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
