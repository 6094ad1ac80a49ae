"""Kubernetes actions: restart, scale, rollback, evict_pod, delete_pod, cordon, uncordon.

Every write goes through :class:`~aiops.remediation.kube.Kube` (``fieldManager=devart-remediation``);
every dry-run is the API server's own (``dryRun=All``), so admission and validation run exactly as
they would for the real write. An object owned by Argo CD or Flux (on itself or an owner) is
handled as the policy's ``gitops`` says.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aiops.remediation.actions.base import Action, Context, DryRunUnsupported, Plan, Refused, Rollout
from aiops.remediation.kube import JSON_PATCH, Kube, KubeError, Obj

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION = "deployment.kubernetes.io/revision"
_HASH = "pod-template-hash"


class _NoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScaleInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0, le=1000, description="desired replicas (bounded by the policy's min/max)")


class RollbackInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_revision: int | None = Field(default=None, ge=1, description="revision to return to; default the previous")


def gitops_manager(obj: Obj) -> str | None:
    """Who reconciles ``obj`` from Git, from its own labels and annotations (None: nobody we know)."""
    meta = obj.get("metadata", {})
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    name = f"{obj.get('kind', 'object')} {meta.get('name', '')}"
    if "argocd.argoproj.io/tracking-id" in notes:
        return f"Argo CD ({name}: tracking-id {notes['argocd.argoproj.io/tracking-id']})"
    if "app.kubernetes.io/instance" in labels and any(k.startswith("argocd.argoproj.io/") for k in notes):
        return f"Argo CD ({name}: app.kubernetes.io/instance={labels['app.kubernetes.io/instance']})"
    for key, what in (("kustomize.toolkit.fluxcd.io/name", "Flux Kustomization"),
                      ("helm.toolkit.fluxcd.io/name", "Flux HelmRelease")):
        if key in labels:
            return f"{what} {labels[key]} ({name})"
    return None


async def _gitops(ctx: Context, plan: Plan, kube: Kube, obj: Obj) -> dict[str, Any]:
    """Check ``obj`` and its owners (pod -> ReplicaSet -> Deployment); apply the policy's handling."""
    seen, current, manager = 0, obj, None
    while current is not None and seen < 4 and manager is None:
        manager = gitops_manager(current)
        owners = current.get("metadata", {}).get("ownerReferences") or []
        owner = next((o for o in owners if o.get("kind") in ("ReplicaSet", "Deployment")), None)
        namespace = current.get("metadata", {}).get("namespace", plan.namespace)
        current = None
        if owner is not None:
            try:
                read = kube.replica_set if owner["kind"] == "ReplicaSet" else kube.deployment
                current = await read(namespace, owner["name"])
            except KubeError as error:
                if error.status != 404:
                    raise
        seen += 1
    if manager is None:
        return {}
    handling = plan.decision.gitops
    if handling == "refuse":
        raise Refused(f"managed by {manager}: change it in Git (policy gitops: refuse)")
    if handling == "act_and_warn":
        ctx.warnings.append(f"managed by {manager}: the next sync may undo this change")
    return {"gitops": manager, "gitops_handling": handling}


