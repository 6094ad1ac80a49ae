"""The one shape of every background loop: ``run_once()`` on an interval with jitter."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod

import asyncpg

log = logging.getLogger("devart.loops")


class LoopService(ABC):
    """Calls ``run_once`` every ``interval_s`` (+/- jitter) until stopped; ``wake()`` runs it early.

    An iteration that raises is logged and retried at the next tick; one that overruns the
    interval is logged as a warning. Tests call ``run_once()`` directly.
    """

    name = "loop"

    def __init__(self, interval_s: float, *, jitter: float = 0.1) -> None:
        self.interval_s = interval_s
        self.jitter = jitter
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def run_once(self) -> None: ...

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._wake.clear()  # a wake() during run_once() makes the next wait return at once
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s iteration failed", self.name)
            elapsed = time.monotonic() - started
            if elapsed > self.interval_s:
                log.warning("%s iteration took %.2fs, over its %.2fs interval", self.name, elapsed, self.interval_s)
            pause = self.interval_s * (1 + random.uniform(-self.jitter, self.jitter))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, pause - elapsed))
            except TimeoutError:
                pass


def released(conn: asyncpg.Connection) -> bool:
    """Whether asyncpg gave the pool handle ``conn`` back to its pool itself, as it does when the
    connection dies: every call on the handle then raises InterfaceError, and releasing it again too."""
    try:
        conn.is_closed()
    except asyncpg.InterfaceError:
        return True
    return False


class ListeningLoop(LoopService):
    """A loop that also wakes up on a Postgres notification on ``channel``.

    The listening connection is taken from ``pool`` on the first ``listen()`` and again after it was
    lost; subclasses call ``listen()`` at the start of ``run_once()``, so a lost connection costs one
    interval of latency, never a change: the interval still runs the loop.
    """

    def __init__(self, pool: asyncpg.Pool, channel: str, interval_s: float) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._notify_channel = channel
        self._listener: asyncpg.Connection | None = None

    async def listen(self) -> None:
        if not self._listening():
            self._listener = None
            self._listener = await self._pool.acquire()
            await self._listener.add_listener(self._notify_channel, self._on_notify)

    def _listening(self) -> bool:
        return self._listener is not None and not released(self._listener) and not self._listener.is_closed()

    async def try_listen(self) -> None:
        """``listen()``, logging instead of raising when the database cannot be reached."""
        try:
            await self.listen()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("%s cannot listen on %s: %s", self.name, self._notify_channel, exc)

    def _on_notify(self, *_: object) -> None:
        self.wake()

    async def stop(self) -> None:
        await super().stop()
        if self._listening():
            try:
                await self._listener.remove_listener(self._notify_channel, self._on_notify)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                pass
            await self._pool.release(self._listener)
        self._listener = None
