"""One LISTEN connection per API process, fanned out to every live SSE stream.

A stream holds no database connection, and an event stream no task that wakes per event: the hub
writes to its connection itself. Notifications are handed out in batches, at most one per
``sse_flush_s`` (with many streams open less often, so that the streams get at most
``sse_max_writes_per_s`` writes a second in all: each is a socket write, the fan-out's main cost).
A batch's event frames are encoded once, as one HTTP chunk, and the same bytes are written to every
event stream's transport, ``sse_fanout_slice`` streams per turn of the event loop, so a request
waits behind one slice at most; a fan-out also waits while API requests hold database connections
(at most ``sse_yield_max_s`` per batch). A log follower is only woken, and only for news about its
own task: it reads the task's lines itself. No client holds the others up: a write never waits, and
a client that does not read gets its connection dropped once more than ``sse_max_buffer_bytes`` wait
unsent for it (the client reconnects). Streams are counted per process and per token; beyond
``sse_max_streams`` or ``sse_max_streams_per_token`` a new one gets 429. Every
``sse_revocation_check_s`` the hub asks Postgres which of its streams' tokens were revoked (on any
API process) and closes those streams; a revocation through this process closes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from control_plane.api.sse import CONNECTED, KEEPALIVE, Transport, http_chunk
from control_plane.auth import Principal
from control_plane.errors import TooManyRequests
from control_plane.loops import LoopService
from control_plane.settings import Settings

log = logging.getLogger("devart.hub")

CHANNELS = ("devart_events", "devart_logs")
_YIELD_POLL_S = 0.002
_KEEPALIVE_CHUNK = http_chunk(KEEPALIVE)


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str


@dataclass(eq=False)
class _Delivery:
    """A batch's chunk (``None``: a keepalive) on its way to ``recipients``, a slice at a time."""

    chunk: bytes | None
    recipients: list[Stream]
    waited_s: float = 0.0
    """How long it has waited for requests so far."""


@dataclass(eq=False)
class Stream:
    """One open SSE stream: whose token opened it and, for a log follower, the one task it wants to
    hear about. The hub writes an event stream's chunks to its transport (once its response has
    started, :meth:`EventHub.attach`); a log follower it wakes."""

    token_id: UUID
    task_id: str | None = None
    closed: bool = False
    reason: str = ""
    _max_buffer: int = 0
    _transport: Transport | None = field(default=None, repr=False)
    _ended: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future(),
                                         repr=False)
    _news: bool | None = None
    """A follower's pending wake-up: ``True`` news about its task, ``False`` a keepalive is due."""
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)
    _sent_at: float = 0.0
    _hub: EventHub | None = field(default=None, repr=False)

    def close(self, reason: str = "") -> None:
        """End the stream (idempotent): it gets no more batches; its response ends."""
        if self.closed:
            return
        self.closed, self.reason = True, reason
        if self._hub is not None:
            self._hub._forget(self)
        if not self._ended.done():
            self._ended.set_result(None)
        self._wake()

    async def ended(self) -> None:
        """Return once the stream is closed."""
        await asyncio.shield(self._ended)

    def _put(self, chunk: bytes | None, now: float) -> None:
        """Write a batch's chunk (``None``: a keepalive) to an event stream's connection, or wake a
        follower; never waits."""
        if self.task_id is not None:
            self._news = self._news or chunk is not None
            self._sent_at = now
            self._wake()
            return
        transport = self._transport
        if transport is None:  # its response has not started yet
            return
        if transport.is_closing():
            self.close("client gone")
        elif (unsent := transport.get_write_buffer_size()) > self._max_buffer:
            log.warning("dropping an event stream whose client does not read (%d bytes unsent)", unsent)
            self.close("too slow")
            transport.abort()  # frees the buffer now; close() would wait for the client to read it
        else:
            transport.write(chunk or _KEEPALIVE_CHUNK)
            self._sent_at = now

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _take(self) -> bool | None:
        while self._news is None and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        news, self._news = self._news, None
        return news


