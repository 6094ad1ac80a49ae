"""The guards on disruptive Kubernetes actions, each attacked for real through the real `kubernetes`
client against the fake API server: PodDisruptionBudgets on `evict_pod` (the API server answers 429),
the policy's `max_unavailable` for pod actions and `min_healthy` for cordon, and GitOps `approve`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from tests.aiops.remediation.conftest import BASE_POLICY, drive, propose
from tests.k8s_fake import FakeKubernetes
from tests.support.system import client, make_token, serve_api

TERMINAL = ("successful", "failed", "inconclusive", "refused", "expired", "error", "suggested")
AUTO = BASE_POLICY.replace("mode: approve", "mode: auto")



def _core(fake: FakeKubernetes, tmp_path: Path) -> k8s.CoreV1Api:
    """Someone else's client (a `kubectl drain` running at the same time)."""
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(str(fake.write_kubeconfig(tmp_path / "other-kubeconfig")),
                                client_configuration=configuration)
    return k8s.CoreV1Api(k8s.ApiClient(configuration))


def _evict(core: k8s.CoreV1Api, name: str) -> None:
    core.create_namespaced_pod_eviction(name, "default", {"apiVersion": "policy/v1", "kind": "Eviction",
                                                          "metadata": {"name": name, "namespace": "default"}})


def _pods(fake: FakeKubernetes) -> set[str]:
    return {p["metadata"]["name"] for p in fake.store.list("pods", "default")[0]}


