"""Attack: log in to devart's broker as RabbitMQ's default ``guest:guest``. The private node
``devart up`` starts when no broker answers used to be reachable that way (``loopback_users =
none`` even let ``guest`` in from anywhere), and production accepted those credentials. Now a
private node has only its own user with a random password, and production refuses ``guest:guest``."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.connection import make_url
from aiormq.exceptions import ProbableAuthenticationError
from pydantic import ValidationError

from agents.sdk import BrokerSettings
from control_plane.broker import PrivateRabbitMQ
from control_plane.settings import Settings


@pytest.fixture
def home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="devart-test-rmq-"))
    home.chmod(0o755)  # the broker drops root for its own user, which must reach its data
    yield home
    shutil.rmtree(home, ignore_errors=True)


async def _logs_in(url: str) -> bool:
    # Not aio_pika.connect(): it drops the Connection of a refused login unclosed, and that object's
    # __del__ makes a close() coroutine that is never awaited when the garbage collector runs off the
    # event loop (in a worker thread), failing whichever later test that happens in.
    connection = aio_pika.Connection(make_url(url))
    try:
        await connection.connect(timeout=20)
    except ProbableAuthenticationError:
        return False
    finally:
        await connection.close()
    return True


def _guest(broker: PrivateRabbitMQ) -> str:
    return f"amqp://guest:guest@127.0.0.1:{broker.node_port}/"


@pytest.mark.slow
async def test_a_private_broker_has_its_own_user_and_no_guest_across_restarts(home: Path) -> None:
    broker = PrivateRabbitMQ(home)
    url = await broker.start()
    try:
        assert "guest" not in url
        assert await _logs_in(url)
        assert not await _logs_in(_guest(broker))
        credentials = home / "rabbitmq" / "credentials"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert stat.S_IMODE((home / "rabbitmq" / "rabbitmq.conf").stat().st_mode) == 0o600
    finally:
        await broker.stop()
    again = PrivateRabbitMQ(home, node_port=broker.node_port, node_name=broker.node_name)
    assert await again.start() == url  # the same node, the same password
    try:
        assert await _logs_in(url)
        assert not await _logs_in(_guest(again))
    finally:
        await again.stop()


@pytest.mark.slow
async def test_a_node_made_with_guest_loses_it_at_its_next_start(home: Path) -> None:
    broker = PrivateRabbitMQ(home)
    await broker.start()
    try:  # what an older devart left: guest, with every permission, and no credentials file
        for command in (["add_user", "guest", "guest"], ["set_permissions", "guest", ".*", ".*", ".*"]):
            await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-n", broker.node_name, *command],
                                    env=broker._env, check=True, stdout=subprocess.DEVNULL)
        assert await _logs_in(_guest(broker))
    finally:
        await broker.stop()
    old_password = broker.password
    (home / "rabbitmq" / "credentials").unlink()
    again = PrivateRabbitMQ(home, node_port=broker.node_port, node_name=broker.node_name)
    url = await again.start()
    try:
        assert again.password != old_password
        assert await _logs_in(url)
        assert not await _logs_in(_guest(again))
    finally:
        await again.stop()


@pytest.mark.parametrize("amqp_url", ["amqp://guest:guest@rabbitmq.internal:5672/", "amqp://rabbitmq.internal/",
                                      "amqp://gu%65st:guest@rabbitmq.internal/"])
def test_production_refuses_guest_credentials(amqp_url: str) -> None:
    with pytest.raises(ValidationError, match="guest:guest credentials, refused in production"):
        Settings(environment="production", database_url="postgresql://devart@db/devart",
                 broker=BrokerSettings(amqp_url=amqp_url))
    Settings(environment="development", broker=BrokerSettings(amqp_url=amqp_url))  # a laptop may
    Settings(environment="production", database_url="postgresql://devart@db/devart",
             broker=BrokerSettings(amqp_url="amqp://devart:s3cret@rabbitmq.internal/"))


def test_devart_serve_in_production_with_guest_exits_saying_why(tmp_path: Path) -> None:
    env = dict(os.environ, DEVART_ENVIRONMENT="production", DATABASE_URL="postgresql://devart@127.0.0.1:1/devart",
               AMQP_URL="amqp://guest:guest@127.0.0.1:5672/", DEVART_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-m", "control_plane.cli", "serve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "guest:guest credentials, refused in production" in done.stderr, done.stderr[-2000:]
