"""Leadership among control planes: the loops that must run once per installation run on one of them.

Every control plane serves the API and runs the outbox relay, the events consumer and the
dispatcher (they share the work safely: ``FOR UPDATE SKIP LOCKED``, guarded idempotent updates).
The sweeps that act on the whole installation (the reaper, approval expiry, span retention, the
Kubernetes Job sweeper, the remediation loop) run only on the leader: the control plane holding a
Postgres session-level advisory lock. Leadership lives as long as the session: a leader killed
with SIGKILL, or cut off from the database, loses it when Postgres ends its session, and another
control plane takes it on its next try (within ``interval_s``, plus the time Postgres needs to
notice a dead peer: immediately for a killed process, TCP keepalive for a lost host).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from control_plane.loops import LoopService, released

log = logging.getLogger("devart.leadership")

LEADER_LOCK = 0x64657661_7274  # "devart": one advisory lock key per database (= per installation)


class Leadership(LoopService):
    """Tries to become the leader every ``interval_s``; while it is, runs ``loops``.

    The lock is held on a connection taken from ``pool`` for as long as this control plane leads;
    each iteration checks that connection, and losing it stops the loops at once.
    """

    name = "leadership"

    def __init__(self, pool: asyncpg.Pool, loops: Sequence[LoopService], *, interval_s: float) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._loops = list(loops)
        self._conn: asyncpg.Connection | None = None
        self.is_leader = False

    async def run_once(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.fetchval("SELECT 1")
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("leader lost its database session (%s); stopping the leader's loops", exc)
                await self._step_down()
        conn = await self._pool.acquire()
        try:
            won = await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK)
        except BaseException:
            await self._pool.release(conn)
            raise
        if not won:
            await self._pool.release(conn)
            return
        self._conn = conn
        self.is_leader = True
        log.info("this control plane is the leader: starting %s", ", ".join(loop.name for loop in self._loops))
        for loop in self._loops:
            loop.start()

    async def _step_down(self) -> None:
        self.is_leader = False
        for loop in self._loops:
            await loop.stop()
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing the session is what releases the lock, even if the unlock cannot be sent.
            try:
                await asyncio.wait_for(conn.execute("SELECT pg_advisory_unlock($1)", LEADER_LOCK), 2.0)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if not released(conn):
                    conn.terminate()
            if not released(conn):  # a session that died is back in the pool already
                await self._pool.release(conn)

    async def stop(self) -> None:
        await super().stop()
        await self._step_down()
