"""One LISTEN connection per API process, fanned out to every live SSE stream.

A stream holds no database connection: it is a bounded list of batches fed by the hub.
Notifications are handed out in batches, at most one per ``sse_flush_s``, with the event frames
built once for all streams; with many streams open, batches go out less often, so that the streams
get at most ``sse_max_writes_per_s`` writes a second in all (each is a socket write per stream, the
fan-out's main cost), and a fan-out waits while API requests hold database connections (at most
``sse_yield_max_s`` per batch), so a request waits behind one slice of it at most; an event
stream gets every batch with events, a log follower only those about its task. A batch reaches ``sse_fanout_slice`` streams per turn of the event loop, so requests
go on between slices; a stream wakes once for all it has pending. A stream more than 1,000 batches
behind is closed with ``: closed (too slow)`` (the client reconnects). Streams are counted per
process and per token; beyond ``sse_max_streams`` or ``sse_max_streams_per_token`` a new one gets
429. Every ``sse_revocation_check_s`` the hub asks Postgres which of its streams' tokens were
revoked (on any API process) and closes those streams; a revocation through this process closes
them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from control_plane.auth import Principal
from control_plane.errors import TooManyRequests
from control_plane.loops import LoopService
from control_plane.settings import Settings

log = logging.getLogger("devart.hub")

CHANNELS = ("devart_events", "devart_logs")
_YIELD_POLL_S = 0.002


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str
    task_id: str | None = None
    """The task it concerns, when it concerns one (a log follower's filter)."""


@dataclass(frozen=True)
class Batch:
    """The notifications of one flush, and the ``devart_events`` ones framed as SSE once for all."""

    notifications: tuple[Notification, ...]
    event_frames: bytes

    @staticmethod
    def merged(batches: list[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        return Batch(tuple(n for b in batches for n in b.notifications), b"".join(b.event_frames for b in batches))


@dataclass(eq=False)
class _Delivery:
    """A batch (``None``: a keepalive) on its way to ``recipients``, handed out a slice at a time."""

    item: Batch | None
    recipients: list[Stream]
    waited_s: float = 0.0
    """How long it has waited for requests so far."""


@dataclass(eq=False)
class Stream:
    """One open SSE stream: the batches the hub has for it and not yet taken, whose token opened
    it, and (for a log follower) the one task it wants to hear about."""

    token_id: UUID
    task_id: str | None = None
    closed: bool = False
    reason: str = ""
    _backlog: int = 1000
    _pending: list[Batch | None] = field(default_factory=list, repr=False)
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)
    _sent_at: float = 0.0
    _hub: EventHub | None = field(default=None, repr=False)

    def close(self, reason: str = "") -> None:
        """End the stream (idempotent); its generator ends after what it already has."""
        if self.closed:
            return
        self.closed, self.reason = True, reason
        if self._hub is not None:
            self._hub._forget(self)
        self._wake()

    def _put(self, item: Batch | None, now: float) -> None:
        """Hand over a batch (``None``: a keepalive); no task switch, the stream's own task takes
        everything pending at its next turn."""
        if len(self._pending) >= self._backlog:
            log.warning("closing an event stream %d batches behind", self._backlog)
            self.close("too slow")
            return
        self._pending.append(item)
        self._sent_at = now
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _take(self) -> list[Batch | None]:
        while not self._pending and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        taken, self._pending = self._pending, []
        return taken


class EventHub(LoopService):
    """Subscribers get :class:`Batch` es of notifications; a stream that falls behind is closed
    (the client reconnects) rather than slowing everyone down.

    Delivering is cheap and spread out: a batch is appended to each stream's list (no queue, no
    timer), at most ``sse_fanout_slice`` streams per turn of the event loop, so a request arriving
    during a fan-out to thousands of streams waits for one slice, not for all of them. A stream's
    task wakes once for everything pending and writes it as one chunk. Keepalives come from one
    timer of the hub's, not one per stream."""

    name = "sse-hub"

    def __init__(self, pool: asyncpg.Pool, settings: Settings, *, queue_size: int = 1000,
                 requests_pool: asyncpg.Pool | None = None) -> None:
        super().__init__(settings.sse_revocation_check_s)
        self._pool = pool
        self._requests_pool = requests_pool
        """The API's pool: while a request holds one of its connections, a fan-out waits (requests first)."""
        self._settings = settings
        self._queue_size = queue_size
        self._streams: set[Stream] = set()
        self._every_event: set[Stream] = set()
        self._followers: defaultdict[str, set[Stream]] = defaultdict(set)
        self._per_token: Counter[UUID] = Counter()
        self._conn: asyncpg.Connection | None = None
        self._pending: list[Notification] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self._deliveries: deque[_Delivery] = deque()
        self._delivering: asyncio.Handle | None = None
        self._beat_at: asyncio.TimerHandle | None = None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def listen(self) -> None:
        self._conn = await self._pool.acquire()
        for channel in CHANNELS:
            await self._conn.add_listener(channel, self._on_notify)
        self._schedule_beat()

    async def stop(self) -> None:
        await super().stop()
        for handle in (self._flush_at, self._delivering, self._beat_at):
            if handle is not None:
                handle.cancel()
        self._flush_at = self._delivering = self._beat_at = None
        self._deliveries.clear()
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
            self._flush_at = asyncio.get_running_loop().call_later(self.flush_interval_s, self._flush)

    @property
    def flush_interval_s(self) -> float:
        """How long notifications gather before a batch: ``sse_flush_s``, longer with many streams."""
        return max(self._settings.sse_flush_s, len(self._streams) / self._settings.sse_max_writes_per_s)

    def _flush(self) -> None:
        self._flush_at = None
        pending, self._pending = self._pending, []
        if not pending or not self._streams:
            return
        notifications, frames = [], []
        for n in pending:
            if n.channel == "devart_events":
                document = _document(n.payload)
                frames.append(f"event: {document.get('kind', 'task')}\ndata: {n.payload}\n\n".encode())
                task_id = document.get("task_id")
                notifications.append(Notification(n.channel, n.payload, str(task_id) if task_id else None))
            else:  # devart_logs: the payload is the task id
                notifications.append(Notification(n.channel, n.payload, n.payload))
        batch = Batch(tuple(notifications), b"".join(frames))
        recipients = list(self._every_event) if frames else []
        if self._followers:
            recipients += {s for n in notifications if n.task_id for s in self._followers.get(n.task_id, ())}
        self._deliver(batch, recipients)

    def _deliver(self, item: Batch | None, recipients: list[Stream]) -> None:
        if recipients:
            self._deliveries.append(_Delivery(item, recipients))
        if self._delivering is None and self._deliveries:
            self._delivering = asyncio.get_running_loop().call_soon(self._deliver_slice)

    def _requests_running(self) -> bool:
        pool = self._requests_pool
        return pool is not None and pool.get_size() > pool.get_idle_size()

    def _deliver_slice(self) -> None:
        """One slice of the oldest delivery; the rest at the loop's next turn, after its I/O. While
        requests run, it waits for them (each slice is a socket write per stream, which a request
        would wait behind), at most ``sse_yield_max_s`` in all per delivery."""
        self._delivering = None
        delivery = self._deliveries[0]
        loop = asyncio.get_running_loop()
        if self._requests_running() and delivery.waited_s < self._settings.sse_yield_max_s:
            delivery.waited_s += _YIELD_POLL_S
            self._delivering = loop.call_later(_YIELD_POLL_S, self._deliver_slice)
            return
        now, size, recipients = loop.time(), self._settings.sse_fanout_slice, delivery.recipients
        for stream in recipients[-size:]:
            if not stream.closed:
                stream._put(delivery.item, now)
        del recipients[-size:]
        if not recipients:
            self._deliveries.popleft()
        if self._deliveries:
            self._delivering = asyncio.get_running_loop().call_soon(self._deliver_slice)

    def _schedule_beat(self) -> None:
        self._beat_at = asyncio.get_running_loop().call_later(self._settings.sse_heartbeat_s / 2, self._beat)

    def _beat(self) -> None:
        """A keepalive for every stream silent for half a heartbeat: none is silent for a whole one."""
        quiet_since = asyncio.get_running_loop().time() - self._settings.sse_heartbeat_s / 2
        self._deliver(None, [s for s in self._streams if s._sent_at <= quiet_since])
        self._schedule_beat()

    def open(self, who: Principal, *, task_id: UUID | None = None) -> Stream:
        """Register a stream for ``who`` (of every event, or of one task's logs and events), or raise
        :class:`TooManyRequests` past a cap."""
        s = self._settings
        if len(self._streams) >= s.sse_max_streams:
            raise TooManyRequests(f"this server has {s.sse_max_streams} open streams, its limit; retry later")
        if self._per_token[who.token_id] >= s.sse_max_streams_per_token:
            raise TooManyRequests(
                f"this token has {s.sse_max_streams_per_token} open streams, its limit; close one first",
                field="Authorization",
            )
        stream = Stream(who.token_id, str(task_id) if task_id else None, _backlog=self._queue_size,
                        _sent_at=asyncio.get_running_loop().time(), _hub=self)
        self._streams.add(stream)
        (self._followers[stream.task_id] if stream.task_id else self._every_event).add(stream)
        self._per_token[who.token_id] += 1
        return stream

    def _forget(self, stream: Stream) -> None:
        if stream in self._streams:
            self._streams.discard(stream)
            if stream.task_id is None:
                self._every_event.discard(stream)
            else:
                followers = self._followers[stream.task_id]
                followers.discard(stream)
                if not followers:
                    del self._followers[stream.task_id]
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
            revoked = await conn.fetch("SELECT id FROM devart_revoked_tokens($1::uuid[]) AS id", tokens)
        for row in revoked:
            self.revoke(row["id"])

    async def notifications(self, stream: Stream) -> AsyncIterator[Batch | None]:
        """Everything pending for ``stream`` at each wake-up, as one batch, and ``None`` when it is
        time for a keepalive (no other traffic for half a heartbeat); ends when the stream is closed."""
        while not stream.closed:
            items = await stream._take()
            batches = [b for b in items if b is not None]
            if batches:
                yield Batch.merged(batches)
            elif items:
                yield None


def _document(payload: str) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