class EventHub(LoopService):
    """Subscribers get the notifications of the ``devart_events`` and ``devart_logs`` channels; a
    stream that falls behind is dropped (the client reconnects) rather than slowing everyone down.

    Delivering is cheap and spread out: a batch's chunk is built once and written to each event
    stream's transport by the hub itself (no queue, no task switch per stream), at most
    ``sse_fanout_slice`` streams per turn of the event loop, so a request arriving during a fan-out
    to thousands of streams waits for one slice, not for all of them. Keepalives come from one timer
    of the hub's, not one per stream."""

    name = "sse-hub"

    def __init__(self, pool: asyncpg.Pool, settings: Settings, *, requests_pool: asyncpg.Pool | None = None) -> None:
        super().__init__(settings.sse_revocation_check_s)
        self._pool = pool
        self._requests_pool = requests_pool
        """The API's pool: while a request holds one of its connections, a fan-out waits (requests first)."""
        self._settings = settings
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
        frames, tasks = [], set()
        for n in pending:
            if n.channel == "devart_events":
                for line in events_of(n.payload):
                    document = _document(line)
                    frames.append(f"event: {document.get('kind', 'task')}\ndata: {line}\n\n".encode())
                    if task_id := document.get("task_id"):
                        tasks.add(str(task_id))
            else:  # devart_logs: the payload is the task id
                tasks.add(n.payload)
        if frames:
            self._deliver(http_chunk(b"".join(frames)), list(self._every_event))
        if self._followers and (followers := [s for t in tasks for s in self._followers.get(t, ())]):
            self._deliver(b"", followers)  # a follower only needs to know there is news

    def _deliver(self, chunk: bytes | None, recipients: list[Stream]) -> None:
        if recipients:
            self._deliveries.append(_Delivery(chunk, recipients))
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
                stream._put(delivery.chunk, now)
        del recipients[-size:]
        if not recipients:
            self._deliveries.popleft()
        if self._deliveries:
            self._delivering = loop.call_soon(self._deliver_slice)

    def _schedule_beat(self) -> None:
        self._beat_at = asyncio.get_running_loop().call_later(self._settings.sse_heartbeat_s / 2, self._beat)

    def _beat(self) -> None:
        """A keepalive for every stream silent for half a heartbeat: none is silent for a whole one."""
        quiet_since = asyncio.get_running_loop().time() - self._settings.sse_heartbeat_s / 2
        self._deliver(None, [s for s in self._streams if s._sent_at <= quiet_since])
        self._schedule_beat()

    def open(self, who: Principal, *, task_id: UUID | None = None) -> Stream:
        """Register a stream for ``who`` (of every event, or of one task's logs and events), or raise
        :class:`TooManyRequests` past a cap. An event stream gets events once :meth:`attach` ed."""
        s = self._settings
        if len(self._streams) >= s.sse_max_streams:
            raise TooManyRequests(f"this server has {s.sse_max_streams} open streams, its limit; retry later")
        if self._per_token[who.token_id] >= s.sse_max_streams_per_token:
            raise TooManyRequests(
                f"this token has {s.sse_max_streams_per_token} open streams, its limit; close one first",
                field="Authorization",
            )
        stream = Stream(who.token_id, str(task_id) if task_id else None, _max_buffer=s.sse_max_buffer_bytes,
                        _sent_at=asyncio.get_running_loop().time(), _hub=self)
        self._streams.add(stream)
        if stream.task_id:
            self._followers[stream.task_id].add(stream)
        self._per_token[who.token_id] += 1
        return stream

    def attach(self, stream: Stream, transport: Transport) -> None:
        """Start writing every batch to the event stream's connection, its response having started
        (as an HTTP/1.1 chunked body): first ``: connected``, then each batch from the next on."""
        if stream.closed:
            return
        if transport.is_closing():  # the client left before the response started: its socket may be shut
            stream.close("client gone")
            return
        if (sock := transport.get_extra_info("socket")) is not None:
            # The kernel's buffer bounded too (Linux grows it to megabytes for a client that stops reading).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._settings.sse_max_buffer_bytes)
        transport.write(http_chunk(CONNECTED))
        stream._transport = transport
        self._every_event.add(stream)

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

    async def news(self, follower: Stream) -> AsyncIterator[bool]:
        """For a log follower: ``True`` when there is news about its task (logs, a transition),
        ``False`` when it is time for a keepalive (no news for half a heartbeat); ends when the
        stream is closed."""
        while not follower.closed:
            news = await follower._take()
            if news is not None:
                yield news


def events_of(payload: str) -> list[str]:
    """The JSON documents of one ``devart_events`` notification: one per line (a statement's
    transitions share a notification, migration 0093)."""
    return payload.split("\n")


def _document(payload: str) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
