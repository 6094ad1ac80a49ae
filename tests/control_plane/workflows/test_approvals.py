"""Approval steps: the run waits on an approval object; approved, refused, expired, cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import httpx
import pytest

from agents.sdk import AgentRuntime
from control_plane import approvals
from control_plane.auth import Principal
from control_plane.db import connect
from control_plane.errors import Conflict
from control_plane.service import ControlPlane
from tests.control_plane.workflows.conftest import apply, finished, job_state, jobs, start, states
from tests.support.system import client, make_token, wait_for


def sh(script: str, **step: object) -> dict[str, object]:
    return {"requires": ["shell"], "input": {"script": script}, **step}


def pipeline(name: str, **approval: object) -> dict[str, object]:
    return {
        "name": name,
        "inputs": {"env": {"type": "string", "default": "prod"}},
        "steps": {
            "build": sh("echo built"),
            "approve": {"needs": ["build"], "approval": {
                "roles": ["supervisor"], "subject": "deploy to ${{ inputs.env }}", "risk": "high", **approval}},
            "deploy": sh("echo deploying", needs=["approve"]),
        },
        "finally": {"notify": sh("echo 'approve=${{ steps.approve.status }}'", outputs={"said": "$.stdout_tail"})},
    }


@pytest.fixture
async def supervisor(base_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(base_url, await make_token(database_url, "supervisor", "lead")) as c:
        yield c


async def waiting_approval(api: httpx.AsyncClient, run_id: str) -> dict:
    job = await job_state(api, run_id, "approve", {"running"})
    assert job["approval_id"].startswith("apr_") and job["task_id"] is None
    return (await api.get(f"/api/v1/approvals/{job['approval_id']}")).json()


async def test_approved_step_lets_the_run_go_on(
    admin: httpx.AsyncClient, supervisor: httpx.AsyncClient, shell_agent: AgentRuntime
) -> None:
    await apply(admin, pipeline("gated", timeout="1h"))
    run = await start(admin, "gated", {"env": "staging"})
    approval = await waiting_approval(admin, run["id"])
    assert approval["subject"] == {"kind": "workflow_step", "id": f"{run['id']}/approve",
                                   "summary": "deploy to staging", "link": f"/api/v1/runs/{run['id']}"}
    assert approval["risk"] == "high" and approval["requested_by"] == "admin-token"
    assert jobs((await admin.get(f"/api/v1/runs/{run['id']}")).json())["deploy"]["state"] == "waiting"
    # whoever started the run may not approve it (prevent_self), and the admin role is not an approver here
    assert (await admin.post(f"/api/v1/approvals/{approval['id']}/approve", json={})).status_code == 403
    decided = await supervisor.post(f"/api/v1/approvals/{approval['id']}/approve", json={"comment": "go"})
    assert decided.status_code == 200, decided.text
    done = await finished(admin, run["id"])
    assert done["state"] == "succeeded"
    assert states(done) == {"build": "succeeded", "approve": "succeeded", "deploy": "succeeded",
                            "notify": "succeeded"}
    assert jobs(done)["approve"]["reason"] == "approved by lead"


async def test_refused_step_fails_and_skips_what_needs_it(
    admin: httpx.AsyncClient, supervisor: httpx.AsyncClient, shell_agent: AgentRuntime
) -> None:
    await apply(admin, pipeline("gated", timeout="1h"))
    run = await start(admin, "gated")
    approval = await waiting_approval(admin, run["id"])
    refused = await supervisor.post(f"/api/v1/approvals/{approval['id']}/refuse", json={"comment": "not on Friday"})
    assert refused.status_code == 200, refused.text
    done = await finished(admin, run["id"])
    assert done["state"] == "failed"
    by_job = jobs(done)
    assert by_job["approve"]["state"] == "failed" and by_job["approve"]["reason"] == "refused by lead: not on Friday"
    assert by_job["deploy"]["skip_reason"] == "needs_unmet: approve=failed"
    assert by_job["notify"]["outputs"]["said"] == "approve=failed\n"


async def test_expired_approval_fails_or_skips_per_definition(admin: httpx.AsyncClient,
                                                              shell_agent: AgentRuntime) -> None:
    await apply(admin, pipeline("expiring-fail", timeout="1s"))
    await apply(admin, pipeline("expiring-skip", timeout="1s", on_expire="skip"))
    failing = await start(admin, "expiring-fail")
    skipping = await start(admin, "expiring-skip")
    failed = await finished(admin, failing["id"])
    assert failed["state"] == "failed"
    assert jobs(failed)["approve"]["reason"] == "approval expired: nobody decided in time"
    assert jobs(failed)["deploy"]["skip_reason"] == "needs_unmet: approve=failed"
    skipped = await finished(admin, skipping["id"])
    assert skipped["state"] == "succeeded"  # the definition said an unanswered approval is a skip
    assert jobs(skipped)["approve"]["skip_reason"] == "approval_expired"
    assert jobs(skipped)["deploy"]["skip_reason"] == "needs_unmet: approve=skipped"
    expired = (await admin.get(f"/api/v1/approvals/{jobs(failed)['approve']['approval_id']}")).json()
    assert expired["state"] == "expired"


async def test_cancelling_the_run_withdraws_its_approval(
    admin: httpx.AsyncClient, supervisor: httpx.AsyncClient, shell_agent: AgentRuntime
) -> None:
    await apply(admin, pipeline("gated", timeout="1h"))
    run = await start(admin, "gated")
    approval = await waiting_approval(admin, run["id"])
    assert (await admin.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 200
    done = await finished(admin, run["id"])
    assert done["state"] == "cancelled" and states(done)["notify"] == "succeeded"
    withdrawn = (await admin.get(f"/api/v1/approvals/{approval['id']}")).json()
    assert withdrawn["state"] == "cancelled"
    late = await supervisor.post(f"/api/v1/approvals/{approval['id']}/approve", json={})
    assert late.status_code == 409


async def test_bad_approval_definitions(admin: httpx.AsyncClient) -> None:
    for approval, field in (({"roles": ["viewer"]}, "body.steps.a.approval.roles"),
                            ({"risk": "extreme"}, "body.steps.a.approval.risk"),
                            ({"timeout": "90d"}, "body.steps.a.approval.timeout"),
                            ({"min": 11}, "body.steps.a.approval.min")):
        response = await admin.post("/api/v1/workflows", json={"name": "x", "steps": {"a": {"approval": approval}}})
        assert response.status_code == 422 and response.json()["error"]["field"] == field, response.text
    response = await admin.post("/api/v1/workflows", json={
        "name": "x", "steps": {"a": {"approval": {}, "input": {"script": "x"}}}})
    assert response.json()["error"]["field"] == "body.steps.a.input"


async def test_a_decision_and_a_cancel_of_the_same_run_at_once_do_not_deadlock(
    admin: httpx.AsyncClient, cp: ControlPlane, database_url: str, shell_agent: AgentRuntime
) -> None:
    """The cancel takes the run's lock and is held (by a third session's lock on the table it writes
    next) before it reaches the approval; the decision starts then. Were the decision to lock the
    approval before the run, each would hold what the other waits for and Postgres would abort one
    with a deadlock; in the approvals' lock order (the subject first) the decision waits, then
    finds the approval withdrawn."""
    await apply(admin, pipeline("gated", timeout="1h"))
    run = await start(admin, "gated")
    approval = await waiting_approval(admin, run["id"])
    holder, canceller, decider, watcher = [await connect(database_url) for _ in range(4)]

    async def waiting_on_locks(count: int) -> bool:
        return await watcher.fetchval(
            """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()""") == count

    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute("LOCK TABLE run_transitions IN SHARE MODE")
        cancel = asyncio.create_task(cp.workflows.cancel_run(canceller, UUID(run["id"]), actor="admin-token",
                                                             reason="changed my mind"))
        await wait_for(lambda: waiting_on_locks(1), what="the cancel to hold the run and wait")
        lead = Principal(uuid4(), "lead", "supervisor")
        decide = asyncio.create_task(approvals.decide(decider, approval["id"], lead, "approve", "api"))
        await wait_for(lambda: waiting_on_locks(2), what="the decision to wait")
        await hold.rollback()
        cancelled = await asyncio.wait_for(cancel, timeout=30)
        assert cancelled["state"] == "cancelling"
        with pytest.raises(Conflict, match="already cancelled"):
            await asyncio.wait_for(decide, timeout=30)
    finally:
        for conn in (holder, canceller, decider, watcher):
            await conn.close()
    done = await finished(admin, run["id"])
    assert done["state"] == "cancelled" and states(done)["approve"] == "cancelled"
    assert (await admin.get(f"/api/v1/approvals/{approval['id']}")).json()["state"] == "cancelled"
