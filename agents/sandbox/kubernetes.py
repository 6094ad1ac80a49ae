"""Kubernetes sandbox: one hardened Job per attempt, watched to an outcome while its logs stream.

The Job is the source of truth for the outcome (its ``Complete``/``Failed`` conditions); the pod
supplies the details (exit code, ``OOMKilled``, stuck scheduling or image pulls). Watches run in
threads of their own and feed an asyncio queue; a ``410 Gone`` makes them re-list and re-watch,
and a periodic read of the Job and its pod is the backstop for anything a watch missed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import math
import posixpath
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sandbox.base import LogSink, SandboxResult, SandboxSpec
from agents.sdk.telemetry import sandbox_span

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
TASK_ID = "devart.io/task-id"
ATTEMPT = "devart.io/attempt"
TASK_CONTAINER = "task"

_Json = dict[str, Any]
_QUEUE_EVENT = tuple[str, Any]
# Waiting reasons that never resolve by themselves fail at once; the others get waiting_timeout_s.
_FATAL_WAITING = {"InvalidImageName", "ErrImageNeverPull"}
_STUCK_WAITING = {"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError"}
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_REMOTE_REPO = re.compile(r"^(https?|ssh|git)://|^[\w.-]+@[\w.-]+:")


class KubernetesSandboxSettings(BaseSettings):
    """Where sandbox Jobs run and the limits every one of them gets."""

    model_config = SettingsConfigDict(env_prefix="DEVART_K8S_", extra="ignore")

    namespace: str = Field(default="devart-sandbox", description="namespace the sandbox Jobs are created in")
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig file to use; unset means the in-cluster service account"
    )
    context: str | None = Field(
        default=None, description="kubeconfig context; unset means its current context"
    )
    default_image: str = Field(default="python:3.11-slim", description="image used when a spec names none")
    allowed_images: list[str] = Field(
        default_factory=lambda: ["python:3.11-slim"],
        description="shell-style patterns (fnmatch) an image must match, e.g. 'ghcr.io/acme/*'",
    )
    default_cpu: str = Field(default="1", description="CPU request and limit when the spec sets no resources")
    default_memory: str = Field(
        default="512Mi", description="memory request and limit when the spec sets none"
    )
    max_cpu: str = Field(default="4", description="largest CPU a spec may ask for")
    max_memory: str = Field(default="8Gi", description="largest memory a spec may ask for")
    workspace_size: str = Field(default="2Gi", description="sizeLimit of the /workspace emptyDir")
    tmp_size: str = Field(default="256Mi", description="sizeLimit of the /tmp emptyDir")
    ttl_seconds_after_finished: int = Field(
        default=600,
        ge=0,
        description="seconds a finished Job (and its pod) stays before Kubernetes deletes it",
    )
    unschedulable_timeout_s: float = Field(
        default=300, gt=0, description="how long a pod may stay unschedulable before the attempt fails"
    )
    waiting_timeout_s: float = Field(
        default=180,
        gt=0,
        description="how long a container may wait on an image pull or its config before failing",
    )
    reconcile_interval_s: float = Field(
        default=15, gt=0, description="period of the direct read of the Job and pod backing up the watches"
    )
    watch_timeout_s: int = Field(default=300, gt=0, description="server-side timeout of one watch request")
    deadline_grace_s: float = Field(
        default=60, ge=0, description="extra time past timeout_s before the sandbox deletes a Job itself"
    )
    log_drain_timeout_s: float = Field(
        default=10, gt=0, description="how long to wait for the end of the log stream once the Job finished"
    )
    tail_chars: int = Field(default=65536, gt=0, description="characters of output kept in the result's tail")
    git_image: str = Field(
        default="alpine/git:2.45.2", description="image of the init container checking out repo"
    )
    run_as_user: int = Field(
        default=65532, gt=0, description="non-root uid and gid every sandbox container runs as"
    )
    extra_labels: dict[str, str] = Field(
        default_factory=dict, description="labels added to every Job and pod"
    )
    connection_pool_size: int = Field(
        default=32,
        gt=0,
        description="HTTP connections to the API server (each running Job holds up to three)",
    )

    @field_validator("default_cpu", "default_memory", "max_cpu", "max_memory", "workspace_size", "tmp_size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        parse_quantity(value)
        return value

    @field_validator("extra_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
                raise ValueError(f"invalid label {key}={label!r}")
        return value


class SandboxSpecError(ValueError):
    """A spec the Kubernetes sandbox refuses; the message names the offending field."""


def job_name(task_id: str, attempt: int) -> str:
    """Deterministic, DNS-safe Job name: the same (task, attempt) always maps to the same Job."""
    slug = re.sub(r"[^a-z0-9]+", "-", task_id.lower()).strip("-")[:30].strip("-")
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:8]
    return "-".join(part for part in ("devart", slug, digest, f"a{attempt}") if part)


def _label_value(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def _labels(spec: SandboxSpec, settings: KubernetesSandboxSettings) -> dict[str, str]:
    labels = dict(settings.extra_labels)
    for key, value in spec.labels.items():
        full = key if "/" in key else f"devart.io/{key.replace('_', '-')}"
        if not _LABEL_KEY.match(full):
            raise SandboxSpecError(f"labels.{key}: not a valid Kubernetes label key")
        labels[full] = _label_value(value)
    labels.update(
        {
            MANAGED_BY: "devart",
            "app.kubernetes.io/component": "sandbox",
            TASK_ID: _label_value(spec.task_id),
            ATTEMPT: str(spec.attempt),
        }
    )
    return labels


def _image(spec: SandboxSpec, settings: KubernetesSandboxSettings) -> str:
    image = spec.image or settings.default_image
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in settings.allowed_images):
        raise SandboxSpecError(f"image: {image!r} is not in the allowed images {settings.allowed_images}")
    return image


def _resources(spec: SandboxSpec, settings: KubernetesSandboxSettings) -> _Json:
    if "resources" in spec.model_fields_set:
        cpu, memory = spec.resources.cpu, spec.resources.memory
    else:
        cpu, memory = settings.default_cpu, settings.default_memory
    for field, value, ceiling in (("cpu", cpu, settings.max_cpu), ("memory", memory, settings.max_memory)):
        try:
            amount = parse_quantity(value)
        except ValueError:
            raise SandboxSpecError(f"resources.{field}: {value!r} is not a Kubernetes quantity") from None
        if amount <= 0 or amount > parse_quantity(ceiling):
            raise SandboxSpecError(f"resources.{field}: {value} is outside (0, {ceiling}]")
    # Requests equal limits: the pod gets the Guaranteed QoS class and is not evicted first.
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


def _command(spec: SandboxSpec) -> list[str]:
    if (spec.command is None) == (spec.script is None):
        raise SandboxSpecError("command/script: exactly one of them must be given")
    if spec.command is not None:
        if not spec.command:
            raise SandboxSpecError("command: must not be empty")
        return list(spec.command)
    return ["/bin/sh", "-eu", "-c", spec.script or ""]


def _workdir(spec: SandboxSpec) -> str:
    path = posixpath.normpath(posixpath.join("/workspace", spec.workdir))
    if path != "/workspace" and not path.startswith("/workspace/"):
        raise SandboxSpecError(f"workdir: {spec.workdir!r} leaves the workspace")
    return path


def _env(spec: SandboxSpec) -> list[_Json]:
    env: list[_Json] = []
    literal = {"HOME": "/tmp", **spec.env}
    if spec.traceparent:
        literal["TRACEPARENT"] = spec.traceparent
    for name, value in literal.items():
        if not _ENV_NAME.match(name):
            raise SandboxSpecError(f"env.{name}: not a valid environment variable name")
        env.append({"name": name, "value": value})
    for name, ref in spec.secret_env.items():
        if not _ENV_NAME.match(name):
            raise SandboxSpecError(f"secret_env.{name}: not a valid environment variable name")
        if name in literal:
            raise SandboxSpecError(f"secret_env.{name}: also set as a literal env variable")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _container_security() -> _Json:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _checkout(spec: SandboxSpec, settings: KubernetesSandboxSettings, resources: _Json) -> list[_Json]:
    if spec.repo is None:
        return []
    if not _REMOTE_REPO.match(spec.repo):
        raise SandboxSpecError(f"repo: {spec.repo!r} must be a remote git URL for the Kubernetes sandbox")
    # Values travel as env variables and are quoted, so a hostile ref cannot inject shell.
    script = (
        'git clone --quiet -- "$DEVART_REPO" /workspace\n'
        'if [ -n "$DEVART_REF" ]; then git -C /workspace checkout --quiet "$DEVART_REF"; fi\n'
    )
    return [
        {
            "name": "checkout",
            "image": settings.git_image,
            "command": ["/bin/sh", "-eu", "-c", script],
            "env": [
                {"name": "HOME", "value": "/tmp"},
                {"name": "DEVART_REPO", "value": spec.repo},
                {"name": "DEVART_REF", "value": spec.ref or ""},
            ],
            "resources": resources,
            "securityContext": _container_security(),
            "volumeMounts": [
                {"name": "workspace", "mountPath": "/workspace"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
    ]


def build_job_manifest(spec: SandboxSpec, settings: KubernetesSandboxSettings) -> _Json:
    """The batch/v1 Job running ``spec``; raises SandboxSpecError naming the field it refuses."""
    labels = _labels(spec, settings)
    annotations = {TASK_ID: spec.task_id, ATTEMPT: str(spec.attempt)}
    resources = _resources(spec, settings)
    uid = settings.run_as_user
    task = {
        "name": TASK_CONTAINER,
        "image": _image(spec, settings),
        "command": _command(spec),
        "workingDir": _workdir(spec),
        "env": _env(spec),
        "resources": resources,
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "workspace", "mountPath": "/workspace"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: _Json = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [task],
        "volumes": [
            {"name": "workspace", "emptyDir": {"sizeLimit": settings.workspace_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size}},
        ],
    }
    init = _checkout(spec, settings, resources)
    if init:
        pod_spec["initContainers"] = init
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.task_id, spec.attempt),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": max(1, math.ceil(spec.timeout_s)),
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def build_network_policy(settings: KubernetesSandboxSettings) -> _Json:
    """Default-deny for every pod of the sandbox namespace: no ingress, egress to cluster DNS only."""
    dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "sandbox-default-deny",
            "namespace": settings.namespace,
            "labels": {MANAGED_BY: "devart"},
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                            },
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": dns_ports,
                }
            ],
        },
    }


def _api_client(settings: KubernetesSandboxSettings) -> client.ApiClient:
    configuration = client.Configuration()
    if settings.kubeconfig is None:
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(
            config_file=str(settings.kubeconfig), context=settings.context, client_configuration=configuration
        )
    configuration.connection_pool_maxsize = settings.connection_pool_size
    return client.ApiClient(configuration)


def _iter_lines(response: Any) -> Iterator[str]:
    """Lines of a streamed urllib3 response, whatever the chunking."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace").rstrip("\r")
    if pending:
        yield pending.decode(errors="replace").rstrip("\r")


