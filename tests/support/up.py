"""`devart up` as a real process, for tests that drive it from the outside like a user."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from control_plane import runstate
from control_plane.serving import free_port
from tests.support.system import wait_for


@dataclass
class Up:
    process: asyncio.subprocess.Process
    env: dict[str, str]
    """The environment of `devart up`, for the commands a test runs against it."""
    home: Path
    state: runstate.RunState


def up_environment(home: Path, database_url: str, amqp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVART_") and k != "DATABASE_URL"}
    return env | {"DEVART_HOME": str(home), "DATABASE_URL": database_url, "AMQP_URL": amqp_url,
                  "DEVART_PORT": str(free_port()), "DEVART_EMBEDDED_BROKER": "false",
                  "DEVART_BROKER_QUEUE_EXPIRES_S": "120", "DEVART_AGENT_HEARTBEAT_INTERVAL_S": "0.5"}


@asynccontextmanager
async def devart_up(home: Path, database_url: str, amqp_url: str, prefixes: set[str],
                    *args: str) -> AsyncIterator[Up]:
    """Start `devart up` and wait until its API is ready and its agents said hello; SIGKILL it at
    the end if the test has not stopped it. The derived broker prefix joins ``prefixes`` (cleanup)."""
    env = up_environment(home, database_url, amqp_url)
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "control_plane.cli", "up", *args, env=env,
                                                   stdin=asyncio.subprocess.DEVNULL)
    try:
        async def recorded() -> runstate.RunState | None:
            if process.returncode is not None:
                raise AssertionError(f"devart up exited with {process.returncode}")
            return runstate.read(home)

        state = await wait_for(recorded, timeout_s=60, interval_s=0.1, what="devart up to record its state")
        prefixes.add(state.broker_prefix)

        async def ready() -> bool:
            async with httpx.AsyncClient() as http:
                try:
                    return (await http.get(f"{state.api_url}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

        await wait_for(ready, timeout_s=30, interval_s=0.1, what="the API to be ready")
        yield Up(process, env, home, state)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
