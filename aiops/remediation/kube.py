"""The Kubernetes API as remediations use it: raw JSON objects, server-side dry-run, one field manager.

The official ``kubernetes`` client is blocking; every call runs in a worker thread. Responses are
read without the client's model classes (``_preload_content=False``), so actions work on the same
JSON a ``kubectl get -o json`` shows. The client is imported only when a :class:`Kube` is built, so a
control plane without the ``k8s`` extra runs devart's own actions.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes import client

FIELD_MANAGER = "devart-remediation"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
Obj = dict[str, Any]


class KubeError(Exception):
    """The API refused a request; ``dry_run_unsupported`` when an admission webhook cannot dry-run."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def dry_run_unsupported(self) -> bool:
        return "does not support dry run" in self.message


def api_client(kubeconfig: Path | None, context: str | None) -> client.ApiClient:
    """A client from ``kubeconfig`` (and ``context``), or the in-cluster service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None:
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=str(kubeconfig), context=context, client_configuration=configuration)
    return client.ApiClient(configuration)


class Kube:
    """The handful of reads and writes the action catalogue needs. Writes take ``dry_run``."""

    def __init__(self, api: client.ApiClient) -> None:
        from kubernetes import client

        self._api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def close(self) -> None:
        self._api.close()

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Obj:
        from kubernetes.client.exceptions import ApiException

        try:
            response = await asyncio.to_thread(method, *args, _preload_content=False, **kwargs)
        except ApiException as error:
            raise KubeError(error.status or 0, _message(error)) from error
        return json.loads(response.data) if response.data else {}

    @staticmethod
    def _write(dry_run: bool) -> dict[str, Any]:
        return {"field_manager": FIELD_MANAGER, **({"dry_run": "All"} if dry_run else {})}

    async def deployment(self, namespace: str, name: str) -> Obj:
        return await self._call(self.apps.read_namespaced_deployment, name, namespace)

    async def replica_sets(self, namespace: str, selector: str) -> list[Obj]:
        listed = await self._call(self.apps.list_namespaced_replica_set, namespace, label_selector=selector)
        return listed.get("items", [])

    async def replica_set(self, namespace: str, name: str) -> Obj:
        return await self._call(self.apps.read_namespaced_replica_set, name, namespace)

    async def pod(self, namespace: str, name: str) -> Obj:
        return await self._call(self.core.read_namespaced_pod, name, namespace)

    async def pods(self, namespace: str, selector: str) -> list[Obj]:
        return (await self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)).get("items", [])

    async def node(self, name: str) -> Obj:
        return await self._call(self.core.read_node, name)

    async def nodes(self) -> list[Obj]:
        return (await self._call(self.core.list_node)).get("items", [])

    async def patch_deployment(self, namespace: str, name: str, body: Any, *, dry_run: bool,
                               content_type: str = MERGE) -> Obj:
        return await self._call(self.apps.patch_namespaced_deployment, name, namespace, body,
                                _content_type=content_type, **self._write(dry_run))

    async def scale_deployment(self, namespace: str, name: str, replicas: int, *, dry_run: bool) -> Obj:
        return await self._call(self.apps.patch_namespaced_deployment_scale, name, namespace,
                                {"spec": {"replicas": replicas}}, _content_type=MERGE, **self._write(dry_run))

    async def evict(self, namespace: str, name: str, *, dry_run: bool) -> Obj:
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace},
                **({"deleteOptions": {"dryRun": ["All"]}} if dry_run else {})}
        kwargs = {"dry_run": "All"} if dry_run else {}
        return await self._call(self.core.create_namespaced_pod_eviction, name, namespace, body, **kwargs)

    async def delete_pod(self, namespace: str, name: str, *, dry_run: bool) -> Obj:
        kwargs = {"dry_run": "All"} if dry_run else {}
        return await self._call(self.core.delete_namespaced_pod, name, namespace, **kwargs)

    async def patch_node(self, name: str, body: Obj, *, dry_run: bool) -> Obj:
        return await self._call(self.core.patch_node, name, body, _content_type=MERGE, **self._write(dry_run))


def _message(error: Any) -> str:
    """The Status message, with its causes (a PodDisruptionBudget's says how many pods it needs)."""
    try:
        status = json.loads(error.body)
        causes = [c["message"] for c in (status.get("details") or {}).get("causes") or [] if c.get("message")]
        return str(status.get("message", error.reason)) + (f" ({'; '.join(causes)})" if causes else "")
    except (TypeError, ValueError, AttributeError, KeyError):
        return str(error.reason)
