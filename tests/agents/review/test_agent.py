"""The review agent end to end: a ``code-review`` task through the real broker, and its entry point."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.review import ReviewSettings, build_review_agent
from agents.sandbox import SandboxSettings
from agents.sdk import TaskSucceeded
from agents.sdk.topology import Topology
from agents.sdk.trust import MessageSigner
from tests.agents.review.conftest import BUG_LINE, OpenAI
from tests.agents.sdk.broker import ControlPlane, control_plane
from tests.support.system import StartAgent


def test_build_review_agent() -> None:
    agent = build_review_agent()
    assert (agent.name, agent.types, agent.skills) == ("review", ("code-review",), ("code-review",))


@pytest.fixture
async def plane(amqp_url: str, topology: Topology, signer: MessageSigner) -> AsyncIterator[ControlPlane]:
    async with control_plane(amqp_url, topology, signer) as cp:
        yield cp


async def test_review_task_through_the_broker(
    plane: ControlPlane, start_agent: StartAgent, sandbox: SandboxSettings, repo: Path, openai: OpenAI
) -> None:
    openai.fake.reply("approve", [{"path": "bug.py", "line": BUG_LINE, "message": "unreachable"}])
    settings = ReviewSettings(openai_api_key=openai.fake.key, openai_base_url=openai.base_url)
    agent = (await start_agent(build_review_agent(settings=settings, sandbox=sandbox))).agent
    task = await plane.submit(agent.pool_id, "code-review", {"repo": str(repo), "ref": "feature"})
    done = await plane.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)
    assert done.result["conclusion"] == "failure"
    rules = {(f["path"], f["rule"], f["level"]) for f in done.result["findings"]}
    assert {("bug.py", "F821", "failure"), ("settings.py", "DS001", "failure"), ("bug.py", "model", "notice")} <= rules


async def test_module_entry_point_parses_its_arguments() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.review", "--slots", "0", stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2 and b"--slots must be at least 1" in stderr
