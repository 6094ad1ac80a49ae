"""A fake cluster: API semantics the sandbox relies on, plus a Job controller the test drives."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.k8s_fake.server import ApiError, FakeApiServer, Request, Response, status_object
from tests.k8s_fake.store import KINDS, Gone, Obj, Store, now_rfc3339
from tests.k8s_fake.workloads import Workloads

_PROPAGATION = {"Foreground", "Background", "Orphan"}


class FakeKubernetes:
    """State, request handling and lifecycle controls. Use as a context manager to serve it.

    Creating a Job creates its pod (``Pending``); the test then moves it along with ``start``,
    ``log``, ``finish``, ``exceed_deadline``, ``unschedulable`` and ``wait_container``.
    """

    def __init__(self, namespaces: tuple[str, ...] = ("default",)) -> None:
        self.store = Store()
        self.requests: list[Request] = []
        self.deletions: list[dict[str, Any]] = []
        self._logs: dict[tuple[str, str], list[str]] = {}
        self._stop = threading.Event()
        self._server = FakeApiServer(self)
        self.workloads = Workloads(self)
        for name in namespaces:
            self.store.create("namespaces", "", {"metadata": {"name": name}, "status": {"phase": "Active"}})

    # serving

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> FakeKubernetes:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self.store.changed:
            self.store.changed.notify_all()
        self._server.stop()

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig pointing the official client at this server (plain HTTP, a bearer token)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # request handling

    def handle(self, request: Request) -> Response:
        resource, namespace, name = request.resource, request.namespace, request.name
        if self.workloads.handles(request):
            answer = self.workloads.handle(request)
            if answer is not None:
                return answer
        if request.subresource == "log" and request.method == "GET":
            return self._pod_log(namespace or "", name or "", request.query)
        if request.subresource is not None:
            raise ApiError(404, f"subresource {request.subresource} not served by the fake")
        if name is None and request.method == "GET":
            if request.query.get("watch") in ("true", "1"):
                return self._watch(request)
            items, rv = self.store.list(
                resource, namespace, request.query.get("labelSelector"), request.query.get("fieldSelector")
            )
            api_version, kind = KINDS[resource]
            return Response(
                body={
                    "kind": f"{kind}List",
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(rv)},
                    "items": items,
                }
            )
        if name is None and request.method == "POST":
            return self._create(resource, namespace or "", request.body or {})
        if name is not None and request.method == "GET":
            obj = self.store.get(resource, namespace or "", name)
            if obj is None:
                raise ApiError(404, f'{resource} "{name}" not found', name=name, kind=resource)
            return Response(body=obj)
        if name is not None and request.method == "DELETE":
            return self._delete(resource, namespace or "", name, request)
        raise ApiError(405, f"{request.method} not allowed on {request.path}")

    def _create(self, resource: str, namespace: str, body: Obj) -> Response:
        if resource != "namespaces" and self.store.get("namespaces", "", namespace) is None:
            raise ApiError(404, f'namespaces "{namespace}" not found', name=namespace, kind="namespaces")
        if body.get("kind") not in (None, KINDS[resource][1]):
            raise ApiError(400, f"body kind {body.get('kind')!r} does not match {resource}")
        body.pop("status", None)
        with self.store.changed:  # a Job and its pod appear together, as far as any reader can tell
            try:
                created = self.store.create(resource, namespace, body)
            except KeyError:
                name = body["metadata"]["name"]
                raise ApiError(
                    409, f'{resource}.batch "{name}" already exists', name=name, kind=resource
                ) from None
            if resource == "jobs":
                self._start_job(created)
                created = self.store.get("jobs", namespace, created["metadata"]["name"]) or created
        return Response(201, created)

    def _delete(self, resource: str, namespace: str, name: str, request: Request) -> Response:
        options = request.body or {}
        policy = request.query.get("propagationPolicy") or options.get("propagationPolicy")
        if policy is not None and policy not in _PROPAGATION:
            raise ApiError(400, f"propagationPolicy: unsupported value {policy!r}")
        if self.store.get(resource, namespace, name) is None:
            raise ApiError(404, f'{resource} "{name}" not found', name=name, kind=resource)
        self.deletions.append({"resource": resource, "name": name, "propagationPolicy": policy})
        # batch/v1 Jobs still default to orphaning their pods when no policy is given.
        if resource == "jobs" and policy in ("Foreground", "Background"):
            for pod in self.pods_of(name, namespace):
                self.store.delete("pods", namespace, pod["metadata"]["name"])
        self.store.delete(resource, namespace, name)
        return Response(body={**status_object(200, ""), "status": "Success", "reason": "", "code": 200})

    def _watch(self, request: Request) -> Response:
        resource, namespace = request.resource, request.namespace
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        timeout_s = float(request.query.get("timeoutSeconds") or 300)
        since = request.query.get("resourceVersion") or "0"
        generation = self.store.gone_generation

        def stream() -> Iterator[bytes]:
            cursor = int(since)
            if cursor == 0:
                items, cursor = self.store.list(resource, namespace, labels, fields)
                for item in items:
                    yield _line({"type": "ADDED", "object": item})
            try:
                for event in self.store.events_since(
                    resource, namespace, cursor, labels, fields, generation, self._stop, timeout_s
                ):
                    yield _line({"type": event.type, "object": event.object})
            except Gone as gone:
                yield _line({"type": "ERROR", "object": status_object(410, str(gone))})

        return Response(stream=stream())

    def _pod_log(self, namespace: str, name: str, query: dict[str, str]) -> Response:
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            raise ApiError(404, f'pods "{name}" not found', name=name, kind="pods")
        if not any("running" in s["state"] or "terminated" in s["state"] for s in _statuses(pod)):
            raise ApiError(400, f'container "task" in pod "{name}" is waiting to start: PodInitializing')
        lines = self._logs.setdefault((namespace, name), [])
        if query.get("follow") not in ("true", "1"):
            return Response(body="".join(f"{line}\n" for line in lines).encode(), content_type="text/plain")

        def stream() -> Iterator[bytes]:
            sent = 0
            while not self._stop.is_set():
                with self.store.changed:
                    current = self.store.get("pods", namespace, name)
                    pending = lines[sent:]
                    done = current is None or all("terminated" in s["state"] for s in _statuses(current))
                    if not pending and not done:
                        self.store.changed.wait(timeout=0.2)
                        continue
                sent += len(pending)
                if pending:
                    yield "".join(f"{line}\n" for line in pending).encode()
                if done and sent == len(lines):
                    return

        return Response(stream=stream(), content_type="text/plain")

    # the job controller

    def _start_job(self, job: Obj) -> None:
        meta, namespace = job["metadata"], job["metadata"]["namespace"]
        template = job["spec"]["template"]
        uid = meta["uid"]
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": meta["name"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": uid,
            "batch.kubernetes.io/controller-uid": uid,
        }
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": meta["name"],
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        pod = {
            "metadata": {
                "name": f"{meta['name']}-{uuid.uuid4().hex[:5]}",
                "labels": labels,
                "ownerReferences": [owner],
            },
            "spec": json.loads(json.dumps(template["spec"])),
            "status": {},
        }
        created = self.store.create("pods", namespace, pod)
        self.store.update(
            "pods",
            namespace,
            created["metadata"]["name"],
            lambda p: p.update(status={"phase": "Pending", "conditions": []}),
        )
        self.store.update(
            "jobs",
            namespace,
            meta["name"],
            lambda j: j.update(
                status={
                    "active": 1,
                    "ready": 0,
                    "terminating": 0,
                    "startTime": now_rfc3339(),
                    "uncountedTerminatedPods": {},
                }
            ),
        )

    def pods_of(self, job: str, namespace: str = "devart-sandbox") -> list[Obj]:
        return self.store.list("pods", namespace, f"batch.kubernetes.io/job-name={job}")[0]

    def jobs(self, namespace: str = "devart-sandbox") -> list[Obj]:
        return self.store.list("jobs", namespace)[0]

    def _pod_name(self, job: str, namespace: str) -> str:
        pods = self.pods_of(job, namespace)
        if not pods:
            raise LookupError(f"job {job} has no pod")
        return pods[0]["metadata"]["name"]

    def _set_containers(
        self, job: str, namespace: str, phase: str, state: dict[str, Any], conditions: list[dict[str, Any]]
    ) -> None:
        def mutate(pod: Obj) -> None:
            main = [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "ready": "running" in state,
                    "restartCount": 0,
                    "started": "running" in state,
                    "state": state,
                }
                for c in pod["spec"]["containers"]
            ]
            init = [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "ready": True,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                }
                for c in pod["spec"].get("initContainers", [])
            ]
            pod["status"] = {
                "phase": phase,
                "conditions": conditions,
                "containerStatuses": main,
                "initContainerStatuses": init,
                "startTime": now_rfc3339(),
                "qosClass": "Guaranteed",
            }

        self.store.update("pods", namespace, self._pod_name(job, namespace), mutate)

    def start(self, job: str, namespace: str = "devart-sandbox") -> None:
        """The pod is scheduled, its init containers completed, and the task container runs."""
        ready = [
            {"type": t, "status": "True", "lastTransitionTime": now_rfc3339()}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        self._set_containers(job, namespace, "Running", {"running": {"startedAt": now_rfc3339()}}, ready)
        self.store.update("jobs", namespace, job, lambda j: j["status"].update(ready=1))

    def log(self, job: str, *lines: str, namespace: str = "devart-sandbox") -> None:
        with self.store.changed:
            self._logs.setdefault((namespace, self._pod_name(job, namespace)), []).extend(lines)
            self.store.changed.notify_all()

    def wait_container(
        self, job: str, reason: str, message: str = "", namespace: str = "devart-sandbox"
    ) -> None:
        """The pod is scheduled but the container waits (ErrImagePull, CreateContainerConfigError, ...)."""
        scheduled = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}]
        self._set_containers(
            job, namespace, "Pending", {"waiting": {"reason": reason, "message": message}}, scheduled
        )

    def unschedulable(self, job: str, namespace: str = "devart-sandbox") -> None:
        message = "0/3 nodes are available: 3 Insufficient memory."
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": now_rfc3339(),
        }
        pod = self._pod_name(job, namespace)
        self.store.update(
            "pods", namespace, pod, lambda p: p.update(status={"phase": "Pending", "conditions": [condition]})
        )
        self.store.create(
            "events",
            namespace,
            {
                "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:8]}"},
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace},
                "reason": "FailedScheduling",
                "message": message,
                "type": "Warning",
            },
        )

    def finish(
        self, job: str, exit_code: int = 0, reason: str | None = None, namespace: str = "devart-sandbox"
    ) -> None:
        """The task container exits; the Job completes or fails (backoffLimit 0)."""
        reason = reason or ("Completed" if exit_code == 0 else "Error")
        terminated = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": now_rfc3339(),
                "finishedAt": now_rfc3339(),
            }
        }
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self._set_containers(job, namespace, phase, terminated, [])
        if exit_code == 0:
            conditions = [
                _condition(
                    "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"
                ),
                _condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ]
            counts = {"succeeded": 1, "completionTime": now_rfc3339()}
        else:
            conditions = [
                _condition(
                    "FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                ),
                _condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            ]
            counts = {"failed": 1}
        self.store.update(
            "jobs",
            namespace,
            job,
            lambda j: j["status"].update(active=0, ready=0, conditions=conditions, **counts),
        )

    def exceed_deadline(self, job: str, namespace: str = "devart-sandbox") -> None:
        """activeDeadlineSeconds passed: the controller kills the pod and marks the Job failed."""
        message = "Job was active longer than specified deadline"
        for pod in self.pods_of(job, namespace):
            self.store.delete("pods", namespace, pod["metadata"]["name"])
        conditions = [
            _condition("FailureTarget", "DeadlineExceeded", message),
            _condition("Failed", "DeadlineExceeded", message),
        ]
        self.store.update(
            "jobs",
            namespace,
            job,
            lambda j: j["status"].update(active=0, ready=0, failed=1, conditions=conditions),
        )


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now_rfc3339(),
        "lastTransitionTime": now_rfc3339(),
    }


def _statuses(pod: Obj) -> list[dict[str, Any]]:
    return pod.get("status", {}).get("containerStatuses") or []


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"
