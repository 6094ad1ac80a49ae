"""The Job sweeper in a running control plane, against the fake Kubernetes API server.

Jobs are created the way an agent creates them (the manifest ``build_job_manifest`` makes, posted
by the official client); task states come from the real REST API and Postgres.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from kubernetes import client, config

from agents.sandbox import SandboxSpec
from agents.sandbox.kubernetes import MANAGED_BY, KubernetesSandboxSettings, build_job_manifest
from agents.sdk import BrokerSettings
from control_plane.k8s_sweeper import JobSweeper
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.control_plane.test_end_to_end import _finished
from tests.control_plane.test_kubernetes_path import (  # noqa: F401 - fixtures used by name
    NAMESPACE,
    _pod_of,
    _submit,
    fake,
    start_k8s_agent,
)
from tests.infra.kustomize import render
from tests.k8s_fake import FakeKubernetes
from tests.support.system import StartAgent, fast_settings, wait_for

CreateJob = Callable[..., Awaitable[str]]


@pytest.fixture
def sweep_interval_s() -> float:
    return 0.2


@pytest.fixture
def settings(
    database_url: str, broker_settings: BrokerSettings, fake: FakeKubernetes, sweep_interval_s: float
) -> Settings:
    """The control plane with its sweeper on (``fake`` has put the kubeconfig into the environment)."""
    return fast_settings(
        database_url,
        broker_settings,
        job_sweeper_enabled=True,
        job_sweeper_interval_s=sweep_interval_s,
        job_sweeper_namespace=NAMESPACE,
    )


@pytest.fixture
async def create_job(fake: FakeKubernetes) -> AsyncIterator[CreateJob]:
    """Post the Job an agent would create for ``(task_id, attempt)``, through the official client."""
    settings = KubernetesSandboxSettings(namespace=NAMESPACE)
    api = config.new_client_from_config(config_file=str(settings.kubeconfig))
    batch = client.BatchV1Api(api)

    async def create(task_id: str, attempt: int = 1, *, managed_by: str = "devart") -> str:
        spec = SandboxSpec(task_id=task_id, attempt=attempt, command=["sleep", "infinity"])
        manifest = build_job_manifest(spec, settings)
        manifest["metadata"]["labels"][MANAGED_BY] = managed_by
        await asyncio.to_thread(batch.create_namespaced_job, NAMESPACE, manifest, _preload_content=False)
        return manifest["metadata"]["name"]

    yield create
    await asyncio.to_thread(api.close)


async def _pending_task(api: httpx.AsyncClient) -> str:
    """A task no agent can take: it stays pending, like one whose agent is gone."""
    return (await _submit(api, {"command": ["true"]}, requires=["shell", "nobody-has-this"]))["id"]


async def _cancel(api: httpx.AsyncClient, task_id: str) -> None:
    response = await api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert response.json()["status"] == "cancelled", response.text


def _job_names(fake: FakeKubernetes) -> set[str]:
    return {job["metadata"]["name"] for job in fake.jobs()}


@pytest.mark.parametrize("sweep_interval_s", [3600.0])  # the loop's first round ran before any Job
async def test_sweep_deletes_only_the_jobs_of_terminal_tasks(
    cp: ControlPlane, admin: httpx.AsyncClient, fake: FakeKubernetes, create_job: CreateJob
) -> None:
    assert cp.workers is not None and isinstance(cp.workers.sweeper, JobSweeper)
    done, open_ = await _pending_task(admin), await _pending_task(admin)
    await _cancel(admin, done)
    swept = await create_job(done)
    kept = {
        await create_job(open_),
        await create_job(str(uuid.uuid4())),  # not a task of this database
        await create_job("not-a-uuid"),
        await create_job(done, 2, managed_by="someone-else"),  # not ours, whatever its annotations say
    }
    assert fake.pods_of(swept)

    assert await cp.workers.sweeper.sweep() == [swept]
    assert _job_names(fake) == kept
    assert fake.pods_of(swept) == []
    assert fake.deletions == [{"resource": "jobs", "name": swept, "propagationPolicy": "Background"}]
    assert await cp.workers.sweeper.sweep() == []


async def test_the_running_control_plane_sweeps_a_cancelled_tasks_job_and_keeps_a_running_one(
    admin: httpx.AsyncClient, fake: FakeKubernetes, start_k8s_agent: StartAgent, create_job: CreateJob
) -> None:
    await start_k8s_agent()
    running = (await _submit(admin, {"command": ["make"]}))["id"]
    running_job = await _pod_of(fake, running)
    fake.start(running_job)
    # A task whose agent vanished while its Job ran on, then cancelled by a supervisor.
    orphan = await _pending_task(admin)
    orphan_job = await create_job(orphan)
    await _cancel(admin, orphan)

    async def orphan_swept() -> bool:
        return orphan_job not in _job_names(fake)

    await wait_for(orphan_swept, what="the sweeper to delete the cancelled task's Job")
    assert _job_names(fake) == {running_job}, "a listing that found the orphan also saw the running Job"
    assert (await admin.get(f"/api/v1/tasks/{running}")).json()["status"] == "running"

    fake.finish(running_job, 0)
    assert (await _finished(admin, running))["status"] == "succeeded"

    async def all_swept() -> bool:
        return not fake.jobs()

    await wait_for(all_swept, what="the finished task's Job to be swept as well")


@pytest.mark.parametrize(
    ("overlay", "enabled"), [("base", False), ("overlays/dev", False), ("overlays/prod", True)]
)
def test_the_sweeper_is_deployed_on_in_prod_only_with_the_rights_it_uses(
    overlay: str, enabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(Path(__file__).resolve().parents[2] / "infra" / "k8s" / overlay)
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "devart-control-plane"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    for variable in server.get("env", []):
        if "value" in variable:  # downward-API entries (valueFrom) are the kubelet's to fill
            monkeypatch.setenv(variable["name"], variable["value"])
    settings = Settings(database_url="postgresql://unused")
    assert settings.job_sweeper_enabled is enabled
    assert pod["automountServiceAccountToken"] is enabled, "a token only where the sweeper uses it"

    (binding,) = [
        d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "devart-job-sweeper"
    ]
    assert binding["metadata"]["namespace"] == settings.job_sweeper_namespace
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "devart"}
    ]
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "devart-job-sweeper"]
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("jobs", "get"),
        ("jobs", "list"),
        ("jobs", "delete"),
        ("pods", "list"),
        ("pods", "delete"),
    }
