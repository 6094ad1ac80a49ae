"""Kubernetes remediations end to end: API -> pipeline -> the real `kubernetes` client -> the fake API server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from aiops.remediation.kube import FIELD_MANAGER
from tests.aiops.remediation.conftest import BASE_POLICY, drive, propose
from tests.k8s_fake import FakeKubernetes
from tests.support.system import client, make_token, serve_api

TERMINAL = ("successful", "failed", "inconclusive", "refused", "expired", "error", "suggested")



async def test_dry_run_changes_nothing_then_an_approved_restart_is_applied_once(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("api")
    before = fake.store.get("deployments", "default", "api")
    async with plane() as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam, \
            client(url, await make_token(database_url, "admin", "ada")) as ada:
        proposed = await propose(sam, "restart", "api")
        waiting = await drive(cp, sam, proposed["id"], "awaiting_approval")
        assert fake.store.get("deployments", "default", "api") == before  # the dry-run changed nothing
        assert fake.workloads.real_writes() == []
        dry = [w for w in fake.workloads.writes if w.dry_run]
        assert len(dry) == 1 and dry[0].field_manager == FIELD_MANAGER
        [change] = waiting["dry_run"]["changes"]
        assert change["path"].endswith("restartedAt") and change["from"] is None and change["to"]
        assert waiting["approval"]["state"] == "pending" and waiting["approval"]["requested_by"] == "sam"

        own = await sam.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")
        assert own.status_code == 403  # prevent_self: the proposer cannot approve
        assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200
        done = await drive(cp, sam, proposed["id"], *TERMINAL)
        assert done["state"] == "successful", done
        [write] = fake.workloads.real_writes()
        assert (write.method, write.resource, write.field_manager) == ("PATCH", "deployments", FIELD_MANAGER)
        after = fake.store.get("deployments", "default", "api")
        annotations = after["spec"]["template"]["metadata"]["annotations"]
        assert annotations["kubectl.kubernetes.io/restartedAt"] == change["to"]
        assert [m["manager"] for m in after["metadata"]["managedFields"]] == [FIELD_MANAGER]
        assert [s["state"] for s in done["steps"]] == [
            "proposed", "preflight", "dry_run", "awaiting_approval", "applying", "applying", "verifying", "successful"]
        assert done["steps"][4]["actor"] == "ada"
        conn = await asyncpg.connect(database_url)
        try:
            audited = await conn.fetch("SELECT actor, action FROM audit_log WHERE target = $1 ORDER BY id", proposed["id"])
        finally:
            await conn.close()
        assert ("sam", "remediation.propose") in [(a["actor"], a["action"]) for a in audited]
        assert ("ada", "remediation.applying") in [(a["actor"], a["action"]) for a in audited]


async def test_rollback_picks_the_previous_replica_set_and_refuses_a_paused_deployment(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("shop", image="shop:1")
    for image in ("shop:2", "shop:3"):
        fake.store.update("deployments", "default", "shop",
                          lambda d, image=image: d["spec"]["template"]["spec"]["containers"][0].update(image=image))
        fake.workloads._reconcile("default", "shop")
    fake.workloads.deployment("frozen", paused=True)
    async with plane(BASE_POLICY.replace("mode: approve", "mode: auto")) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        back = await propose(sam, "rollback", "shop")
        done = await drive(cp, sam, back["id"], *TERMINAL)
        assert done["state"] == "successful", done
        assert done["preflight"]["from_revision"] == 3 and done["preflight"]["to_revision"] == 2
        assert done["dry_run"]["changes"][1] == {"path": "spec.template.spec.containers[*].image",
                                                 "from": ["shop:3"], "to": ["shop:2"]}
        template = fake.store.get("deployments", "default", "shop")["spec"]["template"]
        assert template["spec"]["containers"][0]["image"] == "shop:2"
        assert "pod-template-hash" not in template["metadata"]["labels"]

        first = await propose(sam, "rollback", "shop", input={"to_revision": 1})
        assert (await drive(cp, sam, first["id"], *TERMINAL))["state"] == "successful"
        assert fake.store.get("deployments", "default", "shop")["spec"]["template"]["spec"]["containers"][0]["image"] == "shop:1"

        frozen = await propose(sam, "rollback", "frozen")
        refused = await drive(cp, sam, frozen["id"], *TERMINAL)
        assert refused["state"] == "refused" and "paused" in refused["state_reason"]
        assert not [w for w in fake.workloads.writes if w.name == "frozen"]


async def test_gitops_owned_objects_are_refused_or_warned_as_the_policy_says(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("argo-app", annotations={"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:default/argo-app"})
    fake.workloads.deployment("flux-app", labels={"kustomize.toolkit.fluxcd.io/name": "shop"})
    rs = fake.store.list("replicasets", "default", "app=flux-app")[0][0]
    fake.store.create("pods", "default", {"metadata": {"name": "flux-app-1", "labels": {"app": "flux-app"},
                                                      "ownerReferences": [{"kind": "ReplicaSet", "name": rs["metadata"]["name"],
                                                                           "uid": rs["metadata"]["uid"]}]},
                                          "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    policy = BASE_POLICY + """
rules:
  - action: scale
    gitops: act_and_warn
    mode: auto
