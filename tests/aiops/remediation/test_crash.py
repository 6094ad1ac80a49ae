"""The control plane SIGKILLed between pipeline steps: it resumes, or fails safe, and never applies twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from agents.sdk import BrokerSettings
from control_plane.db import connect
from tests.aiops.remediation.conftest import BASE_POLICY
from tests.k8s_fake import FakeKubernetes
from tests.support.serve import ServeProcess
from tests.support.system import client, make_token, wait_for

pytestmark = pytest.mark.slow
TERMINAL = ("successful", "failed", "inconclusive", "refused", "expired", "error")


async def _state(api: httpx.AsyncClient, remediation_id: str, *states: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        try:
            body = (await api.get(f"/api/v1/remediations/{remediation_id}")).json()
        except httpx.HTTPError:
            return None
        return body if body.get("state") in states else None

    return await wait_for(reached, timeout_s=60, interval_s=0.1, what=f"state {states}")


@pytest.fixture
async def serving(database_url: str, broker_settings: BrokerSettings, tmp_path: Path) -> Any:
    """A fake cluster with a Deployment ``api`` and the control plane serving; yields
    ``(fake, plane, proposer, approver)``."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(BASE_POLICY.replace("rollout_timeout: 1s", "rollout_timeout: 10m"))
    with FakeKubernetes() as fake:
        fake.workloads.deployment("api")
        plane = ServeProcess(database_url, broker_settings, DEVART_REMEDIATION_POLICY=str(policy),
                             DEVART_REMEDIATION_KUBECONFIG=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                             DEVART_REMEDIATION_INTERVAL_S="0.1", DEVART_REMEDIATION_ROLLOUT_POLL_S="0.1")
        try:
            await plane.start()
            async with client(plane.url, await make_token(database_url, "supervisor", "sam")) as sam, \
                    client(plane.url, await make_token(database_url, "admin", "ada")) as ada:
                yield fake, plane, sam, ada
        finally:
            plane.stop()


async def _propose(api: httpx.AsyncClient, action: str = "restart", target: str = "api",
                   namespace: str = "default") -> str:
    body = {"action": action, "target": target, "namespace": namespace, "reason": "crash test"}
    proposed = await api.post("/api/v1/remediations", json=body)
    assert proposed.status_code == 201, proposed.text
    return str(proposed.json()["id"])


@pytest.fixture
async def running(serving: Any) -> Any:
    """``serving``, and a restart proposed and awaiting approval; yields ``(fake, plane, proposer,
    approver, remediation)``."""
    fake, plane, sam, ada = serving
    yield fake, plane, sam, ada, await _state(sam, await _propose(sam), "awaiting_approval")


async def test_killed_during_the_preflight_does_it_again_then_applies_once(
    serving: Any, database_url: str
) -> None:
    """Killed with the preflight's read of the Deployment in flight: the step's transaction never
    committed, so the restarted plane finds the remediation ``proposed`` and runs the preflight again;
    nothing was written, not even a dry-run, before the approval, and one real write after it."""
    fake, plane, sam, ada = serving
    fake.workloads.hold_read = threading.Event()
    remediation_id = await _propose(sam)

    async def preflight_read_arrived() -> bool:
        return ("deployments", "api") in fake.workloads.held_reads

    await wait_for(preflight_read_arrived, timeout_s=30, what="the held preflight read")
    await plane.kill()
    fake.workloads.hold_read.set()
    fake.workloads.hold_read = None
    conn = await connect(database_url)
    try:
        row = await conn.fetchrow("SELECT state, preflight FROM remediations WHERE id = $1", UUID(remediation_id))
    finally:
        await conn.close()
    assert (row["state"], row["preflight"]) == ("proposed", None)  # the killed step left nothing half-written
    assert fake.workloads.writes == []
    await plane.start()
    waiting = await _state(sam, remediation_id, "awaiting_approval")
    steps = [s["state"] for s in waiting["steps"]]
    assert steps == ["proposed", "preflight", "dry_run", "awaiting_approval"], steps
    assert fake.workloads.real_writes() == []
    assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200
    assert (await _state(sam, remediation_id, *TERMINAL))["state"] == "successful"
    assert [w.name for w in fake.workloads.real_writes()] == ["api"]


