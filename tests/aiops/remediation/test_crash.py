"""The control plane SIGKILLed between pipeline steps: it resumes, or fails safe, and never applies twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.sdk import BrokerSettings
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
async def running(database_url: str, broker_settings: BrokerSettings, tmp_path: Path) -> Any:
    """A fake cluster with a Deployment ``api``, the control plane serving, and a restart proposed and
    awaiting approval; yields ``(fake, plane, proposer, approver, remediation)``."""
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
                body = {"action": "restart", "target": "api", "namespace": "default", "reason": "crash test"}
                remediation_id = (await sam.post("/api/v1/remediations", json=body)).json()["id"]
                yield fake, plane, sam, ada, await _state(sam, remediation_id, "awaiting_approval")
        finally:
            plane.stop()


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
