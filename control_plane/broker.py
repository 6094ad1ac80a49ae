"""RabbitMQ: find the configured broker, or start a private one when none answers.

A private node never has RabbitMQ's ``guest`` user: on its first boot it creates the user
``devart`` with a random password (``default_user``/``default_pass`` in its config), kept in
``rabbitmq/credentials`` under the home, readable by its owner only, and reused on every restart. A
node made by an older devart (with ``guest``) gets the user and loses ``guest`` at its next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from control_plane.serving import free_port

log = logging.getLogger("devart.broker")


class BrokerUnavailable(RuntimeError):
    pass


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _hand_to_broker_user(path: Path) -> None:
    """Debian's rabbitmq-server drops root privileges to the ``rabbitmq`` user: let it write here."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam("rabbitmq")
    except KeyError:
        return
    for directory, _dirs, files in os.walk(path):
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(directory, name), entry.pw_uid, entry.pw_gid)


BROKER_USER = "devart"
"""A private node's one user (never ``guest``)."""


@dataclass
class PrivateRabbitMQ:
    """A rabbitmq-server node of our own: own node name, data under ``home``, free ports."""

    home: Path
    node_port: int = 0
    dist_port: int = 0
    management_port: int = 0
    node_name: str = ""
    _env: dict[str, str] = field(default_factory=dict)
    _legacy: bool = False

    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return f"amqp://{BROKER_USER}:{self.password}@127.0.0.1:{self.node_port}/"

    @property
    def management_url(self) -> str:
        """Its management API, where the reaper counts queue messages (control_plane/queue_counts.py)."""
        return f"http://{BROKER_USER}:{self.password}@127.0.0.1:{self.management_port}/"

    def _credentials(self, base: Path) -> bool:
        """Read or make the node's password; True when an existing node was made without one."""
        path = base / "credentials"
        if path.exists():
            self.password = path.read_text().strip()
            return False
        self.password = secrets.token_urlsafe(24)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(self.password + "\n")
        mnesia = base / "mnesia"
        return mnesia.exists() and any(mnesia.iterdir())

    def _environment(self) -> dict[str, str]:
        base = self.home / "rabbitmq"
        (base / "log").mkdir(parents=True, exist_ok=True)
        self._legacy = self._credentials(base)
        plugins = base / "enabled_plugins"
        plugins.write_text("[rabbitmq_management].\n")
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.node_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
        )
        config = base / "rabbitmq.conf"
        config.write_text(
            f"default_user = {BROKER_USER}\ndefault_pass = {self.password}\n"
            "default_permissions.configure = .*\ndefault_permissions.read = .*\ndefault_permissions.write = .*\n"
            f"default_user_tags.management = true\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
        )
        config.chmod(0o600)
        (base / "mnesia").mkdir(exist_ok=True)
        env["RABBITMQ_FEATURE_FLAGS_FILE"] = str(base / "feature_flags")
        env["ERL_CRASH_DUMP"] = str(base / "log" / "erl_crash.dump")
        _hand_to_broker_user(base)
        return env

    async def start(self, timeout_s: float = 90.0) -> str:
        if shutil.which("rabbitmq-server") is None:
            raise BrokerUnavailable("rabbitmq-server is not installed")
        self.node_port = self.node_port or free_port()
        self.dist_port = self.dist_port or free_port()
        self.management_port = self.management_port or free_port()
        self.node_name = self.node_name or f"devart-{self.node_port}@localhost"
        self._env = self._environment()
        await asyncio.to_thread(
            subprocess.run, ["rabbitmq-server", "-detached"], env=self._env, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "-n", self.node_name, "--timeout", str(int(timeout_s)), "wait", self._env["RABBITMQ_PID_FILE"]],
            env=self._env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if self._legacy:
            await self._replace_guest()
        log.info("started private RabbitMQ %s on port %d", self.node_name, self.node_port)
        return self.url

    async def _replace_guest(self) -> None:
        """An older node has ``guest`` (``default_user`` applies to a first boot only): add ours or set
        its password (whichever applies; the other fails harmlessly), then delete ``guest``."""
        for command in (["add_user", BROKER_USER, self.password], ["change_password", BROKER_USER, self.password],
                        ["set_permissions", BROKER_USER, ".*", ".*", ".*"], ["delete_user", "guest"]):
            await asyncio.to_thread(
                subprocess.run, ["rabbitmqctl", "-n", self.node_name, *command], env=self._env, check=False,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        self._legacy = False

    async def stop(self) -> None:
        if not self.node_name:
            return
        await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "-n", self.node_name, "stop"], env=self._env, check=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        log.info("stopped private RabbitMQ %s", self.node_name)


async def resolve_broker(amqp_url: str, home: Path, *, allow_private: bool) -> tuple[str, PrivateRabbitMQ | None]:
    """The URL to use, and the private node started for it (to stop on exit), if any."""
    parsed = urlparse(amqp_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 5672
    if await asyncio.to_thread(_port_open, host, port):
        return amqp_url, None
    if allow_private and shutil.which("rabbitmq-server"):
        private = PrivateRabbitMQ(home)
        return await private.start(), private
    raise BrokerUnavailable(
        f"no RabbitMQ answers at {redact(amqp_url)}. Start one (e.g. `rabbitmq-server -detached`, "
        "`apt-get install rabbitmq-server`, or `docker compose -f infra/compose.yml up rabbitmq`) "
        "or point AMQP_URL at yours."
    )
