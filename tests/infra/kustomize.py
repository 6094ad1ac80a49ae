"""A small kustomize renderer for the features infra/k8s uses, so tests need no kustomize binary.

Supported, faithfully: ``resources`` (files and directories with their own kustomization),
``labels`` (``pairs``, ``includeTemplates``; selectors are never touched, as with
``includeSelectors: false``), ``images`` (``name``, ``newName``, ``newTag``) and ``patches``
(a strategic-merge patch file with a ``target`` of kind and name). Strategic merge is applied
the way Kubernetes does it for the lists our patches touch: lists of objects keyed by ``name``
(containers, initContainers, env, volumes) merge item by item; every other list is replaced.
Anything else in a kustomization is refused, so the renderer can never silently diverge.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
_SUPPORTED = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
_POD_SPEC_PATHS = (
    ("spec", "template", "spec"),
    ("spec", "jobTemplate", "spec", "template", "spec"),
    ("spec",),
)


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: Path) -> list[Doc]:
    """Every object the kustomization in ``directory`` produces."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _SUPPORTED
    if unknown:
        raise UnsupportedKustomization(f"{directory}: unsupported fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        docs.extend(render(path) if path.is_dir() else load_documents(path))
    for patch in kustomization.get("patches", []):
        _apply_patch(docs, directory, patch)
    for label in kustomization.get("labels", []):
        _apply_labels(docs, label)
    for image in kustomization.get("images", []):
        _apply_image(docs, image)
    return docs


def patch_files(directory: Path) -> set[Path]:
    """Files used as patches by the kustomization in ``directory`` (partial objects, not resources)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return {(directory / patch["path"]).resolve() for patch in kustomization.get("patches", [])}


def load_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec inside a workload (Deployment, Job, CronJob, Pod, ...), if it has one."""
    for steps in _POD_SPEC_PATHS:
        node: Any = doc
        for step in steps:
            node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, dict) and "containers" in node:
            return node
    return None


def _apply_patch(docs: list[Doc], directory: Path, patch: Doc) -> None:
    if set(patch) - {"path", "target"} or set(patch.get("target", {})) - {"kind", "name"}:
        raise UnsupportedKustomization(f"{directory}: only path + target(kind, name) patches: {patch}")
    body = yaml.safe_load((directory / patch["path"]).read_text())
    target = patch["target"]
    matches = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
    if len(matches) != 1:
        raise UnsupportedKustomization(f"{directory}: patch target {target} matches {len(matches)} objects")
    _merge(matches[0], body)


def _merge(into: Doc, patch: Doc) -> None:
    for key, value in patch.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        elif _keyed_by_name(value) and _keyed_by_name(current):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    current.append(copy.deepcopy(item))
        else:
            into[key] = copy.deepcopy(value)


def _keyed_by_name(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


def _apply_labels(docs: list[Doc], label: Doc) -> None:
    if set(label) - {"pairs", "includeSelectors", "includeTemplates"} or label.get("includeSelectors"):
        raise UnsupportedKustomization(f"labels: only pairs/includeTemplates are rendered: {label}")
    for doc in docs:
        doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
        template = doc.get("spec", {}).get("template") if isinstance(doc.get("spec"), dict) else None
        if label.get("includeTemplates") and isinstance(template, dict):
            template.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])


def _split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], ":" + image[colon + 1 :]
    return image, ""


def _apply_image(docs: list[Doc], image: Doc) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise UnsupportedKustomization(f"images: only name/newName/newTag: {image}")
    for doc in docs:
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
            name, tag = _split_image(container["image"])
            if name == image["name"]:
                new_tag = f":{image['newTag']}" if "newTag" in image else tag
                container["image"] = f"{image.get('newName', name)}{new_tag}"