async def test_killed_during_the_dry_run_does_it_again_then_applies_once(serving: Any) -> None:
    """Killed after the preflight committed, with the server-side dry-run in flight: the restarted plane
    runs the dry-run again (it changes nothing), then awaits the approval as before."""
    fake, plane, sam, ada = serving
    fake.workloads.hold_dry_run = threading.Event()
    remediation_id = await _propose(sam)

    async def dry_run_arrived() -> bool:
        return any(w.dry_run for w in fake.workloads.writes)

    await wait_for(dry_run_arrived, timeout_s=30, what="the held dry-run")
    await plane.kill()
    fake.workloads.hold_dry_run.set()
    fake.workloads.hold_dry_run = None
    await plane.start()
    waiting = await _state(sam, remediation_id, "awaiting_approval")
    steps = [s["state"] for s in waiting["steps"]]
    assert steps == ["proposed", "preflight", "dry_run", "awaiting_approval"], steps  # the killed step left nothing
    assert fake.workloads.real_writes() == []
    assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200
    assert (await _state(sam, remediation_id, *TERMINAL))["state"] == "successful"
    assert [w.name for w in fake.workloads.real_writes()] == ["api"]


async def test_killed_between_the_apply_gate_and_a_devart_apply_applies_it_once(
    serving: Any, database_url: str
) -> None:
    """A devart action's change commits with ``applied_at`` or not at all: killed after the gate
    recorded ``apply_started_at`` and while the apply waits for the task's row (held by the test), the
    restarted plane applies it, once."""
    _, plane, sam, ada = serving
    submitted = await sam.post("/api/v1/tasks", json={"type": "chore", "input": {}})
    assert submitted.status_code in (200, 201, 202), submitted.text
    task_id = submitted.json()["id"]
    conn = await connect(database_url)
    try:
        await conn.execute("UPDATE tasks SET status = 'failed', finished_at = now() WHERE id = $1", UUID(task_id))
        attempt = await conn.fetchval("SELECT attempt FROM tasks WHERE id = $1", UUID(task_id))
        remediation_id = await _propose(sam, "retry_task", task_id, namespace="")
        waiting = await _state(sam, remediation_id, "awaiting_approval")
        holder = conn.transaction()
        await holder.start()
        await conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", UUID(task_id))
        assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200

        async def apply_waiting() -> bool:
            started = await conn.fetchval("SELECT apply_started_at FROM remediations WHERE id = $1",
                                          UUID(remediation_id))
            blocked = await conn.fetchval(  # the only lock the test holds is the task's row
                "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))")
            return started is not None and blocked > 0

        await wait_for(apply_waiting, timeout_s=30, what="the apply blocked after the gate")
        await plane.kill()
        await holder.rollback()
        row = await conn.fetchrow("SELECT state, applied_at FROM remediations WHERE id = $1", UUID(remediation_id))
        assert (row["state"], row["applied_at"]) == ("applying", None)  # the gate committed, the apply did not
        await plane.start()
        done = await _state(sam, remediation_id, *TERMINAL)
        assert done["state"] == "successful", done
        retries = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'task.retry' AND target = $1", task_id)
        assert retries == 1
        assert await conn.fetchval("SELECT attempt FROM tasks WHERE id = $1", UUID(task_id)) == attempt + 1
    finally:
        await conn.close()


async def test_killed_while_awaiting_approval_then_approved_applies_once(running: Any) -> None:
    fake, plane, sam, ada, waiting = running
    await plane.kill()
    await plane.start()
    assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200
    assert (await _state(sam, waiting["id"], *TERMINAL))["state"] == "successful"
    assert [w.name for w in fake.workloads.real_writes()] == ["api"]


async def test_killed_inside_the_apply_fails_safe_without_a_second_write(running: Any) -> None:
    fake, plane, sam, ada, waiting = running
    fake.workloads.hold = threading.Event()
    await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")

    async def write_arrived() -> bool:
        return any(not w.dry_run for w in fake.workloads.writes)

    await wait_for(write_arrived, timeout_s=30, what="the held write")
    await plane.kill()
    fake.workloads.hold.set()  # the server finishes the write its caller no longer waits for
    fake.workloads.hold = None
    await plane.start()
    failed_safe = await _state(sam, waiting["id"], *TERMINAL)
    assert failed_safe["state"] == "error" and "not applied again" in failed_safe["state_reason"]
    assert [w.name for w in fake.workloads.real_writes()] == ["api"]


async def test_killed_while_verifying_carries_on_verifying(running: Any) -> None:
    fake, plane, sam, ada, waiting = running
    fake.workloads.never_available("api")
    await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")
    await _state(sam, waiting["id"], "verifying")
    await plane.kill()
    await plane.start()
    fake.workloads.stuck.discard("api")
    fake.workloads._reconcile("default", "api")
    done = await _state(sam, waiting["id"], *TERMINAL)
    assert done["state"] == "successful", done
    assert [w.name for w in fake.workloads.real_writes()] == ["api"]
