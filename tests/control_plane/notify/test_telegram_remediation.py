"""A real remediation awaiting approval, approved from the chat, proceeds through the pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.sdk import Agent, BrokerSettings, TaskContext, task_handler
from aiops.remediation.settings import RemediationSettings
from control_plane.service import ControlPlane
from tests.support.system import StartAgent, client, fast_settings, make_token, serve_api, wait_for
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


async def test_approve_in_the_chat_moves_the_remediation_on(
    database_url: str, broker_settings: BrokerSettings, telegram: FakeTelegramServer, start_agent: StartAgent,
    tmp_path: Path
) -> None:
    fake = telegram.fake
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    remediation = RemediationSettings(policy=policy, interval_s=0.2, rollout_poll_s=0.2)
    async with ControlPlane(fast_settings(database_url, broker_settings), remediation=remediation,
                            notify=notify_settings(fake, telegram.url)) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        await make_token(database_url, "supervisor", name="ana")  # the Telegram approver's principal
        worker = await start_agent(Agent("chores", skills=["chores"], handlers=[_chore], slots=1))
        serving = asyncio.create_task(worker.run_until_stopped())  # as run_agent does: control commands apply
        await wait_for(lambda: _agent_state(sam, worker.agent.agent_id, "active"), what="the agent's hello")

        proposed = await sam.post("/api/v1/remediations", json={
            "action": "pause_agent", "target": worker.agent.agent_id, "reason": "pause it for maintenance"})
        assert proposed.status_code == 201, proposed.text
        remediation_id = proposed.json()["id"]

        async def awaiting() -> dict[str, Any] | None:
            body = (await sam.get(f"/api/v1/remediations/{remediation_id}")).json()
            return body if body["state"] == "awaiting_approval" else None

        pending = await wait_for(awaiting, what="the remediation to await approval")
        message = await wait_for(lambda: message_with(fake, GROUP, "Approval pending"), what="the approval message")
        assert worker.agent.agent_id in message["text"]

        fake.press(GROUP, message["message_id"], buttons(message)["Approve"], user_id=APPROVER, username="ana")

        async def finished() -> dict[str, Any] | None:
            body = (await sam.get(f"/api/v1/remediations/{remediation_id}")).json()
            return body if body["state"] not in ("awaiting_approval", "applying", "verifying") else None

        try:
            done = await wait_for(finished, timeout_s=60, what="the remediation to finish after the approval")
        except AssertionError:
            raise AssertionError((await sam.get(f"/api/v1/remediations/{remediation_id}")).text
                                 + repr(fake.answers)) from None
        assert done["state"] == "successful", done
        assert done["apply_result"]["agents"] == [worker.agent.agent_id] and done["applied_at"] is not None
        approval = (await sam.get(f"/api/v1/approvals/{pending['approval_id']}")).json()
        assert approval["state"] == "approved"
        assert [(d["who"], d["via"]) for d in approval["decisions"]] == [("ana", "telegram")]
        await wait_for(lambda: _agent_state(sam, worker.agent.agent_id, "paused"), what="the agent paused")
        await wait_for(lambda: message_with(fake, GROUP, "approved by @ana at"), what="the edited message")
        serving.cancel()


async def _agent_state(api: Any, agent_id: str, state: str) -> bool:
    response = await api.get(f"/api/v1/agents/{agent_id}")
    return response.status_code == 200 and response.json()["state"] == state