async def test_the_fake_enforces_pod_disruption_budgets_as_the_api_server_does(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    fake.workloads.deployment("web", replicas=3)
    first, second, third = fake.workloads.pods("web", 3)
    budget = fake.workloads.pdb("web-pdb", "web", max_unavailable=1)
    assert {k: budget["status"][k] for k in ("expectedPods", "currentHealthy", "desiredHealthy", "disruptionsAllowed")} \
        == {"expectedPods": 3, "currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1}
    core = _core(fake, tmp_path)
    await asyncio.to_thread(_evict, core, first)
    with pytest.raises(ApiException) as refused:
        await asyncio.to_thread(_evict, core, second)
    assert refused.value.status == 429 and "disruption budget" in refused.value.body
    assert "needs 2 healthy pods and has 2 currently" in refused.value.body
    assert _pods(fake) == {second, third}
    fake.workloads.set_ready(third, False)  # an unready pod is evicted only while the budget still holds
    with pytest.raises(ApiException) as unready:
        await asyncio.to_thread(_evict, core, third)
    assert unready.value.status == 429
    fake.workloads.pdb("web-pdb-2", "web", min_available="10%")
    with pytest.raises(ApiException) as two:
        await asyncio.to_thread(_evict, core, second)
    assert two.value.status == 500 and "more than one PodDisruptionBudget" in two.value.body


async def test_evict_pod_is_refused_by_a_budget_at_dry_run_and_fails_when_the_budget_is_used_up_before_apply(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str, tmp_path: Path
) -> None:
    fake.workloads.deployment("api", replicas=3)
    pods = fake.workloads.pods("api", 3)
    fake.workloads.pdb("api-pdb", "api", min_available=3)
    async with plane() as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam, \
            client(url, await make_token(database_url, "admin", "ada")) as ada:
        blocked = await drive(cp, sam, (await propose(sam, "evict_pod", pods[0]))["id"], *TERMINAL)
        assert blocked["state"] == "refused", blocked
        assert "disruption budget" in blocked["state_reason"] and "api-pdb needs 3 healthy pods" in blocked["state_reason"]
        assert [w.dry_run for w in fake.workloads.writes if w.subresource == "eviction"] == [True]
        assert _pods(fake) == set(pods)

        fake.store.update("poddisruptionbudgets", "default", "api-pdb",
                          lambda b: b["spec"].update(minAvailable=2))  # one disruption allowed now
        proposed = await propose(sam, "evict_pod", pods[1])
        waiting = await drive(cp, sam, proposed["id"], "awaiting_approval")
        assert waiting["dry_run"]["changes"] == [{"path": f"pod default/{pods[1]}", "from": "running", "to": "evict_pod"}]
        assert _pods(fake) == set(pods)  # the dry-run evicted nothing
        await asyncio.to_thread(_evict, _core(fake, tmp_path), pods[2])  # someone else uses the disruption up
        assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200
        failed = await drive(cp, sam, proposed["id"], *TERMINAL)
        assert failed["state"] == "failed" and failed["state_reason"].startswith("not applied: ")
        assert "disruption budget" in failed["state_reason"]
        assert pods[1] in _pods(fake)  # the API server refused the real eviction: the pod is still there

        fake.workloads.pods("api", 1)  # its replacement is ready: one disruption again
        again = await drive(cp, sam, (await propose(sam, "evict_pod", pods[1]))["id"], "awaiting_approval")
        await ada.post(f"/api/v1/approvals/{again['approval_id']}/approve")
        done = await drive(cp, sam, again["id"], *TERMINAL)
        assert done["state"] == "successful", done
        assert pods[1] not in _pods(fake)
        evictions = [w for w in fake.workloads.real_writes() if w.subresource == "eviction"]
        # the other client's eviction, ours refused by the budget, ours again once it allowed one
        assert [w.name for w in evictions] == [pods[2], pods[1], pods[1]]


@pytest.mark.parametrize("action", ["evict_pod", "delete_pod"])
async def test_max_unavailable_refuses_a_pod_action_that_would_take_too_many_pods_down(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str, action: str
) -> None:
    fake.workloads.deployment("api", replicas=4)
    healthy, other, sick, _ = fake.workloads.pods("api", 4)
    fake.workloads.set_ready(sick, False)
    policy = AUTO + f"""
rules:
  - action: {action}
    targets: [{healthy}]
    max_unavailable: 1
  - action: {action}
    max_unavailable: 2
"""
    async with plane(policy) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        refused = await drive(cp, sam, (await propose(sam, action, healthy))["id"], *TERMINAL)
        assert refused["state"] == "refused", refused
        assert refused["state_reason"].startswith("2 pods of ReplicaSet api-") and "max_unavailable 1" in refused["state_reason"]
        assert fake.workloads.writes == []  # refused at preflight: not even a dry-run reached the server
        done = await drive(cp, sam, (await propose(sam, action, other))["id"], *TERMINAL)
        assert done["state"] == "successful", done
        assert other not in _pods(fake) and healthy in _pods(fake)


async def test_cordon_keeps_min_healthy_schedulable_nodes_and_uncordon_is_never_held(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    for name, ready in (("n1", True), ("n2", True), ("n3", True), ("n4", False)):
        fake.workloads.node(name, ready=ready)
    policy = AUTO + """
rules:
  - action: cordon
    min_healthy: 2
"""
    async with plane(policy) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        first = await drive(cp, sam, (await propose(sam, "cordon", "n1", namespace=""))["id"], *TERMINAL)
        assert first["state"] == "successful", first
        assert first["preflight"]["healthy_left"] == 2
        assert fake.store.get("nodes", "", "n1")["spec"]["unschedulable"] is True
        # n2 would leave only n3 (n1 is cordoned, n4 is not ready)
        second = await drive(cp, sam, (await propose(sam, "cordon", "n2", namespace=""))["id"], *TERMINAL)
        assert second["state"] == "refused" and "only 1 other schedulable ready nodes" in second["state_reason"]
        assert "min_healthy 2" in second["state_reason"]
        assert not fake.store.get("nodes", "", "n2")["spec"].get("unschedulable")
        assert [w.name for w in fake.workloads.writes] == ["n1", "n1"]  # n1's dry-run and write; nothing for n2
        back = await drive(cp, sam, (await propose(sam, "uncordon", "n1", namespace=""))["id"], *TERMINAL)
        assert back["state"] == "successful" and fake.store.get("nodes", "", "n1")["spec"]["unschedulable"] is False
        now = await drive(cp, sam, (await propose(sam, "cordon", "n2", namespace=""))["id"], *TERMINAL)
        assert now["state"] == "successful", now


async def test_gitops_approve_turns_an_automatic_action_on_a_git_managed_object_into_an_approval(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("argo-app", labels={"app.kubernetes.io/instance": "shop"},
                              annotations={"argocd.argoproj.io/sync-wave": "1"})
    fake.workloads.deployment("plain")
    policy = AUTO.replace("mode: auto", "mode: auto\n  gitops: approve")
    async with plane(policy) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam, \
            client(url, await make_token(database_url, "admin", "ada")) as ada:
        plain = await drive(cp, sam, (await propose(sam, "restart", "plain"))["id"], *TERMINAL)
        assert plain["state"] == "successful" and plain["approval_id"] is None  # auto: applied without a person
        proposed = await propose(sam, "restart", "argo-app")
        assert proposed["mode"] == "auto"
        waiting = await drive(cp, sam, proposed["id"], "awaiting_approval", *TERMINAL)
        assert waiting["state"] == "awaiting_approval", waiting
        assert waiting["mode"] == "approve" and waiting["preflight"]["gitops_handling"] == "approve"
        assert "Argo CD" in waiting["preflight"]["gitops"] and "app.kubernetes.io/instance=shop" in waiting["preflight"]["gitops"]
        assert "needs approval (policy gitops: approve)" in waiting["warnings"][0]
        for _ in range(3):
            await cp.remediation.run_once()
        assert [w.name for w in fake.workloads.real_writes()] == ["plain"]  # nothing applied before the approval
        assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200
        done = await drive(cp, sam, proposed["id"], *TERMINAL)
        assert done["state"] == "successful", done
        assert [w.name for w in fake.workloads.real_writes()] == ["plain", "argo-app"]