def rollout_status(deployment: Obj) -> Rollout:
    """``kubectl rollout status`` for a Deployment: observed generation, updated and available replicas,
    and the progress deadline."""
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    generation = deployment.get("metadata", {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return "progressing", "waiting for the deployment spec update to be observed"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return "failed", f"deployment exceeded its progress deadline: {condition.get('message', '')}"
    want = spec.get("replicas", 1)
    updated, total, available = (status.get(k, 0) for k in ("updatedReplicas", "replicas", "availableReplicas"))
    if updated < want:
        return "progressing", f"{updated} of {want} new replicas updated"
    if total > updated:
        return "progressing", f"{total - updated} old replicas pending termination"
    if available < updated:
        return "progressing", f"{available} of {updated} updated replicas available"
    return "done", f"{available} of {want} replicas updated and available"


async def _dry(call: Any) -> Obj:
    try:
        return await call
    except KubeError as error:
        if error.dry_run_unsupported:
            raise DryRunUnsupported(f"dry_run_unsupported: {error.message}") from error
        raise Refused(f"the API server refused the dry-run: {error.message}") from error


class _DeploymentAction(Action):
    kind = "kubernetes"

    async def _deployment(self, ctx: Context, plan: Plan) -> tuple[Kube, Obj]:
        kube = ctx.require_kube()
        try:
            return kube, await kube.deployment(plan.namespace, plan.target)
        except KubeError as error:
            raise Refused(f"deployment {plan.namespace}/{plan.target}: {error.message}") from error

    async def rollout(self, ctx: Context, plan: Plan, applied: dict[str, Any]) -> Rollout:
        _, deployment = await self._deployment(ctx, plan)
        return rollout_status(deployment)


class Restart(_DeploymentAction):
    name = "restart"
    summary = "Roll every pod of a Deployment (the pod template's restartedAt annotation, as kubectl does)"
    Input = _NoInput

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube, deployment = await self._deployment(ctx, plan)
        if deployment.get("spec", {}).get("paused"):
            raise Refused("the deployment is paused: a restart would not roll out")
        return {"replicas": deployment.get("spec", {}).get("replicas", 1), **await _gitops(ctx, plan, kube, deployment)}

    def _patch(self, at: str) -> Obj:
        return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube, before = await self._deployment(ctx, plan)
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        after = await _dry(kube.patch_deployment(plan.namespace, plan.target, self._patch(at), dry_run=True))
        old = (before["spec"]["template"].get("metadata", {}).get("annotations") or {}).get(RESTARTED_AT)
        new = after["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
        return {"changes": [{"path": f"spec.template.metadata.annotations.{RESTARTED_AT}", "from": old, "to": new}],
                "restarted_at": at}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        kube = ctx.require_kube()
        done = await kube.patch_deployment(plan.namespace, plan.target, self._patch(dry["restarted_at"]), dry_run=False)
        return {"generation": done["metadata"].get("generation")}


class Scale(_DeploymentAction):
    name = "scale"
    summary = "Set a Deployment's replicas through the scale subresource, within the policy's bounds"
    Input = ScaleInput

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube, deployment = await self._deployment(ctx, plan)
        replicas = plan.input.replicas  # type: ignore[attr-defined]
        low, high = plan.decision.min_replicas, plan.decision.max_replicas
        if not low <= replicas <= high:
            raise Refused(f"replicas {replicas} is outside the policy's bounds [{low}, {high}]")
        return {"replicas": deployment.get("spec", {}).get("replicas", 1), **await _gitops(ctx, plan, kube, deployment)}

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube, before = await self._deployment(ctx, plan)
        replicas = plan.input.replicas  # type: ignore[attr-defined]
        after = await _dry(kube.scale_deployment(plan.namespace, plan.target, replicas, dry_run=True))
        return {"changes": [{"path": "spec.replicas", "from": before["spec"].get("replicas", 1),
                             "to": after["spec"]["replicas"]}]}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        done = await ctx.require_kube().scale_deployment(plan.namespace, plan.target,
                                                         plan.input.replicas, dry_run=False)  # type: ignore[attr-defined]
        return {"replicas": done["spec"]["replicas"]}


def _template(rs: Obj) -> Obj:
    """A ReplicaSet's pod template as a Deployment template: without the pod-template-hash label."""
    template = copy.deepcopy(rs["spec"]["template"])
    (template.get("metadata", {}).get("labels") or {}).pop(_HASH, None)
    return template


def _revision(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


class Rollback(_DeploymentAction):
    name = "rollback"
    risk = "high"
    summary = "Return a Deployment to a previous ReplicaSet's pod template (kubectl rollout undo)"
    Input = RollbackInput

    async def _target(self, kube: Kube, plan: Plan, deployment: Obj) -> tuple[Obj, Obj]:
        """The current ReplicaSet and the one to return to."""
        if deployment.get("spec", {}).get("paused"):
            raise Refused("the deployment is paused: resume it before rolling back (as kubectl refuses)")
        labels = deployment["spec"].get("selector", {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        uid = deployment["metadata"]["uid"]
        owned = [rs for rs in await kube.replica_sets(plan.namespace, selector)
                 if any(o.get("uid") == uid for o in rs["metadata"].get("ownerReferences") or [])]
        current = [rs for rs in owned if _template(rs) == deployment["spec"]["template"]]
        if not current:
            raise Refused("no ReplicaSet matches the deployment's current template (a rollout in progress?)")
        now = max(current, key=_revision)
        wanted = plan.input.to_revision  # type: ignore[attr-defined]
        older = [rs for rs in owned if _revision(rs) < _revision(now) and (wanted is None or _revision(rs) == wanted)]
        if not older:
            raise Refused(f"no revision {wanted} to roll back to" if wanted else "no previous revision to roll back to")
        return now, max(older, key=_revision)

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube, deployment = await self._deployment(ctx, plan)
        now, back = await self._target(kube, plan, deployment)
        return {"from_revision": _revision(now), "to_revision": _revision(back),
                "to_replica_set": back["metadata"]["name"], **await _gitops(ctx, plan, kube, deployment)}

    def _patch(self, back: Obj) -> list[Obj]:
        return [{"op": "replace", "path": "/spec/template", "value": _template(back)}]

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube, deployment = await self._deployment(ctx, plan)
        now, back = await self._target(kube, plan, deployment)
        after = await _dry(kube.patch_deployment(plan.namespace, plan.target, self._patch(back), dry_run=True,
                                                 content_type=JSON_PATCH))
        before_images = [c.get("image") for c in deployment["spec"]["template"]["spec"].get("containers", [])]
        after_images = [c.get("image") for c in after["spec"]["template"]["spec"].get("containers", [])]
        return {"changes": [{"path": "spec.template", "from": f"revision {_revision(now)}",
                             "to": f"revision {_revision(back)} ({back['metadata']['name']})"},
                            {"path": "spec.template.spec.containers[*].image", "from": before_images,
                             "to": after_images}],
                "to_replica_set": back["metadata"]["name"]}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        kube, deployment = await self._deployment(ctx, plan)
        _, back = await self._target(kube, plan, deployment)
        if back["metadata"]["name"] != dry["to_replica_set"]:
            raise Refused(f"the revisions changed since the dry-run ({dry['to_replica_set']} -> "
                          f"{back['metadata']['name']}); propose it again")
        done = await kube.patch_deployment(plan.namespace, plan.target, self._patch(back), dry_run=False,
                                           content_type=JSON_PATCH)
        return {"generation": done["metadata"].get("generation"), "to_replica_set": back["metadata"]["name"]}


class _PodAction(Action):
    kind = "kubernetes"
    Input = _NoInput

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube = ctx.require_kube()
        try:
            pod = await kube.pod(plan.namespace, plan.target)
        except KubeError as error:
            raise Refused(f"pod {plan.namespace}/{plan.target}: {error.message}") from error
        owner = next(iter(pod["metadata"].get("ownerReferences") or []), None)
        if owner is None:
            raise Refused("the pod has no owner: deleting it would not bring it back")
        siblings = [p for p in await kube.pods(plan.namespace, "") if any(
            o.get("uid") == owner.get("uid") for o in p["metadata"].get("ownerReferences") or [])]
        unavailable = sum(1 for p in siblings if not _ready(p) and p["metadata"]["name"] != plan.target) + 1
        if unavailable > plan.decision.max_unavailable:
            raise Refused(f"{unavailable} pods of {owner['kind']} {owner['name']} would be unavailable "
                          f"(policy max_unavailable {plan.decision.max_unavailable})")
        return {"uid": pod["metadata"]["uid"], "owner": f"{owner['kind']}/{owner['name']}",
                **await _gitops(ctx, plan, kube, pod)}

    async def _write(self, kube: Kube, plan: Plan, *, dry_run: bool) -> Obj:
        raise NotImplementedError

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        await _dry(self._write(ctx.require_kube(), plan, dry_run=True))
        return {"changes": [{"path": f"pod {plan.namespace}/{plan.target}", "from": "running", "to": self.name}]}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        try:
            await self._write(ctx.require_kube(), plan, dry_run=False)
        except KubeError as error:
            raise Refused(f"the API server refused: {error.message}") from error
        return {}

    async def rollout(self, ctx: Context, plan: Plan, applied: dict[str, Any]) -> Rollout:
        try:
            await ctx.require_kube().pod(plan.namespace, plan.target)
        except KubeError as error:
            if error.status == 404:
                return "done", "the pod is gone; its owner replaces it"
            raise
        return "progressing", "the pod is still terminating"


class EvictPod(_PodAction):
    name = "evict_pod"
    summary = "Evict a pod through the Eviction API, so PodDisruptionBudgets apply"

    async def _write(self, kube: Kube, plan: Plan, *, dry_run: bool) -> Obj:
        return await kube.evict(plan.namespace, plan.target, dry_run=dry_run)


class DeletePod(_PodAction):
    name = "delete_pod"
    summary = "Delete one pod so its owner starts a fresh one"

    async def _write(self, kube: Kube, plan: Plan, *, dry_run: bool) -> Obj:
        return await kube.delete_pod(plan.namespace, plan.target, dry_run=dry_run)


def _ready(obj: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in obj.get("status", {}).get("conditions") or [])


class _NodeAction(Action):
    kind = "kubernetes"
    Input = _NoInput
    unschedulable: bool

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube = ctx.require_kube()
        nodes = await kube.nodes()
        if not any(n["metadata"]["name"] == plan.target for n in nodes):
            raise Refused(f"node {plan.target} does not exist")
        healthy = [n for n in nodes if _ready(n) and not n.get("spec", {}).get("unschedulable")
                   and n["metadata"]["name"] != plan.target]
        if self.unschedulable and len(healthy) < plan.decision.min_healthy:
            raise Refused(f"only {len(healthy)} other schedulable ready nodes would be left "
                          f"(policy min_healthy {plan.decision.min_healthy})")
        return {"healthy_left": len(healthy)}

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        kube = ctx.require_kube()
        before = await kube.node(plan.target)
        await _dry(kube.patch_node(plan.target, {"spec": {"unschedulable": self.unschedulable}}, dry_run=True))
        return {"changes": [{"path": "spec.unschedulable", "from": bool(before.get("spec", {}).get("unschedulable")),
                             "to": self.unschedulable}]}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        await ctx.require_kube().patch_node(plan.target, {"spec": {"unschedulable": self.unschedulable}}, dry_run=False)
        return {}


class Cordon(_NodeAction):
    name = "cordon"
    summary = "Mark a node unschedulable (pods keep running)"
    unschedulable = True


class Uncordon(_NodeAction):
    name = "uncordon"
    risk = "low"
    summary = "Mark a node schedulable again"
    unschedulable = False
