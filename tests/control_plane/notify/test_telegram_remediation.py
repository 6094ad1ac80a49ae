"""A real remediation awaiting approval, approved from the chat, proceeds through the pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents.sdk import Agent, TaskContext, task_handler
from aiops.remediation.settings import RemediationSettings
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.support.system import StartAgent, client, make_token, serve_api, wait_for
from tests.telegram_fake.fixtures import APPROVER, GROUP, buttons, message_with, notify_settings
from tests.telegram_fake.server import FakeTelegramServer


class _Chore(BaseModel):
    pass


@task_handler("chore", input=_Chore)
async def _chore(ctx: TaskContext, data: _Chore) -> dict[str, Any]:
    return {}


# suggest, as by default (a proposal by hand then needs approval), with quick verification checks
POLICY = """
rules:
  - action: pause_agent
    mode: suggest
    verify: {interval: 0.2s, count: 2, failure_limit: 0}
"""


@pytest.fixture
async def cp(settings: Settings, telegram: FakeTelegramServer, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """The test's one control plane (``start_agent`` registers with it, so no second plane with the
    default policy runs the remediation loop): POLICY, and notifications to the fake Bot API."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    remediation = RemediationSettings(policy=policy, interval_s=0.2, rollout_poll_s=0.2)
    async with ControlPlane(settings, remediation=remediation,
                            notify=notify_settings(telegram.fake, telegram.url)) as plane:
        yield plane


@asynccontextmanager
async def _remediating(cp: ControlPlane, database_url: str,
                       start_agent: StartAgent) -> AsyncIterator[tuple[str, Any, Agent]]:
    """A served agent and a supervisor's pause_agent proposal of it awaiting approval: yields
    (remediation id, the supervisor's client, the agent)."""
    async with serve_api(cp) as url, client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        await make_token(database_url, "supervisor", name="ana")  # the Telegram approver's principal
        worker = await start_agent(Agent("chores", skills=["chores"], handlers=[_chore], slots=1))
        serving = asyncio.create_task(worker.run_until_stopped())  # as run_agent does: control commands apply
        try:
            await wait_for(lambda: _agent_state(sam, worker.agent.agent_id, "active"), what="the agent's hello")
            proposed = await sam.post("/api/v1/remediations", json={
                "action": "pause_agent", "target": worker.agent.agent_id, "reason": "pause it for maintenance"})
            assert proposed.status_code == 201, proposed.text
            remediation_id = proposed.json()["id"]
            await wait_for(lambda: _in_state(sam, remediation_id, {"awaiting_approval"}),
                           what="the remediation to await approval")
            yield remediation_id, sam, worker.agent
        finally:
            serving.cancel()


async def test_approve_in_the_chat_moves_the_remediation_on(
    cp: ControlPlane, database_url: str, telegram: FakeTelegramServer, start_agent: StartAgent
) -> None:
    fake = telegram.fake
    async with _remediating(cp, database_url, start_agent) as (
            remediation_id, sam, agent):
        pending = (await sam.get(f"/api/v1/remediations/{remediation_id}")).json()
        message = await wait_for(lambda: message_with(fake, GROUP, "Approval pending"), what="the approval message")
        assert agent.agent_id in message["text"] and "PAUSED" not in message["text"]

        fake.press(GROUP, message["message_id"], buttons(message)["Approve"], user_id=APPROVER, username="ana")

        try:
            done = await wait_for(lambda: _in_state(sam, remediation_id, _FINAL), timeout_s=60,
                                  what="the remediation to finish after the approval")
        except AssertionError:
            raise AssertionError((await sam.get(f"/api/v1/remediations/{remediation_id}")).text
                                 + repr(fake.answers)) from None
        assert done["state"] == "successful", done
        assert done["apply_result"]["agents"] == [agent.agent_id] and done["applied_at"] is not None
        approval = (await sam.get(f"/api/v1/approvals/{pending['approval_id']}")).json()
        assert approval["state"] == "approved"
        assert [(d["who"], d["via"]) for d in approval["decisions"]] == [("ana", "telegram")]
        await wait_for(lambda: _agent_state(sam, agent.agent_id, "paused"), what="the agent paused")
        await wait_for(lambda: message_with(fake, GROUP, "approved by @ana at"), what="the edited message")


async def test_the_kill_switch_is_shown_on_the_messages_it_holds(
    cp: ControlPlane, database_url: str, telegram: FakeTelegramServer, start_agent: StartAgent
) -> None:
    """Pausing edits the approval's message to say nothing will be applied; an approval from the chat then
    applies nothing; resuming edits the line away and the remediation goes on."""
    fake = telegram.fake
    async with _remediating(cp, database_url, start_agent) as (
            remediation_id, sam, agent), \
            client(str(sam.base_url), await make_token(database_url, "admin", "root")) as root:
        message = await wait_for(lambda: message_with(fake, GROUP, "Approval pending"), what="the approval message")
        paused = await root.post("/api/v1/remediation/pause", json={"reason": "change freeze"})
        assert paused.status_code == 200, paused.text
        line = "Remediation is PAUSED by root (change freeze): nothing will be applied"
        held = await wait_for(lambda: message_with(fake, GROUP, line), what="the message to show the kill switch")
        assert held["message_id"] == message["message_id"]  # edited in place, not a second message
        assert "Approve" in buttons(held)  # deciding stays possible; applying is what is held

        fake.press(GROUP, held["message_id"], buttons(held)["Approve"], user_id=APPROVER, username="ana")
        await wait_for(lambda: message_with(fake, GROUP, "approved by @ana at"), what="the decision on the message")
        applying = await wait_for(lambda: _held(sam, remediation_id), what="the remediation held by the kill switch")
        assert applying["applied_at"] is None
        approved = await message_with(fake, GROUP, "approved by @ana at")
        assert approved is not None and line in approved["text"]  # still held: still said
        assert (await sam.get(f"/api/v1/agents/{agent.agent_id}")).json()["state"] == "active"

        resumed = await root.post("/api/v1/remediation/resume", json={"reason": "freeze over"})
        assert resumed.status_code == 200, resumed.text
        done = await wait_for(lambda: _in_state(sam, remediation_id, _FINAL), timeout_s=60,
                              what="the remediation to finish after the resume")
        assert done["state"] == "successful", done
        await wait_for(lambda: _agent_state(sam, agent.agent_id, "paused"), what="the agent paused")
        await wait_for(lambda: _without(fake, held["message_id"], "PAUSED"), what="the kill switch line gone")


_FINAL = {"successful", "failed", "inconclusive", "refused", "expired", "error"}


async def _in_state(api: Any, remediation_id: str, states: set[str]) -> dict[str, Any] | None:
    body = (await api.get(f"/api/v1/remediations/{remediation_id}")).json()
    return body if body["state"] in states else None


async def _held(api: Any, remediation_id: str) -> dict[str, Any] | None:
    body = await _in_state(api, remediation_id, {"applying"})
    return body if body is not None and "kill switch" in (body.get("state_reason") or "") else None


async def _without(fake: Any, message_id: int, needle: str) -> bool:
    return needle not in fake.messages[GROUP][message_id]["text"]


async def _agent_state(api: Any, agent_id: str, state: str) -> bool:
    response = await api.get(f"/api/v1/agents/{agent_id}")
    return response.status_code == 200 and response.json()["state"] == state
