"""A ``shell`` task in the Kubernetes sandbox through the whole devart path.

REST -> outbox -> broker -> in-process shell agent -> ``KubernetesSandbox`` -> the fake API server
(tests.k8s_fake, spoken to by the official client through a kubeconfig) -> events -> Postgres -> REST.
The test plays the cluster: it starts the pod, writes its log and ends it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.sandbox import SandboxSettings
from agents.sandbox.kubernetes import job_name
from agents.sdk import AgentRuntime, TaskMessage
from agents.sdk.trust import HEADER_DELIVERY_SECRET
from agents.shell import build_shell_agent
from control_plane.service import ControlPlane
from tests.control_plane.test_end_to_end import _finished, _logs
from tests.control_plane.test_faults import _publish
from tests.k8s_fake import FakeKubernetes
from tests.support.system import StartAgent, wait_for

NAMESPACE = "devart-sandbox"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    """The fake cluster, and the ``DEVART_K8S_*`` environment the agents' Kubernetes sandboxes read."""
    with FakeKubernetes((NAMESPACE,)) as cluster:
        monkeypatch.setenv("DEVART_K8S_KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("DEVART_K8S_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("DEVART_K8S_RECONCILE_INTERVAL_S", "1")
        monkeypatch.setenv("DEVART_K8S_LOG_DRAIN_TIMEOUT_S", "5")
        monkeypatch.setenv("DEVART_K8S_WATCH_TIMEOUT_S", "30")
        yield cluster


@pytest.fixture
async def start_k8s_agent(fake: FakeKubernetes, start_agent: StartAgent) -> StartAgent:
    """``start_agent`` for shell agents (default: the Kubernetes sandbox), ordered so the fake
    cluster outlives every agent."""

    async def start(*, settings: SandboxSettings | None = None, **build: Any) -> AgentRuntime:
        sandbox = settings or SandboxSettings(kind="kubernetes")
        return await start_agent(build_shell_agent(settings=sandbox, **build))

    return start


async def _submit(api: httpx.AsyncClient, data: dict[str, Any], **task: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/tasks", json={"type": "shell", "requires": ["shell"], "input": data, **task}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _pod_of(fake: FakeKubernetes, task_id: str, attempt: int = 1) -> str:
    """The name of the attempt's Job once its pod exists (the fake creates both together)."""
    job = job_name(task_id, attempt)

    async def pod() -> bool:
        return bool(fake.pods_of(job))

    await wait_for(pod, what=f"the pod of Job {job}")
    return job


async def _status(api: httpx.AsyncClient, task_id: str) -> str:
    return (await api.get(f"/api/v1/tasks/{task_id}")).json()["status"]


async def test_logs_arrive_while_the_pod_runs_then_the_task_succeeds(
    admin: httpx.AsyncClient, fake: FakeKubernetes, start_k8s_agent: StartAgent
) -> None:
    await start_k8s_agent()
    created = await _submit(admin, {"command": ["pytest", "-q"]})
    job = await _pod_of(fake, created["id"])

    fake.start(job)
    fake.log(job, "collecting", "3 passed")
    lines = await wait_for(lambda: _logs(admin, created["id"], 2), what="two log lines of the running pod")
    assert [line["line"] for line in lines] == ["collecting", "3 passed"]
    assert await _status(admin, created["id"]) == "running", "the lines must be visible before the pod ends"

    fake.log(job, "done")
    fake.finish(job, 0)
    task = await _finished(admin, created["id"])
    assert task["status"] == "succeeded"
    assert task["result"]["exit_code"] == 0
    assert task["result"]["stdout_tail"] == "collecting\n3 passed\ndone"
    assert [j["metadata"]["name"] for j in fake.jobs()] == [job]
    (created_job,) = fake.jobs()
    assert created_job["metadata"]["annotations"]["devart.io/task-id"] == created["id"]
    assert created_job["spec"]["template"]["spec"]["containers"][0]["command"] == ["pytest", "-q"]


@pytest.mark.parametrize(
    ("exit_code", "reason"), [(3, "Error"), (137, "OOMKilled")], ids=["exit-code", "oom-killed"]
)
async def test_a_failed_pod_fails_the_task_with_its_exit_code_and_reason(
    admin: httpx.AsyncClient, fake: FakeKubernetes, start_k8s_agent: StartAgent, exit_code: int, reason: str
) -> None:
    await start_k8s_agent()
    created = await _submit(admin, {"script": "make test"}, max_attempts=3)
    job = await _pod_of(fake, created["id"])
    fake.start(job)
    fake.log(job, "boom")
    fake.finish(job, exit_code, reason)

    task = await _finished(admin, created["id"])
    assert task["status"] == "failed", "a failed command is not retried"
    assert (task["result"]["exit_code"], task["result"]["reason"]) == (exit_code, reason)
    assert task["result"]["stdout_tail"] == "boom"
    assert reason in task["error"]["message"] and reason in task["status_reason"]
    assert [a["status"] for a in task["attempts"]] == ["failed"]


async def test_an_exceeded_deadline_times_the_task_out(
    admin: httpx.AsyncClient, fake: FakeKubernetes, start_k8s_agent: StartAgent
) -> None:
    await start_k8s_agent()
    created = await _submit(admin, {"command": ["sleep", "infinity"]}, timeout_s=60)
    job = await _pod_of(fake, created["id"])
    assert fake.jobs()[0]["spec"]["activeDeadlineSeconds"] <= 60
    fake.start(job)
    fake.exceed_deadline(job)

    task = await _finished(admin, created["id"])
    assert task["status"] == "timed_out"
    assert task["result"]["reason"] == "DeadlineExceeded"
    assert [a["status"] for a in task["attempts"]] == ["timed_out"]


async def test_cancel_over_rest_deletes_the_job_with_its_pod(
    admin: httpx.AsyncClient, fake: FakeKubernetes, start_k8s_agent: StartAgent
) -> None:
    await start_k8s_agent()
    created = await _submit(admin, {"command": ["sleep", "infinity"]})
    job = await _pod_of(fake, created["id"])
    fake.start(job)
    fake.log(job, "working")
    await wait_for(lambda: _logs(admin, created["id"], 1), what="the pod to be followed")

    cancelled = await admin.post(f"/api/v1/tasks/{created['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"

    async def job_deleted() -> bool:
        return any(d["resource"] == "jobs" for d in fake.deletions)

    # The API closes the attempt at once; the agent hears the cancel and deletes the Job.
    await wait_for(job_deleted, what="the agent to delete the cancelled attempt's Job")
    assert [d for d in fake.deletions if d["resource"] == "jobs"] == [
        {"resource": "jobs", "name": job, "propagationPolicy": "Foreground"}
    ]
    assert fake.jobs() == [] and fake.pods_of(job) == []
    task = (await admin.get(f"/api/v1/tasks/{created['id']}")).json()
    assert (task["status"], task["attempts"][0]["status"]) == ("cancelled", "cancelled")


async def test_kind_is_overridden_per_task_only_where_the_agent_allows_it(
    admin: httpx.AsyncClient, fake: FakeKubernetes, start_k8s_agent: StartAgent, tmp_path: Path
) -> None:
    local = SandboxSettings(kind="local", root=tmp_path / "sandboxes")
    await start_k8s_agent(
        settings=local.model_copy(update={"overridable": ["kind"]}), skills=["shell", "open"]
    )
    await start_k8s_agent(settings=local, skills=["shell", "strict"])

    refused = await _submit(admin, {"command": ["true"]}, requires=["strict"], sandbox={"kind": "kubernetes"})
    task = await _finished(admin, refused["id"])
    assert task["status"] == "failed"
    assert "sandbox.kind: per-task override not allowed" in task["error"]["message"]

    allowed = await _submit(admin, {"command": ["true"]}, requires=["open"], sandbox={"kind": "kubernetes"})
    job = await _pod_of(fake, allowed["id"])
    fake.start(job)
    fake.finish(job, 0)
    assert (await _finished(admin, allowed["id"]))["status"] == "succeeded"
    assert [j["metadata"]["name"] for j in fake.jobs()] == [job], "the refused task made no Job"


async def test_a_second_delivery_of_the_same_attempt_adopts_the_job(
    cp: ControlPlane,
    admin: httpx.AsyncClient,
    fake: FakeKubernetes,
    start_k8s_agent: StartAgent,
    amqp_url: str,
) -> None:
    first = await start_k8s_agent(slots=1)
    second = await start_k8s_agent(slots=1)
    assert first.agent.pool_id == second.agent.pool_id
    data = {"command": ["make", "build"]}
    created = await _submit(admin, data)
    job = await _pod_of(fake, created["id"])

    # The same attempt once more: the busy agent has no free slot, so the other one takes it.
    again = TaskMessage(
        task_id=uuid.UUID(created["id"]),
        attempt=1,
        type="shell",
        input=data,
        requires=["shell"],
        timeout_s=created["timeout_s"],
        pool_id=created["pool_id"],
    )
    body = again.model_dump_json().encode()
    await _publish(amqp_url, cp.topology.tasks, created["pool_id"], body, cp.signer,
                   {HEADER_DELIVERY_SECRET: cp.deliveries.header(body)})  # a genuine duplicate: the attempt's secret

    async def both_created() -> bool:
        posts = [r for r in fake.requests if r.method == "POST" and r.resource == "jobs"]
        return len(posts) == 2

    await wait_for(both_created, what="the second agent to ask for the same Job")
    assert len(fake.jobs()) == 1 and len(fake.pods_of(job)) == 1
    fake.start(job)
    fake.log(job, "built")
    fake.finish(job, 0)

    task = await _finished(admin, created["id"])
    assert task["status"] == "succeeded" and task["result"]["exit_code"] == 0
    assert [a["status"] for a in task["attempts"]] == ["succeeded"]
    assert [j["metadata"]["name"] for j in fake.jobs()] == [job]
    async with cp.loops_pool.acquire() as conn:  # both deliveries' events proved them
        assert not await conn.fetch("SELECT reason FROM dead_letters WHERE reason LIKE 'agent event%'")
