"""`devart serve` as a child process the test SIGKILLs and starts again (same port, same database)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx

from agents.sdk import BrokerSettings
from control_plane.serving import free_port
from tests.support.system import wait_for


class ServeProcess:
    """The control plane alone (no agents, no embedded broker), with ``env`` on top of the test's."""

    def __init__(self, database_url: str, broker: BrokerSettings, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = dict(os.environ, **broker.environment(), DATABASE_URL=database_url, DEVART_PORT=str(self.port),
                         DEVART_EMBEDDED_BROKER="false", DEVART_LOG_LEVEL="WARNING", **env)
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "control_plane.cli", "serve"], env=self._env
        )

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"{self.url}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, timeout_s=60, what="the control plane to serve")

    async def kill(self) -> None:
        """SIGKILL: no shutdown hook, no flush, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.process.wait)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
