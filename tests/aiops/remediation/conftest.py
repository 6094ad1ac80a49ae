"""A control plane with the remediation pipeline pointed at the fake Kubernetes API; the worker loop is
off so each test drives ``run_once()`` itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.sdk import BrokerSettings
from aiops.remediation.settings import RemediationSettings
from control_plane.service import ControlPlane
from tests.k8s_fake import FakeKubernetes
from tests.support.system import client, fast_settings, make_token, serve_api, wait_for

BASE_POLICY = """
namespaces: [default]
defaults:
  mode: approve
  cooldown: 0s
  verify: {interval: 0.2s, count: 2, failure_limit: 0, rollout_timeout: 1s}
"""


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(namespaces=("default",)) as cluster:
        yield cluster


@asynccontextmanager
async def remediation_plane(database_url: str, broker: BrokerSettings, tmp_path: Path, fake: FakeKubernetes | None,
                            policy: str) -> AsyncIterator[ControlPlane]:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy)
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig") if fake is not None else None
    settings = RemediationSettings(enabled=False, policy=policy_path, kubeconfig=kubeconfig, interval_s=0.1,
                                   rollout_poll_s=0.1)
    async with ControlPlane(fast_settings(database_url, broker), remediation=settings) as cp:
        yield cp


@pytest.fixture
def plane(database_url: str, broker_settings: BrokerSettings, tmp_path: Path,
          fake: FakeKubernetes) -> Callable[..., Any]:
    def make(policy: str = BASE_POLICY) -> Any:
        return remediation_plane(database_url, broker_settings, tmp_path, fake, policy)

    return make


@asynccontextmanager
async def api_as(cp: ControlPlane, database_url: str, role: str, name: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_api(cp) as url, client(url, await make_token(database_url, role, name)) as api:
        yield api


async def drive(cp: ControlPlane, api: httpx.AsyncClient, remediation_id: str, *states: str,
                timeout_s: float = 20.0) -> dict[str, Any]:
    """Run the pipeline until the remediation reaches one of ``states``; returns its detail."""

    async def reached() -> dict[str, Any] | None:
        await cp.remediation.run_once()
        body = (await api.get(f"/api/v1/remediations/{remediation_id}")).json()
        return body if body["state"] in states else None

    return await wait_for(reached, timeout_s=timeout_s, interval_s=0.05, what=f"remediation in {states}")


async def propose(api: httpx.AsyncClient, action: str, target: str, *, namespace: str = "default",
                  **extra: Any) -> dict[str, Any]:
    """``POST /api/v1/remediations`` by hand; asserts it was accepted and returns the remediation."""
    body = {"action": action, "target": target, "namespace": namespace, "reason": "test", **extra}
    response = await api.post("/api/v1/remediations", json=body)
    assert response.status_code == 201, response.text
    return response.json()


Propose = Callable[..., Awaitable[httpx.Response]]