"""
    async with plane(policy) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        argo = await drive(cp, sam, (await propose(sam, "restart", "argo-app"))["id"], *TERMINAL)
        assert argo["state"] == "refused" and "Argo CD" in argo["state_reason"]
        # the pod carries nothing; its Deployment (two owners up) is Flux's
        flux = await drive(cp, sam, (await propose(sam, "delete_pod", "flux-app-1"))["id"], *TERMINAL)
        assert flux["state"] == "refused" and "Flux Kustomization shop" in flux["state_reason"]
        assert fake.store.get("pods", "default", "flux-app-1") is not None
        warned = await drive(cp, sam, (await propose(sam, "scale", "argo-app", input={"replicas": 3}))["id"], *TERMINAL)
        assert warned["state"] == "successful" and "the next sync may undo" in warned["warnings"][0]
        assert fake.workloads.real_writes()[0].subresource == "scale"


async def test_a_burst_of_100_proposals_respects_rate_limit_and_cooldown(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("hot")
    fake.workloads.deployment("cool")
    policy = BASE_POLICY.replace("mode: approve", "mode: auto") + """
rules:
  - action: restart
    targets: [hot]
    rate_limit: {count: 3, per: 1h}
  - action: restart
    targets: [cool]
    cooldown: 1h
"""
    async with plane(policy) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        proposals = await asyncio.gather(*(propose(sam, "restart", "hot" if i % 2 else "cool") for i in range(100)))
        ids = [p["id"] for p in proposals]

        async def all_done() -> list[dict[str, Any]] | None:
            await asyncio.gather(cp.remediation.run_once(), cp.remediation.run_once())  # two workers at once
            page = (await sam.get("/api/v1/remediations", params={"limit": 200})).json()["items"]
            return page if all(r["state"] in TERMINAL for r in page) else None

        from tests.support.system import wait_for
        page = await wait_for(all_done, timeout_s=90, interval_s=0.05, what="every proposal to end")
        assert {r["id"] for r in page} == set(ids)
        writes = fake.workloads.real_writes()
        assert sum(1 for w in writes if w.name == "hot") == 3
        assert sum(1 for w in writes if w.name == "cool") == 1
        refused = [r for r in page if r["state"] == "refused"]
        assert len(refused) == 96 and sum(r["state"] == "successful" for r in page) == 4
        assert {r["state_reason"].split(":")[0] for r in refused} == {"rate limit", "cooldown"}


async def test_kill_switch_holds_an_approved_action_and_survives_a_restart(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("api")
    async with plane() as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam, \
            client(url, await make_token(database_url, "admin", "ada")) as ada:
        proposed = await propose(sam, "restart", "api")
        waiting = await drive(cp, sam, proposed["id"], "awaiting_approval")
        assert (await sam.post("/api/v1/remediation/pause")).status_code == 403  # admins only
        paused = await ada.post("/api/v1/remediation/pause", json={"reason": "incident review"})
        assert paused.json()["paused"] is True
        assert (await ada.post(f"/api/v1/approvals/{waiting['approval_id']}/approve")).status_code == 200
        for _ in range(5):
            await cp.remediation.run_once()
        held = (await sam.get(f"/api/v1/remediations/{proposed['id']}")).json()
        assert held["state"] == "applying" and "paused" in held["state_reason"] and held["paused"] is True
        assert fake.workloads.real_writes() == []
    async with plane() as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "admin", "ada2")) as ada:
        assert (await ada.get("/api/v1/remediation/status")).json()["paused"] is True  # survives the restart
        for _ in range(3):
            await cp.remediation.run_once()
        assert fake.workloads.real_writes() == []
        assert (await ada.post("/api/v1/remediation/resume")).json()["paused"] is False
        done = await drive(cp, ada, proposed["id"], *TERMINAL)
        assert done["state"] == "successful" and len(fake.workloads.real_writes()) == 1


async def test_verification_fails_a_rollout_that_never_becomes_available(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("broken")
    fake.workloads.never_available("broken")
    async with plane(BASE_POLICY.replace("mode: approve", "mode: auto")) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        done = await drive(cp, sam, (await propose(sam, "restart", "broken"))["id"], *TERMINAL)
        assert done["state"] == "failed", done
        assert "rollout not done after 1s" in done["state_reason"] and "0 of 2 updated replicas available" in done["state_reason"]


async def test_webhooks_that_cannot_dry_run_and_admission_refusals_are_never_applied(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("meshed")
    fake.workloads.no_dry_run.add(("deployments", "meshed"))
    fake.workloads.deployment("guarded")
    fake.workloads.refusals[("deployments", "guarded")] = "replicas above quota"
    fake.workloads.deployment("outside")
    async with plane(BASE_POLICY.replace("mode: approve", "mode: auto")) as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "supervisor", "sam")) as sam:
        meshed = await drive(cp, sam, (await propose(sam, "restart", "meshed"))["id"], *TERMINAL)
        assert meshed["state"] == "refused" and meshed["state_reason"].startswith("dry_run_unsupported")
        guarded = await drive(cp, sam, (await propose(sam, "scale", "guarded", input={"replicas": 5}))["id"], *TERMINAL)
        assert guarded["state"] == "refused" and "replicas above quota" in guarded["state_reason"]
        bounded = await sam.post("/api/v1/remediations", json={"action": "scale", "target": "outside",
                                                                "namespace": "kube-system", "reason": "x",
                                                                "input": {"replicas": 2}})
        assert bounded.status_code == 403 and bounded.json()["error"]["field"] == "body.namespace"
        bad = await sam.post("/api/v1/remediations", json={"action": "scale", "target": "outside",
                                                            "namespace": "default", "reason": "x", "input": {"replicas": -1}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "body.input.replicas"
        over = await drive(cp, sam, (await propose(sam, "scale", "outside", input={"replicas": 50}))["id"], *TERMINAL)
        assert over["state"] == "refused" and "bounds [1, 20]" in over["state_reason"]
        assert fake.workloads.real_writes() == []
        actions = (await sam.get("/api/v1/remediation/actions")).json()
        scale = next(a for a in actions if a["name"] == "scale")
        assert scale["input_schema"]["properties"]["replicas"]["maximum"] == 1000
