"""Workload API semantics for remediation tests: Deployments, ReplicaSets, nodes, PDBs, PATCH
(merge and JSON patch), the scale and eviction subresources, ``dryRun=All``, field managers,
admission refusals, and a Deployment controller the test steers.

The controller runs synchronously on every real (not dry-run) write of a Deployment: a new pod
template gets a new ReplicaSet with the next revision (or an old one is adopted again, as on
rollback), and the status becomes a finished rollout unless the test called ``never_available``.
Pods are made by the test (``pods``); there is no ReplicaSet controller.

PodDisruptionBudgets work as the API server and the disruption controller make them work: the
status (``expectedPods``, ``currentHealthy``, ``desiredHealthy``, ``disruptionsAllowed``) is computed
from the matching pods and ``minAvailable`` or ``maxUnavailable`` (int or percent, rounded up); an
eviction of a pod covered by a budget with no disruption left is answered ``429 TooManyRequests``
with a ``DisruptionBudget`` cause (dry-run or not); a real one uses one disruption up, under one lock,
so two concurrent evictions never both pass; a pod covered by two budgets gets a 500; a pod that is
not running, or not ready while the budget is met, is evicted without using one up.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.k8s_fake.server import ApiError, Request, Response, status_object
from tests.k8s_fake.store import Obj, matches_labels, now_rfc3339

if TYPE_CHECKING:
    from tests.k8s_fake.cluster import FakeKubernetes

WORKLOADS = frozenset({"deployments", "replicasets", "nodes", "poddisruptionbudgets"})
REVISION = "deployment.kubernetes.io/revision"


@dataclass
class Write:
    """One write request that reached the fake (dry-run or not)."""

    method: str
    resource: str
    name: str
    subresource: str | None
    dry_run: bool
    field_manager: str | None
    content_type: str | None


@dataclass
class Workloads:
    cluster: FakeKubernetes
    writes: list[Write] = field(default_factory=list)
    no_dry_run: set[tuple[str, str]] = field(default_factory=set)
    refusals: dict[tuple[str, str], str] = field(default_factory=dict)
    stuck: set[str] = field(default_factory=set)
    hold: Any = None
    """A ``threading.Event`` real writes wait on before they answer (to kill a caller mid-apply)."""
    hold_dry_run: Any = None
    """The same for dry-run writes (to kill a caller mid-dry-run)."""
    hold_read: Any = None
    """The same for workload reads (GET), to kill a caller mid-preflight; each held one is in ``held_reads``."""
    held_reads: list[tuple[str, str]] = field(default_factory=list)

    # test controls

    def deployment(self, name: str, *, namespace: str = "default", image: str = "app:1", replicas: int = 2,
                   labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                   paused: bool = False) -> Obj:
        body = {
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"replicas": replicas, "paused": paused, "selector": {"matchLabels": {"app": name}},
                     "template": _template(name, image)},
        }
        created = self.cluster.store.create("deployments", namespace, body)
        self._reconcile(namespace, name)
        return created

    def node(self, name: str, *, ready: bool = True) -> Obj:
        return self.cluster.store.create("nodes", "", {
            "metadata": {"name": name}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        })

    def pods(self, deployment: str, count: int, *, namespace: str = "default", ready: bool = True) -> list[str]:
        """``count`` pods of the Deployment's newest ReplicaSet, running and (not) ready; their names."""
        owned = self.cluster.store.list("replicasets", namespace, f"app={deployment}")[0]
        rs = max(owned, key=lambda r: int(r["metadata"]["annotations"][REVISION]))
        names = []
        for _ in range(count):
            name = f"{rs['metadata']['name']}-{uuid.uuid4().hex[:5]}"
            self.cluster.store.create("pods", namespace, {
                "metadata": {"name": name, "labels": dict(rs["spec"]["template"]["metadata"]["labels"]),
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                                                  "name": rs["metadata"]["name"], "uid": rs["metadata"]["uid"]}]},
                "spec": copy.deepcopy(rs["spec"]["template"]["spec"]),
                "status": _pod_status(ready),
            })
            names.append(name)
        self._sync_budgets(namespace)
        return names

    def set_ready(self, pod: str, ready: bool, *, namespace: str = "default") -> None:
        self.cluster.store.update("pods", namespace, pod, lambda p: p.update(status=_pod_status(ready)))
        self._sync_budgets(namespace)

    def pdb(self, name: str, app: str, *, namespace: str = "default", min_available: int | str | None = None,
            max_unavailable: int | str | None = None) -> Obj:
        """A policy/v1 PodDisruptionBudget over the pods labelled ``app``; exactly one of the two limits."""
        assert (min_available is None) != (max_unavailable is None), "a PDB has minAvailable or maxUnavailable"
        limit = {"minAvailable": min_available} if min_available is not None else {"maxUnavailable": max_unavailable}
        self.cluster.store.create("poddisruptionbudgets", namespace, {
            "metadata": {"name": name}, "spec": {"selector": {"matchLabels": {"app": app}}, **limit}, "status": {},
        })
        self._sync_budgets(namespace)
        return self._get("poddisruptionbudgets", namespace, name)

    def never_available(self, name: str) -> None:
        """From now on the Deployment's new pods never become available."""
        self.stuck.add(name)

    def real_writes(self) -> list[Write]:
        return [w for w in self.writes if not w.dry_run]

    # request handling

    def handles(self, request: Request) -> bool:
        return (request.resource in WORKLOADS or request.method == "PATCH"
                or request.subresource in ("scale", "eviction")
                or (request.resource == "pods" and request.method == "DELETE"))

    def handle(self, request: Request) -> Response | None:
        """Answer a workload request, or None to let the cluster's generic handling answer it."""
        resource, namespace, name = request.resource, request.namespace or "", request.name or ""
        dry_run = request.query.get("dryRun") == "All"
        if request.method in ("PATCH", "POST", "DELETE", "PUT"):
            self.writes.append(Write(request.method, resource, name, request.subresource, dry_run,
                                     request.query.get("fieldManager"), request.extra.get("content_type")))
            refusal = self.refusals.get((resource, name))
            if refusal is not None:
                raise ApiError(403, f'admission webhook "policy.example.com" denied the request: {refusal}')
            if dry_run and (resource, name) in self.no_dry_run:
                raise ApiError(400, 'admission webhook "sidecar.example.com" does not support dry run')
            held = self.hold_dry_run if dry_run else self.hold
            if held is not None:
                held.wait()
        elif request.method == "GET" and (held := self.hold_read) is not None:
            self.held_reads.append((resource, name))
            held.wait()
        if request.subresource == "scale":
            return self._scale(request, namespace, name, dry_run)
        if request.subresource == "eviction" and request.method == "POST":
            return self._evict(namespace, name, dry_run)
        if request.method == "PATCH":
            return self._patch(request, namespace, name, dry_run)
        if request.resource == "pods" and request.method == "DELETE" and dry_run:
            pod = self._get("pods", namespace, name)
            return Response(body=pod)
        return None

    def _get(self, resource: str, namespace: str, name: str) -> Obj:
        obj = self.cluster.store.get(resource, namespace, name)
        if obj is None:
            raise ApiError(404, f'{resource} "{name}" not found', name=name, kind=resource)
        return obj

    def _patch(self, request: Request, namespace: str, name: str, dry_run: bool) -> Response:
        current = self._get(request.resource, namespace, name)
        content_type = request.extra.get("content_type") or ""
        if "json-patch" in content_type:
            patched = _json_patch(current, request.body or [])
        elif "merge-patch" in content_type or "strategic-merge-patch" in content_type:
            patched = _merge(copy.deepcopy(current), request.body or {})
        else:
            raise ApiError(415, f"unsupported patch content type {content_type!r}")
        if patched.get("spec") != current.get("spec"):
            patched["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        _manage(patched, request.query.get("fieldManager"))
        if dry_run:
            return Response(body=patched)

        def replace(obj: Obj) -> None:
            obj.clear()
            obj.update(patched)

        stored = self.cluster.store.update(request.resource, namespace, name, replace)
        if request.resource == "deployments":
            self._reconcile(namespace, name)
            stored = self._get("deployments", namespace, name)
        return Response(body=stored)

    def _scale(self, request: Request, namespace: str, name: str, dry_run: bool) -> Response:
        deployment = self._get("deployments", namespace, name)
        if request.method == "GET":
            return Response(body=_scale_object(deployment))
        replicas = ((request.body or {}).get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "spec.replicas: Invalid value: must be a non-negative integer")
        if dry_run:
            return Response(body=_scale_object({**deployment, "spec": {**deployment["spec"], "replicas": replicas}}))

        def scale(obj: Obj) -> None:
            obj["spec"]["replicas"] = replicas
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            _manage(obj, request.query.get("fieldManager"))

        self.cluster.store.update("deployments", namespace, name, scale)
        self._reconcile(namespace, name)
        return Response(body=_scale_object(self._get("deployments", namespace, name)))

    def _evict(self, namespace: str, name: str, dry_run: bool) -> Response:
        store = self.cluster.store
        with store.changed:  # check and use up a disruption atomically, as the API server's retry on conflict does
            pod = self._get("pods", namespace, name)
            self._sync_budgets(namespace)
            budgets = [b for b in store.list("poddisruptionbudgets", namespace)[0] if _covers(b, pod)]
            running = pod.get("status", {}).get("phase") == "Running"
            if running and len(budgets) > 1:
                raise ApiError(500, "This pod has more than one PodDisruptionBudget, which the eviction subresource "
                                    "does not support.")
            if running and budgets:
                budget, status = budgets[0], budgets[0]["status"]
                healthy_enough = status["currentHealthy"] >= status["desiredHealthy"]
                if not (_pod_ready(pod) or healthy_enough) or (_pod_ready(pod) and status["disruptionsAllowed"] < 1):
                    budget_name = budget["metadata"]["name"]
                    raise ApiError(429, "Cannot evict pod as it would violate the pod's disruption budget.",
                                   causes=[{"reason": "DisruptionBudget", "message":
                                            f"The disruption budget {budget_name} needs {status['desiredHealthy']} "
                                            f"healthy pods and has {status['currentHealthy']} currently"}])
                if not dry_run and _pod_ready(pod):
                    def use_one(b: Obj) -> None:
                        b["status"]["disruptionsAllowed"] -= 1
                        b["status"].setdefault("disruptedPods", {})[name] = now_rfc3339()

                    store.update("poddisruptionbudgets", namespace, budget["metadata"]["name"], use_one)
            if not dry_run:
                store.delete("pods", namespace, name)
                self._sync_budgets(namespace)
        return Response(201, {**status_object(201, ""), "status": "Success", "code": 201})

    # the disruption controller

    def _sync_budgets(self, namespace: str) -> None:
        store = self.cluster.store
        with store.changed:
            pods = store.list("pods", namespace)[0]
            for budget in store.list("poddisruptionbudgets", namespace)[0]:
                covered = [p for p in pods if _covers(budget, p)]
                expected = self._expected(namespace, covered)
                healthy = sum(1 for p in covered if _pod_ready(p))
                spec = budget["spec"]
                if "minAvailable" in spec:
                    desired = _scaled(spec["minAvailable"], expected)
                else:
                    desired = max(0, expected - _scaled(spec["maxUnavailable"], expected))

                def status(b: Obj, expected: int = expected, healthy: int = healthy, desired: int = desired) -> None:
                    b["status"] = {"observedGeneration": b["metadata"].get("generation", 1), "expectedPods": expected,
                                   "currentHealthy": healthy, "desiredHealthy": desired,
                                   "disruptionsAllowed": max(0, healthy - desired), "disruptedPods": {}}

                store.update("poddisruptionbudgets", namespace, budget["metadata"]["name"], status)

    def _expected(self, namespace: str, pods: list[Obj]) -> int:
        """The replicas the pods' Deployments ask for (the controller's scale), else the pods counted."""
        deployments: dict[str, int] = {}
        for pod in pods:
            for owner in pod["metadata"].get("ownerReferences") or []:
                rs = self.cluster.store.get("replicasets", namespace, owner["name"]) if owner["kind"] == "ReplicaSet" else None
                for top in (rs or {}).get("metadata", {}).get("ownerReferences") or []:
                    deployment = self.cluster.store.get("deployments", namespace, top["name"])
                    if deployment is not None:
                        deployments[top["name"]] = deployment["spec"]["replicas"]
        return sum(deployments.values()) if deployments else len(pods)

    # the Deployment controller

    def _reconcile(self, namespace: str, name: str) -> None:
        store = self.cluster.store
        deployment = self._get("deployments", namespace, name)
        template = deployment["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        owned = [rs for rs in store.list("replicasets", namespace)[0]
                 if any(o["uid"] == deployment["metadata"]["uid"] for o in rs["metadata"].get("ownerReferences", []))]
        revision = max((int(rs["metadata"]["annotations"][REVISION]) for rs in owned), default=0) + 1
        current = next((rs for rs in owned if rs["metadata"]["labels"].get("pod-template-hash") == digest), None)
        if current is None:
            labelled = copy.deepcopy(template)
            labelled["metadata"].setdefault("labels", {})["pod-template-hash"] = digest
            store.create("replicasets", namespace, {
                "metadata": {"name": f"{name}-{digest}", "labels": {"app": name, "pod-template-hash": digest},
                             "annotations": {REVISION: str(revision)},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                  "uid": deployment["metadata"]["uid"], "controller": True}]},
                "spec": {"replicas": deployment["spec"]["replicas"], "selector": {"matchLabels": {"app": name}},
                         "template": labelled},
            })
        elif int(current["metadata"]["annotations"][REVISION]) < revision - 1:
            def bump(rs: Obj) -> None:  # rolling back re-uses the old ReplicaSet under a new revision
                rs["metadata"]["annotations"][REVISION] = str(revision)
            store.update("replicasets", namespace, current["metadata"]["name"], bump)
        replicas = deployment["spec"]["replicas"]
        available = 0 if name in self.stuck else replicas

        def status(obj: Obj) -> None:
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                             "updatedReplicas": replicas, "availableReplicas": available,
                             "readyReplicas": available,
                             "conditions": [{"type": "Progressing", "status": "True",
                                             "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                                             "lastUpdateTime": now_rfc3339()}]}

        store.update("deployments", namespace, name, status)


def _pod_status(ready: bool) -> Obj:
    return {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}


def _pod_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def _covers(budget: Obj, pod: Obj) -> bool:
    labels = budget["spec"]["selector"].get("matchLabels") or {}
    return bool(labels) and matches_labels(pod, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))


def _scaled(value: int | str, total: int) -> int:
    """An int-or-percent of ``total``, rounded up (as the disruption controller does)."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(total * int(value[:-1]) / 100)
    return int(value)


def _template(name: str, image: str) -> Obj:
    return {"metadata": {"labels": {"app": name}, "annotations": {}},
            "spec": {"containers": [{"name": "app", "image": image}]}}


def _scale_object(deployment: Obj) -> Obj:
    meta = deployment["metadata"]
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "resourceVersion": meta.get("resourceVersion")},
            "spec": {"replicas": deployment["spec"]["replicas"]},
            "status": {"replicas": deployment.get("status", {}).get("replicas", 0)}}


def _manage(obj: Obj, manager: str | None) -> None:
    if not manager:
        raise ApiError(422, "fieldManager is required by this fake for every write")
    managed = [m for m in obj["metadata"].get("managedFields", []) if m["manager"] != manager]
    obj["metadata"]["managedFields"] = [*managed, {"manager": manager, "operation": "Update", "time": now_rfc3339()}]


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge treated the same: fine for maps and scalars)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def _json_patch(obj: Obj, operations: list[dict[str, Any]]) -> Obj:
    """RFC 6902, the ``add``, ``replace`` and ``remove`` operations on object paths."""
    result = copy.deepcopy(obj)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = result
        for part in parts[:-1]:
            parent = parent[part]
        if op["op"] in ("add", "replace"):
            parent[parts[-1]] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            parent.pop(parts[-1], None)
        else:
            raise ApiError(422, f"unsupported JSON patch operation {op['op']!r}")
    return result
