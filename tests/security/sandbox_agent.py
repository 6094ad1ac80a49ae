"""The shell agent as ``devart up`` runs it, for the sandbox attack tests.

``python -m agents.shell`` is spawned as its own process with the environment ``devart up`` gives
it (broker URL, ``DEVART_HOME``, an OTLP token) plus an agent-side secret, on the test's broker
prefix, with production sandbox settings except the few a test names. Tasks go through the real
control plane and broker; ``run_task`` submits one and waits for its end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from agents.sdk import BrokerSettings
from tests.support.attacks import MEMORY_HOG
from tests.support.system import wait_for

FINAL = {"succeeded", "failed", "dead", "cancelled", "timed_out"}


@dataclass
class AgentProcess:
    """A running ``python -m agents.shell`` and the secrets only it (and its host) should know."""

    process: subprocess.Popen[bytes]
    home: Path
    otlp_token: str
    agent_secret: str
    amqp_url: str

    @property
    def sandboxes(self) -> Path:
        return self.home / "sandboxes"


@dataclass
class Finished:
    task: dict[str, Any]
    lines: list[str]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


StartShellAgent = Callable[..., Awaitable[AgentProcess]]


class Launcher(Protocol):
    """Starts the agent another way: its command line, extra environment, and what the child does
    (still as the test's user) just before it executes."""

    env: dict[str, str]

    def argv(self, argv: list[str]) -> list[str]: ...

    def before_exec(self) -> None: ...


@asynccontextmanager
async def shell_agent_process(
    broker: BrokerSettings, admin: httpx.AsyncClient, home: Path, *, launcher: Launcher | None = None, **sandbox: str
) -> AsyncIterator[AgentProcess]:
    """Spawn the shell agent; ``sandbox`` sets ``DEVART_SANDBOX_<NAME>`` variables on top of the
    defaults; ``launcher`` changes how it is started (e.g. as another user)."""
    home.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(
        process=None,  # type: ignore[arg-type]
        home=home,
        otlp_token=f"otlp-{secrets.token_hex(12)}",
        agent_secret=f"agent-secret-{secrets.token_hex(12)}",
        amqp_url=broker.amqp_url,
    )
    registration = await admin.post("/api/v1/tokens", json={"name": f"agent-{secrets.token_hex(4)}", "role": "agent"})
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("DEVART_")},
        **broker.environment(),
        # the agent registers with the control plane to sign its events (agents.sdk.trust)
        "DEVART_AGENT_API_URL": str(admin.base_url).rstrip("/"),
        "DEVART_AGENT_TOKEN": registration.json()["token"],
        "DEVART_HOME": str(home),
        "DEVART_OTLP_TOKEN": agent.otlp_token,
        "DEVART_SECRET_VAULT_TOKEN": agent.agent_secret,
        "DEVART_AGENT_HEARTBEAT_INTERVAL_S": "0.2",
        **{f"DEVART_SANDBOX_{name.upper()}": value for name, value in sandbox.items()},
    }
    before = {a["id"] for a in (await admin.get("/api/v1/agents")).json()}
    argv = [sys.executable, "-m", "agents.shell", "--slots", "2"]
    if launcher is not None:
        argv, env = launcher.argv(argv), {**env, **launcher.env}
    agent.process = await asyncio.to_thread(
        subprocess.Popen, argv, env=env, preexec_fn=launcher.before_exec if launcher else None
    )
    try:
        async def registered() -> bool:
            if agent.process.poll() is not None:
                raise AssertionError(f"the shell agent exited with {agent.process.returncode}")
            return any(a["id"] not in before for a in (await admin.get("/api/v1/agents")).json())

        await wait_for(registered, timeout_s=30, what="the shell agent to register")
        yield agent
    finally:
        if agent.process.poll() is None:
            agent.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(agent.process.wait, 30)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                await asyncio.to_thread(agent.process.wait)


@pytest.fixture
async def start_shell_agent(
    broker_settings: BrokerSettings, admin: httpx.AsyncClient, tmp_path: Path
) -> AsyncIterator[StartShellAgent]:
    """``await start_shell_agent(**sandbox_settings)``: one agent process, stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(**sandbox: str) -> AgentProcess:
            return await stack.enter_async_context(
                shell_agent_process(broker_settings, admin, tmp_path / "devart-home", **sandbox)
            )

        yield start


async def submit(admin: httpx.AsyncClient, shell_input: dict[str, Any], *, timeout_s: float = 60) -> str:
    created = await admin.post(
        "/api/v1/tasks",
        json={"type": "shell", "requires": ["shell"], "timeout_s": timeout_s, "input": shell_input},
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def finished(admin: httpx.AsyncClient, task_id: str, *, timeout_s: float = 90) -> Finished:
    async def done() -> dict[str, Any] | None:
        task = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
        return task if task["status"] in FINAL else None

    task = await wait_for(done, timeout_s=timeout_s, what=f"task {task_id} to finish")
    lines = (await admin.get(f"/api/v1/tasks/{task_id}/logs")).json()["lines"]
    return Finished(task, [line["line"] for line in lines])


async def run_task(admin: httpx.AsyncClient, shell_input: dict[str, Any], *, timeout_s: float = 60) -> Finished:
    return await finished(admin, await submit(admin, shell_input, timeout_s=timeout_s), timeout_s=timeout_s + 30)


async def run_memory_hog(admin: httpx.AsyncClient) -> Finished:
    """Six 60 MiB processes at once in a task limited to 128 MiB: they do not fit together."""
    script = (
        'pids=""\n'
        'for i in 1 2 3 4 5 6; do python3 -c "$HOG" & pids="$pids $!"; done\n'
        "for p in $pids; do wait $p; done\n"
        "echo all-held\n"
    )
    return await run_task(admin, {"script": script, "env": {"HOG": MEMORY_HOG},
                                  "sandbox": {"resources": {"cpu": "1", "memory": "128Mi"}}})


async def wait_for_line(admin: httpx.AsyncClient, task_id: str, line: str, *, timeout_s: float = 30) -> None:
    async def seen() -> bool:
        lines = (await admin.get(f"/api/v1/tasks/{task_id}/logs")).json()["lines"]
        return any(entry["line"] == line for entry in lines)

    await wait_for(seen, timeout_s=timeout_s, what=f"line {line!r} in the log of task {task_id}")
