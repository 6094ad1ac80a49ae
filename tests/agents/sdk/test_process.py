"""Agents as real processes: SIGTERM drains, SIGKILL hands the task to another agent."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agents.sdk import AgentHello, BrokerSettings, TaskStarted, TaskSucceeded
from agents.sdk.messages import TERMINAL_EVENT_KINDS
from agents.sdk.trust import MessageSigner
from tests.agents.sdk import sample_agent
from tests.agents.sdk.broker import ControlPlane, registration_server
from tests.support.system import StartAgent

ROOT = Path(__file__).resolve().parents[3]
SpawnAgent = Callable[..., Awaitable[tuple[asyncio.subprocess.Process, AgentHello]]]


@pytest.fixture
async def spawn_agent(
    cp: ControlPlane, broker_settings: BrokerSettings, tmp_path: Path, signer: MessageSigner
) -> AsyncIterator[SpawnAgent]:
    """Start ``python -m <module> <args>`` as an agent process (it registers over HTTP) and wait
    for its hello."""
    processes: list[asyncio.subprocess.Process] = []
    registration = registration_server(signer)
    api_url = await registration.__aenter__()
    env = {
        **os.environ,
        **broker_settings.environment(),
        "DEVART_API_URL": api_url,
        "DEVART_AGENT_TOKEN": "dvt_test",
        "DEVART_AGENT_HEARTBEAT_INTERVAL_S": "0.2",
        "DEVART_AGENT_LOG_FLUSH_INTERVAL_S": "0.05",
        "DEVART_AGENT_DRAIN_TIMEOUT_S": "20",
    }

    async def spawn(module: str, *args: str) -> tuple[asyncio.subprocess.Process, AgentHello]:
        log = await asyncio.to_thread(open, tmp_path / f"{module}-{len(processes)}.log", "wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args, cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        processes.append(process)
        hello = await cp.received.wait_for(
            lambda e: isinstance(e, AgentHello) and e.pid == process.pid, within=30
        )
        return process, hello

    yield spawn
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()
    await registration.__aexit__(None, None, None)


async def test_sigterm_drains_the_running_task(cp: ControlPlane, spawn_agent: SpawnAgent) -> None:
    process, hello = await spawn_agent("tests.agents.sdk.sample_agent", "--slots", "1")
    task = await cp.submit(hello.pool_id, "sleep", {"seconds": 1.0})
    await cp.received.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == task.task_id)

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    done = await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)
    bye = await cp.received.wait_for(lambda e: e.kind == "bye" and e.agent_id == hello.agent_id)
    assert done.agent_id == hello.agent_id and done.result == {"slept": 1.0}
    agent_events = cp.received.matching(
        lambda e: e.agent_id == hello.agent_id and e.kind in ("hello", "heartbeat", "bye")
    )
    assert max(agent_events, key=lambda e: e.seq) is bye
    assert await cp.take_from_pool(hello.pool_id) is None, "a task message was left in the pool queue"


async def test_sigkill_hands_the_task_to_another_agent(
    cp: ControlPlane, spawn_agent: SpawnAgent, start_agent: StartAgent
) -> None:
    process, hello = await spawn_agent("tests.agents.sdk.sample_agent", "--slots", "1")
    task = await cp.submit(hello.pool_id, "sleep", {"seconds": 1.0})
    await cp.received.wait_for(lambda e: isinstance(e, TaskStarted) and e.agent_id == hello.agent_id)
    process.kill()
    await process.wait()

    survivor = await start_agent(sample_agent.build_agent(slots=1))
    assert survivor.agent.pool_id == hello.pool_id
    done = await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)
    assert done.agent_id == survivor.agent.agent_id
    assert await survivor.drain()
    terminal = cp.received.matching(lambda e: e.kind in TERMINAL_EVENT_KINDS and e.task_id == task.task_id)
    assert terminal == [done]
    assert sample_agent.RUNS[task.task_id] == 1
    assert await cp.take_from_pool(hello.pool_id) is None, "a task message was left in the pool queue"


async def test_noop_agent_cli(cp: ControlPlane, spawn_agent: SpawnAgent) -> None:
    process, hello = await spawn_agent("agents.noop", "--slots", "2", "--skills", "b,a")
    assert (hello.name, hello.skills, hello.types, hello.slots) == ("noop", ["a", "b"], ["noop"], 2)
    task = await cp.submit(hello.pool_id, "noop")
    done = await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)
    assert done.result == {}
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    await cp.received.wait_for(lambda e: e.kind == "bye" and e.agent_id == hello.agent_id)