def _conditions(job: _Json | None) -> dict[str, _Json]:
    if job is None:
        return {}
    found = (job.get("status") or {}).get("conditions") or []
    return {c["type"]: c for c in found if c.get("status") == "True"}


def _container_status(pod: _Json | None, key: str = "containerStatuses") -> list[_Json]:
    return ((pod or {}).get("status") or {}).get(key) or []


class _Stream(threading.Thread):
    """A daemon thread pushing what one blocking stream yields into the run's asyncio queue."""

    def __init__(self, name: str, push: Callable[[_QUEUE_EVENT], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._push = push
        self._stopping = threading.Event()
        self._response: Any = None

    def stop(self) -> None:
        self._stopping.set()
        if self._response is not None:
            _interrupt(self._response)

    def _open(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._response = call(*args, _preload_content=False, **kwargs)
        if self._stopping.is_set():
            _interrupt(self._response)
        return self._response


def _interrupt(response: Any) -> None:
    """Unblock a thread reading ``response``; a response already read to its end needs nothing."""
    try:
        response.shutdown()
    except (RuntimeError, ValueError):
        pass


class _WatchStream(_Stream):
    """List, then watch from the list's resourceVersion; a 410 Gone starts over with a fresh list."""

    def __init__(
        self,
        kind: str,
        list_call: Callable[..., Any],
        namespace: str,
        selectors: dict[str, str],
        timeout_s: int,
        push: Callable[[_QUEUE_EVENT], None],
    ) -> None:
        super().__init__(f"devart-watch-{kind}", push)
        self._kind, self._list, self._namespace = kind, list_call, namespace
        self._selectors, self._timeout_s = selectors, timeout_s

    def run(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listing = json.loads(self._open(self._list, self._namespace, **self._selectors).data)
                    version = listing["metadata"]["resourceVersion"]
                    self._push((f"{self._kind}-sync", listing["items"]))
                version = self._watch(version)
            except ApiException as error:
                if error.status == 410:
                    version = None
                    continue
                log.warning("watch of %s failed (%s); retrying", self._kind, error.status)
                self._stopping.wait(1)
            except Exception as error:  # noqa: BLE001 - a dropped connection must not end the watch
                if not self._stopping.is_set():
                    log.warning("watch of %s interrupted: %s; resuming", self._kind, error)
                    self._stopping.wait(1)

    def _watch(self, version: str) -> str | None:
        response = self._open(
            self._list,
            self._namespace,
            watch=True,
            resource_version=version,
            timeout_seconds=self._timeout_s,
            allow_watch_bookmarks=True,
            **self._selectors,
        )
        for line in _iter_lines(response):
            if not line.strip():
                continue
            event = json.loads(line)
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                if obj.get("code") == 410:
                    log.info("watch of %s expired (410 Gone); re-listing", self._kind)
                    return None
                raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
            version = obj["metadata"]["resourceVersion"]
            if event["type"] != "BOOKMARK":
                self._push((self._kind, (event["type"], obj)))
        return version


class _LogStream(_Stream):
    """Follows the task container's log until it ends."""

    def __init__(
        self, core: client.CoreV1Api, namespace: str, pod: str, push: Callable[[_QUEUE_EVENT], None]
    ) -> None:
        super().__init__(f"devart-log-{pod}", push)
        self._core, self._namespace, self._pod = core, namespace, pod

    def run(self) -> None:
        try:
            response = self._open(
                self._core.read_namespaced_pod_log,
                self._pod,
                self._namespace,
                container=TASK_CONTAINER,
                follow=True,
            )
            for line in _iter_lines(response):
                self._push(("log", line))
        except Exception as error:  # noqa: BLE001 - the outcome does not depend on the log
            if not self._stopping.is_set():
                log.warning("log stream of %s ended early: %s", self._pod, error)
        finally:
            self._push(("log-end", None))


class _Tail:
    def __init__(self, limit: int) -> None:
        self._lines: deque[str] = deque()
        self._size, self._limit = 0, limit
        self.truncated = False

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        while self._size > self._limit and self._lines:
            self._size -= len(self._lines.popleft()) + 1
            self.truncated = True

    def text(self) -> str:
        return "\n".join(self._lines)


class _JobRun:
    """Follows one Job from creation (or adoption) to its outcome."""

    def __init__(
        self, sandbox: KubernetesSandbox, name: str, spec: SandboxSpec, on_log: LogSink, cancel: asyncio.Event
    ) -> None:
        self._sandbox, self._settings = sandbox, sandbox.settings
        self._name, self._spec, self._on_log, self._cancel = name, spec, on_log, cancel
        self._queue: asyncio.Queue[_QUEUE_EVENT] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._job: _Json | None = None
        self._job_read = False
        """Whether the Job has been read (listed, watched or got) since this run created or adopted it."""
        self._pods: dict[str, _Json] = {}
        self._tail = _Tail(self._settings.tail_chars)
        self._log_stream: _LogStream | None = None
        self._log_done = asyncio.Event()
        self._waiting_since: dict[str, float] = {}
        self._started = time.monotonic()
        self._notes: list[str] = []

    def _push(self, item: _QUEUE_EVENT) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    async def follow(self) -> SandboxResult:
        sandbox, namespace = self._sandbox, self._settings.namespace
        streams: list[_Stream] = [
            _WatchStream(
                "job",
                sandbox.batch.list_namespaced_job,
                namespace,
                {"field_selector": f"metadata.name={self._name}"},
                self._settings.watch_timeout_s,
                self._push,
            ),
            _WatchStream(
                "pod",
                sandbox.core.list_namespaced_pod,
                namespace,
                {"label_selector": f"job-name={self._name}"},
                self._settings.watch_timeout_s,
                self._push,
            ),
        ]
        for stream in streams:
            stream.start()
        cancelled = asyncio.ensure_future(self._cancel.wait())
        next_reconcile = time.monotonic() + self._settings.reconcile_interval_s
        try:
            while True:
                if self._cancel.is_set():
                    await sandbox.delete_job(self._name)
                    return self._result("cancelled", reason="cancelled")
                verdict = await self._verdict()
                if verdict is not None:
                    return await self._finish(verdict)
                now = time.monotonic()
                if now >= next_reconcile:
                    await self._reconcile()
                    next_reconcile = now + self._settings.reconcile_interval_s
                    continue
                getter = asyncio.ensure_future(self._queue.get())
                await asyncio.wait(
                    {getter, cancelled},
                    timeout=self._wake_in(next_reconcile - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                # Cancelling a queue getter that has not returned leaves its item in the queue.
                getter.cancel()
                await asyncio.wait({getter})
                if not getter.cancelled():
                    await self._apply(getter.result())
        finally:
            cancelled.cancel()
            for stream in [*streams, *([self._log_stream] if self._log_stream else [])]:
                stream.stop()

    def _wake_in(self, until_reconcile: float) -> float:
        """Sleep until the next reconcile or the next stuck-state deadline, whichever is first."""
        now, wake = time.monotonic(), until_reconcile
        for reason, since in self._waiting_since.items():
            limit = (
                self._settings.unschedulable_timeout_s
                if reason == "Unschedulable"
                else self._settings.waiting_timeout_s
            )
            wake = min(wake, since + limit - now)
        wake = min(wake, self._started + self._spec.timeout_s + self._settings.deadline_grace_s - now)
        return max(wake, 0.01)

    async def _apply(self, item: _QUEUE_EVENT) -> None:
        kind, payload = item
        if kind == "job-sync":
            self._set_job(payload[0] if payload else None)
        elif kind == "job":
            event, obj = payload
            self._set_job(None if event == "DELETED" else obj)
        elif kind == "pod-sync":
            self._pods = {p["metadata"]["name"]: p for p in payload}
        elif kind == "pod":
            event, obj = payload
            if event == "DELETED":
                self._pods.pop(obj["metadata"]["name"], None)
            else:
                self._pods[obj["metadata"]["name"]] = obj
        elif kind == "log":
            self._tail.add(payload)
            await self._on_log("stdout", payload)
        elif kind == "log-end":
            self._log_done.set()
        self._maybe_follow_logs()

    def _set_job(self, job: _Json | None) -> None:
        self._job_read = True
        self._job = job

    def _pod(self) -> _Json | None:
        if not self._pods:
            return None
        return max(self._pods.values(), key=lambda p: p["metadata"].get("creationTimestamp", ""))

    def _maybe_follow_logs(self) -> None:
        pod = self._pod()
        if self._log_stream is not None or pod is None:
            return
        states = [s.get("state") or {} for s in _container_status(pod) if s.get("name") == TASK_CONTAINER]
        if any("running" in state or "terminated" in state for state in states):
            self._log_stream = _LogStream(
                self._sandbox.core, self._settings.namespace, pod["metadata"]["name"], self._push
            )
            self._log_stream.start()

    async def _reconcile(self) -> None:
        job, pods = await self._sandbox.read_job(self._name)
        self._set_job(job)
        self._pods = {p["metadata"]["name"]: p for p in pods}
        self._maybe_follow_logs()

    async def _verdict(self) -> SandboxResult | None:
        conditions = _conditions(self._job)
        failed = conditions.get("Failed") or conditions.get("FailureTarget")
        if conditions.keys() & {"Complete", "SuccessCriteriaMet"} or failed is not None:
            # The pod's own watch may lag behind the Job's: read it for exit details and logs.
            _, pods = await self._sandbox.read_job(self._name)
            self._pods = {p["metadata"]["name"]: p for p in pods}
        if conditions.keys() & {"Complete", "SuccessCriteriaMet"}:
            return self._result("succeeded", exit_code=0)
        if failed is not None:
            if failed.get("reason") == "DeadlineExceeded":
                return self._result("timed_out", reason="DeadlineExceeded")
            return self._failure(failed.get("reason"))
        if self._job is None and self._job_read:  # this run created or adopted it: absent means deleted
            return self._result("cancelled", reason="JobDeleted")
        stuck = self._stuck()
        if stuck is not None:
            await self._sandbox.delete_job(self._name)
            return self._result("failed", reason=stuck)
        if time.monotonic() - self._started > self._spec.timeout_s + self._settings.deadline_grace_s:
            await self._sandbox.delete_job(self._name)
            return self._result("timed_out", reason="DeadlineExceeded")
        return None

    def _stuck(self) -> str | None:
        """The reason of a pod stuck past its setting (unschedulable, image pull, config), else None."""
        pod, now = self._pod(), time.monotonic()
        current: dict[str, str] = {}
        for condition in ((pod or {}).get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                current["Unschedulable"] = condition.get("message", "")
        for status in _container_status(pod, "initContainerStatuses") + _container_status(pod):
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _FATAL_WAITING | _STUCK_WAITING:
                current[waiting["reason"]] = waiting.get("message", "")
        self._waiting_since = {r: self._waiting_since.get(r, now) for r in current}
        for reason, since in self._waiting_since.items():
            limit = (
                self._settings.unschedulable_timeout_s
                if reason == "Unschedulable"
                else self._settings.waiting_timeout_s
            )
            if reason in _FATAL_WAITING or now - since >= limit:
                self._notes.append(f"{reason}: {current[reason]}".rstrip(": "))
                return reason
        return None

    def _failure(self, job_reason: str | None) -> SandboxResult:
        pod = self._pod()
        for status in _container_status(pod, "initContainerStatuses"):
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode", 0) != 0:
                return self._result(
                    "failed",
                    exit_code=terminated["exitCode"],
                    reason=f"CheckoutFailed: {terminated.get('reason', 'Error')}",
                )
        for status in _container_status(pod):
            terminated = (status.get("state") or {}).get("terminated") or {}
            if status.get("name") == TASK_CONTAINER and terminated:
                return self._result(
                    "failed",
                    exit_code=terminated.get("exitCode"),
                    reason=terminated.get("reason") or job_reason,
                )
        return self._result("failed", reason=job_reason)

    async def _finish(self, result: SandboxResult) -> SandboxResult:
        """Let the log stream catch up before the result is final (the TTL controller will drop the pod)."""
        self._maybe_follow_logs()
        if self._log_stream is None:
            return result
        deadline = time.monotonic() + self._settings.log_drain_timeout_s
        while not self._log_done.is_set() and time.monotonic() < deadline:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            await self._apply(item)
        return result.model_copy(
            update={"stdout_tail": self._tail.text(), "output_truncated": self._tail.truncated}
        )

    def _result(
        self, outcome: str, *, exit_code: int | None = None, reason: str | None = None
    ) -> SandboxResult:
        return SandboxResult(
            outcome=outcome,  # type: ignore[arg-type]
            exit_code=exit_code,
            reason=reason,
            duration_s=time.monotonic() - self._started,
            stdout_tail=self._tail.text(),
            stderr_tail="\n".join(self._notes),
            output_truncated=self._tail.truncated,
        )


class KubernetesSandbox:
    """Runs each attempt as a Job in ``settings.namespace`` through its own API client.

    Kubernetes merges a container's stdout and stderr into one log, so every line reaches
    ``on_log`` as ``stdout``; ``stderr_tail`` carries the sandbox's own diagnostics (why a pod was
    stuck). Artifacts are not collected from pods.
    """

    def __init__(self, settings: KubernetesSandboxSettings) -> None:
        self.settings = settings
        self._api = _api_client(settings)
        self.batch = client.BatchV1Api(self._api)
        self.core = client.CoreV1Api(self._api)

    async def aclose(self) -> None:
        """Close the API client's connections."""
        await asyncio.to_thread(self._api.close)

    async def __aenter__(self) -> KubernetesSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, spec: SandboxSpec, *, on_log: LogSink, cancel: asyncio.Event) -> SandboxResult:
        """Create (or adopt) the attempt's Job and follow it, under a ``sandbox.run`` span whose
        context the pod gets as ``TRACEPARENT``."""
        with sandbox_span(
            "kubernetes", task_id=spec.task_id, attempt=spec.attempt, traceparent=spec.traceparent
        ) as run:
            spec = spec.model_copy(update={"traceparent": run.traceparent})
            manifest = build_job_manifest(spec, self.settings)
            name = manifest["metadata"]["name"]
            run.span.set_attribute("k8s.job.name", name)
            try:
                await asyncio.to_thread(
                    self.batch.create_namespaced_job, self.settings.namespace, manifest, _preload_content=False
                )
                log.info("created job %s for task %s attempt %s", name, spec.task_id, spec.attempt)
            except ApiException as error:
                if error.status != 409:
                    raise
                log.info("job %s already exists; adopting it", name)
            run.launched()
            result = await _JobRun(self, name, spec, on_log, cancel).follow()
            run.finished(result.outcome, result.exit_code)
            return result

    async def read_job(self, name: str) -> tuple[_Json | None, list[_Json]]:
        """The Job (None when gone) and its pods, read directly from the API server."""
        namespace = self.settings.namespace
        try:
            response = await asyncio.to_thread(
                self.batch.read_namespaced_job, name, namespace, _preload_content=False
            )
            job = json.loads(response.data)
        except ApiException as error:
            if error.status != 404:
                raise
            job = None
        response = await asyncio.to_thread(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"job-name={name}",
            _preload_content=False,
        )
        return job, json.loads(response.data)["items"]

    async def delete_job(self, name: str, policy: str = "Foreground") -> bool:
        """Delete a Job and, through the propagation policy, its pods. False when it was already gone."""
        try:
            await asyncio.to_thread(
                self.batch.delete_namespaced_job,
                name,
                self.settings.namespace,
                propagation_policy=policy,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status != 404:
                raise
            return False
        log.info("deleted job %s (%s)", name, policy)
        return True

    async def sweep_finished_jobs(self, is_terminal: Callable[[str], Awaitable[bool]]) -> list[str]:
        """Delete every devart Job whose task is already terminal; returns the deleted Job names."""
        response = await asyncio.to_thread(
            self.batch.list_namespaced_job,
            self.settings.namespace,
            label_selector=f"{MANAGED_BY}=devart",
            _preload_content=False,
        )
        deleted: list[str] = []
        for job in json.loads(response.data)["items"]:
            task_id = (job["metadata"].get("annotations") or {}).get(TASK_ID)
            if (
                task_id
                and await is_terminal(task_id)
                and await self.delete_job(job["metadata"]["name"], "Background")
            ):
                deleted.append(job["metadata"]["name"])
        return deleted


__all__ = [
    "KubernetesSandbox",
    "KubernetesSandboxSettings",
    "SandboxSpecError",
    "build_job_manifest",
    "build_network_policy",
    "job_name",
]
