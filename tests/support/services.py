"""Real services for the test suite: an embedded Postgres (pgserver) and the local RabbitMQ."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import aio_pika
import asyncpg

TEST_QUEUE_PREFIX = "t-"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_rabbitmq(amqp_url: str, timeout_s: float = 90) -> None:
    """Start the machine's RabbitMQ if nothing answers at ``amqp_url`` (no skipping when it is down)."""
    parsed = urlparse(amqp_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 5672
    if port_open(host, port):
        return
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError(f"no broker at {host}:{port} and rabbitmq-server is not installed (make services)")
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"RabbitMQ did not come up on {host}:{port}")
        time.sleep(0.5)


class EmbeddedTestPostgres:
    """One pgserver for the session; a migrated template; one fresh database per test."""

    def __init__(self, root: Path) -> None:
        import pgserver

        self._server = pgserver.get_server(root, cleanup_mode="stop")  # postgres_root removes the directory
        self.base_uri = self._server.get_uri()
        self.template = "devart_template"

    def stop(self) -> None:
        self._server.cleanup()

    def uri(self, database: str) -> str:
        return self._server.get_uri(database)

    async def prepare_template(self) -> None:
        from schema.runner import migrate

        await run_sql(self.base_uri, f"DROP DATABASE IF EXISTS {self.template}", f"CREATE DATABASE {self.template}")
        conn = await asyncpg.connect(self.uri(self.template))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        await run_sql(self.base_uri, f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return name

    async def drop_database(self, name: str) -> None:
        await run_sql(self.base_uri, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def postgres_root(prefix: str) -> Iterator[Path]:
    """A scratch directory for an embedded cluster, removed afterwards. Not under pytest's tmp dir:
    as root, pgserver runs Postgres as its own user, which must be able to reach the data directory
    to stop the server cleanly. Its clusters are made with ``cleanup_mode="stop"``: pgserver's own
    delete is a plain rmtree right after the stop, which raises FileNotFoundError when a stop that
    timed out under load only killed the postmaster and its children still remove their files."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def run_sql(uri: str, *statements: str) -> None:
    """``statements``, one after the other, on a connection of their own to ``uri``."""
    conn = await asyncpg.connect(uri)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def queue_exists(amqp_url: str, name: str) -> bool:
    """Whether the broker at ``amqp_url`` has a queue called ``name`` (a passive declare)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True


async def delete_test_queues(amqp_url: str, prefixes: set[str]) -> None:
    """Remove the queues and exchanges this session's tests declared (names start with one of
    ``prefixes``), leaving other test runs on the same broker alone."""
    if not prefixes:
        return
    names = tuple(prefixes)
    listed = await asyncio.to_thread(
        subprocess.run, ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, check=False
    )
    exchanges = await asyncio.to_thread(
        subprocess.run, ["rabbitmqctl", "-q", "list_exchanges", "name"], capture_output=True, text=True, check=False
    )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for kind, listing in (("queue", listed.stdout), ("exchange", exchanges.stdout)):
            for name in listing.split():
                if not name.startswith(names):
                    continue
                channel = await connection.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                except aio_pika.exceptions.AMQPError:
                    pass  # exclusive queue of a live connection, or already gone: the broker cleans it up
                finally:
                    if not channel.is_closed:
                        await channel.close()
