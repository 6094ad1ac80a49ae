"""The fake API server's object store: resourceVersions, selectors and a replayable watch log."""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

KINDS: dict[str, tuple[str, str]] = {
    "namespaces": ("v1", "Namespace"),
    "pods": ("v1", "Pod"),
    "events": ("v1", "Event"),
    "jobs": ("batch/v1", "Job"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
    "deployments": ("apps/v1", "Deployment"),
    "replicasets": ("apps/v1", "ReplicaSet"),
    "nodes": ("v1", "Node"),
    "poddisruptionbudgets": ("policy/v1", "PodDisruptionBudget"),
}
"""Resource plural -> (apiVersion, kind) of everything the fake serves."""

Obj = dict[str, Any]


class Gone(Exception):
    """The requested resourceVersion is older than what the store still remembers (HTTP 410)."""


class SelectorError(ValueError):
    """A label or field selector the fake does not understand (HTTP 400, like a real server)."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    resource_version: int
    resource: str
    namespace: str
    type: str
    object: Obj


def _parse_label_selector(selector: str) -> list[tuple[str, str, str | None]]:
    terms: list[tuple[str, str, str | None]] = []
    for raw in filter(None, (part.strip() for part in selector.split(","))):
        if " in " in raw or " notin " in raw or "(" in raw:
            raise SelectorError(f"set-based label selector not supported by the fake: {raw!r}")
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "==" in raw or "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif raw.startswith("!"):
            terms.append(("!", raw[1:].strip(), None))
        else:
            terms.append(("exists", raw, None))
    return terms


def matches_labels(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for op, key, value in _parse_label_selector(selector):
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


def matches_fields(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    for raw in filter(None, (part.strip() for part in selector.split(","))):
        negate = "!=" in raw
        path, value = raw.replace("!=", "=").replace("==", "=").split("=", 1)
        current: Any = obj
        for step in path.strip().split("."):
            current = current.get(step) if isinstance(current, dict) else None
        if (str(current) == value.strip()) == negate:
            return False
    return True


class Store:
    """Objects keyed by (resource, namespace, name) with one monotonically increasing resourceVersion."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._log: list[WatchEvent] = []
        self._rv = 0
        self._oldest_watchable = 0
        self.gone_generation = 0

    @property
    def resource_version(self) -> int:
        return self._rv

    def _record(self, resource: str, namespace: str, kind: str, obj: Obj) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        snapshot = copy.deepcopy(obj)
        self._log.append(WatchEvent(self._rv, resource, namespace, kind, snapshot))
        self.changed.notify_all()
        return copy.deepcopy(snapshot)

    def create(self, resource: str, namespace: str, body: Obj) -> Obj:
        """Store a new object; raises KeyError when the name is taken (the caller answers 409)."""
        with self.changed:
            meta = body.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (resource, namespace, meta["name"])
            if key in self._objects:
                raise KeyError(meta["name"])
            api_version, kind = KINDS[resource]
            body["apiVersion"], body["kind"] = api_version, kind
            if resource != "namespaces":
                meta["namespace"] = namespace
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            self._objects[key] = body
            return self._record(resource, namespace, "ADDED", body)

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.changed:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def update(self, resource: str, namespace: str, name: str, mutate: Any) -> Obj:
        """Apply ``mutate(obj)`` in place under the lock and record a MODIFIED event."""
        with self.changed:
            obj = self._objects[(resource, namespace, name)]
            mutate(obj)
            return self._record(resource, namespace, "MODIFIED", obj)

    def delete(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.changed:
            obj = self._objects.pop((resource, namespace, name), None)
            if obj is None:
                return None
            return self._record(resource, namespace, "DELETED", obj)

    def list(
        self, resource: str, namespace: str | None, labels: str | None = None, fields: str | None = None
    ) -> tuple[list[Obj], int]:
        with self.changed:
            items = [
                copy.deepcopy(obj)
                for (res, ns, _), obj in self._objects.items()
                if res == resource
                and (namespace is None or ns == namespace)
                and matches_labels(obj, labels)
                and matches_fields(obj, fields)
            ]
            return items, self._rv

    def expire_history(self) -> None:
        """Forget every past resourceVersion and end open watches with 410, like etcd compaction."""
        with self.changed:
            self._oldest_watchable = self._rv
            self._log.clear()
            self.gone_generation += 1
            self.changed.notify_all()

    def events_since(
        self,
        resource: str,
        namespace: str | None,
        since: int,
        labels: str | None,
        fields: str | None,
        generation: int,
        stop: threading.Event,
        timeout_s: float,
    ) -> Iterator[WatchEvent]:
        """Yield matching events after ``since`` until ``timeout_s`` passes; raise Gone when compacted."""
        deadline = threading.Event()
        timer = threading.Timer(timeout_s, deadline.set)
        timer.daemon = True
        timer.start()
        try:
            cursor = since
            while not (stop.is_set() or deadline.is_set()):
                with self.changed:
                    if cursor < self._oldest_watchable or self.gone_generation != generation:
                        raise Gone(f"too old resource version: {cursor} ({self._oldest_watchable})")
                    pending = [event for event in self._log if event.resource_version > cursor]
                    if not pending:
                        self.changed.wait(timeout=0.2)
                        continue
                cursor = pending[-1].resource_version
                for event in pending:
                    if (
                        event.resource == resource
                        and (namespace is None or event.namespace == namespace)
                        and matches_labels(event.object, labels)
                        and matches_fields(event.object, fields)
                    ):
                        yield event
        finally:
            timer.cancel()
