"""The shell agent end to end: a task through the real broker, and its command-line entry point."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agents.sandbox import SandboxSettings
from agents.sdk import (
    Agent,
    AgentRuntime,
    AgentRuntimeSettings,
    BrokerSettings,
    TaskFailed,
    TaskLog,
    TaskSucceeded,
)
from agents.sdk.topology import Topology
from agents.sdk.trust import AgentCredentials, MessageSigner
from agents.shell import build_shell_agent
from tests.agents.sdk.broker import TRACEPARENT, ControlPlane, control_plane


def test_build_shell_agent() -> None:
    agent = build_shell_agent(slots=3)
    assert (agent.name, agent.slots, agent.types, agent.skills) == (
        "shell",
        3,
        ("shell",),
        ("build", "shell", "test"),
    )
    custom = build_shell_agent(slots=1, skills=["python"], name="py-shell")
    assert (custom.name, custom.skills) == ("py-shell", ("python",))
    assert custom.pool_id != agent.pool_id


@pytest.fixture
async def plane(amqp_url: str, topology: Topology, signer: MessageSigner) -> AsyncIterator[ControlPlane]:
    async with control_plane(amqp_url, topology, signer) as cp:
        yield cp


async def test_shell_task_through_the_broker(
    plane: ControlPlane, broker_settings: BrokerSettings, sandbox_settings: SandboxSettings,
    agent_credentials: Callable[[Agent], Awaitable[AgentCredentials]],
) -> None:
    agent = build_shell_agent(slots=1, settings=sandbox_settings)
    runtime = AgentRuntime(
        agent,
        AgentRuntimeSettings(log_flush_interval_s=0.05, heartbeat_interval_s=0.5, broker=broker_settings),
        credentials=await agent_credentials(agent),
    )
    await runtime.start()
    try:
        ok = await plane.submit(agent.pool_id, "shell", {"script": 'echo built; echo "$TRACEPARENT"'})
        done = await plane.received.wait_for(
            lambda e: isinstance(e, TaskSucceeded) and e.task_id == ok.task_id
        )
        assert done.result["exit_code"] == 0
        lines = [
            line.text for e in plane.received.matching(lambda e: isinstance(e, TaskLog)) for line in e.lines
        ]
        assert lines[0] == "built"
        trace_id = TRACEPARENT.split("-")[1]
        assert lines[1].split("-")[1] == trace_id  # the command joins the task's trace
        bad = await plane.submit(agent.pool_id, "shell", {"command": ["sh", "-c", "exit 5"]})
        failed = await plane.received.wait_for(
            lambda e: isinstance(e, TaskFailed) and e.task_id == bad.task_id
        )
        assert (failed.reason, failed.retryable, failed.result["exit_code"]) == ("error", False, 5)
    finally:
        await runtime.drain()


async def test_module_entry_point_parses_its_arguments() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.shell", "--slots", "0", stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 2
    assert b"--slots must be at least 1" in stderr
