"""Postgres: where it is (``DATABASE_URL`` or the embedded pgserver, locked down), the roles the
control plane connects as, and the connection pools with devart's codecs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from control_plane.telemetry import trace_query
from schema.runner import migrate

log = logging.getLogger("devart.db")

APP_ROLE = "devart_app"
"""The control plane's login (migration 0010): owns nothing, no rights of its own; API connections stay it
between requests, and each request's transaction switches to ``authenticated`` (control_plane/identity.py)."""
SERVICE_ROLE = "devart_service"
"""What the background loops' connections run as: the rights listed per table in docs/rls.md."""
PASSWORDS_FILE = "postgres-passwords.json"
"""Under DEVART_HOME, mode 0600: the embedded Postgres's passwords for its owner and for devart_app."""

_HBA = """# Written by devart (control_plane/db.py): every connection proves a password (scram-sha-256).
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


@dataclass(frozen=True)
class Database:
    """Where devart's database is, and as whom to connect."""

    owner_url: str
    """The schema owner: migrations and local administration (``devart token ...``)."""
    app_password: str | None = None
    """devart_app's password; None = the pools connect with ``owner_url`` and switch roles from there."""

    @property
    def app_url(self) -> str:
        """What the pools connect with: devart_app when it has a password, else the owner."""
        if self.app_password is None:
            return self.owner_url
        parts = urlsplit(self.owner_url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{APP_ROLE}:{quote(self.app_password, safe='')}@{host}"))


class EmbeddedPostgres:
    """Postgres 16 + pgvector from the ``pgserver`` wheel, data under ``home/postgres``, locked down.

    pgserver creates its cluster with ``trust`` authentication. At every start this makes it refuse
    anyone without a password: scram-sha-256 for every connection (``pg_hba.conf``), the passwords in
    a 0600 file under ``home``, the socket and its directory usable by the server's OS user only
    (``unix_socket_permissions = 0700`` from the next start on; the socket file is changed now). The
    control plane then connects as devart_app; the owner's password serves migrations only.
    """

    def __init__(self, home: Path) -> None:
        self._home = home
        self._data = home / "postgres"
        self._server: Any = None

    async def start(self) -> Database:
        import pgserver

        self._data.mkdir(parents=True, exist_ok=True)
        passwords = await asyncio.to_thread(_passwords, self._home / PASSWORDS_FILE)
        # cleanup_mode=None: the server outlives this process, so a restart finds it running.
        self._server = await asyncio.to_thread(pgserver.get_server, self._data, cleanup_mode=None)
        uri = _with_password(self._server.get_uri(), passwords["postgres"])
        await self._lock_down(uri, passwords["postgres"])
        await _ensure_database(uri, "devart")
        return Database(_with_password(self._server.get_uri("devart"), passwords["postgres"]),
                        app_password=passwords[APP_ROLE])

    async def _lock_down(self, uri: str, owner_password: str) -> None:
        conn = await asyncpg.connect(uri)
        try:
            lax = await conn.fetchval(
                "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method IS DISTINCT FROM 'scram-sha-256'"
            )
            if lax:
                await conn.execute(await conn.fetchval("SELECT format('ALTER ROLE postgres PASSWORD %L', $1::text)",
                                                       owner_password))
                hba = Path(await conn.fetchval("SELECT current_setting('hba_file')"))
                await asyncio.to_thread(hba.write_text, _HBA)  # in place: the file keeps its owner and mode
                await conn.execute("SELECT pg_reload_conf()")
                log.info("embedded Postgres: password authentication on")
            if await conn.fetchval("SELECT current_setting('unix_socket_permissions')") != "0700":
                await conn.execute("ALTER SYSTEM SET unix_socket_permissions = '0700'")
            socket_dir = Path(await conn.fetchval("SELECT split_part(current_setting('unix_socket_directories'), ',', 1)"))
            port = await conn.fetchval("SELECT current_setting('port')")
        finally:
            await conn.close()
        await asyncio.to_thread(_owner_only, socket_dir, port)


def _owner_only(socket_dir: Path, port: str) -> None:
    """The socket and its directory (pgserver's own runtime one for long paths is world-writable)
    reachable by the server's OS user only (and root)."""
    sock = socket_dir / f".s.PGSQL.{port}"
    owner = sock.stat()
    sock.chmod(0o700)
    os.chown(socket_dir, owner.st_uid, owner.st_gid)
    socket_dir.chmod(0o700)


def _passwords(path: Path) -> dict[str, str]:
    """The embedded Postgres's passwords, made on first use; only this OS user can read them."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return json.loads(path.read_text())
    made = {"postgres": secrets.token_urlsafe(32), APP_ROLE: secrets.token_urlsafe(32)}
    with os.fdopen(fd, "w") as file:
        json.dump(made, file)
    return made


def _with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:{quote(password, safe='')}@{host}"))


async def set_app_password(owner_url: str, password: str) -> None:
    """Give devart_app (created by migration 0010, without a password) the configured one."""
    conn = await asyncpg.connect(owner_url)
    try:
        statement = await conn.fetchval("SELECT format('ALTER ROLE devart_app WITH LOGIN PASSWORD %L', $1::text)",
                                        password)
        await conn.execute(statement)
    finally:
        await conn.close()


async def refuse_privileged(pool: asyncpg.Pool) -> None:
    """For production: the pools' login must be neither a superuser nor exempt from row-level security."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = session_user")
    if row["rolsuper"] or row["rolbypassrls"]:
        what = "a superuser" if row["rolsuper"] else "a BYPASSRLS role"
        raise RuntimeError(
            f"refusing to run in production as {what} ({row['rolname']}): row-level security would not apply; "
            f"set DEVART_DB_APP_PASSWORD so the control plane connects as {APP_ROLE} (docs/rls.md)"
        )


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


def _as(role: str, *, codecs: bool) -> Any:
    async def init(conn: asyncpg.Connection) -> None:
        if codecs:
            await _init_connection(conn)
        # for the whole session: a request's SET LOCAL ROLE ends with its transaction, back to this
        await conn.execute(f'SET ROLE "{role}"')

    return init


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL).

    devart leaves no session state on pooled connections but the role set when the connection
    was opened: no other SET, no cursors, only transaction-scoped advisory locks, and LISTEN is undone by ``remove_listener``. An open
    transaction is still rolled back by the pool before this runs. Skipping the query saves a
    round trip on every request.
    """


class DatabaseUnreachable(ConnectionError):
    """A pool could not open a connection to Postgres: refused, no socket, timed out."""


async def _connect_or_unreachable(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    # A pool's connect fails with a plain OSError, which says nothing of where it came from; named
    # here, the API can answer it as the database being unavailable without taking every OSError for that.
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as exc:
        raise DatabaseUnreachable(f"cannot connect to the database: {exc}") from exc


_UNAVAILABLE = (DatabaseUnreachable, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
                asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
DATABASE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (*_UNAVAILABLE, asyncpg.InterfaceError)
"""The classes an error :func:`database_unavailable` recognises can have (an InterfaceError only
when a closed connection raised it: a rollback after the connection died)."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, says the database cannot be
    reached or a connection to it died: what a client may retry, as opposed to a bug."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _UNAVAILABLE) or (
                isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def create_pool(dsn: str, *, role: str, min_size: int = 2, max_size: int = 10, codecs: bool = True) -> asyncpg.Pool:
    """A pool whose connections run as ``role`` (APP_ROLE or SERVICE_ROLE); ``codecs=False`` leaves
    JSON as text (the span store encodes its own). A connection it cannot open raises
    :class:`DatabaseUnreachable`."""
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_as(role, codecs=codecs), reset=_keep_session,
        connect=_connect_or_unreachable,
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
