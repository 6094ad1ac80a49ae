"""Postgres: the embedded default (pgserver) and the connection pool with devart's codecs."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import asyncpg

from control_plane.telemetry import trace_query
from schema.runner import migrate

log = logging.getLogger("devart.db")


class EmbeddedPostgres:
    """Postgres 16 + pgvector from the ``pgserver`` wheel, data under ``home/postgres``."""

    def __init__(self, home: Path) -> None:
        self._data = home / "postgres"
        self._server: Any = None

    async def start(self) -> str:
        import pgserver

        self._data.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process, so a restart finds it running.
        self._server = await asyncio.to_thread(pgserver.get_server, self._data, cleanup_mode=None)
        uri = self._server.get_uri()
        await _ensure_database(uri, "devart")
        return self._server.get_uri("devart")


async def _ensure_database(uri: str, name: str) -> None:
    conn = await asyncpg.connect(uri)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    conn.add_query_logger(trace_query)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL).

    devart leaves no session state on pooled connections: no SET, no cursors, only
    transaction-scoped advisory locks, and LISTEN is undone by ``remove_listener``. An open
    transaction is still rolled back by the pool before this runs. Skipping the query saves a
    round trip on every request.
    """


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session
    )


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def migrate_database(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
    finally:
        await conn.close()
