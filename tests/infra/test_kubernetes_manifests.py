"""infra/k8s rendered like kustomize would, validated against the Kubernetes schema and our rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from agents.sandbox.kubernetes import KubernetesSandboxSettings, build_network_policy
from agents.sdk.topology import Topology
from agents.shell.agent import build_shell_agent
from tests.infra.kustomize import load_documents, patch_files, pod_spec, render

K8S_VERSION = "1.37.0"
INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S = INFRA / "k8s"
OVERLAYS = [K8S / "base", K8S / "overlays" / "dev", K8S / "overlays" / "prod"]
CRD_GROUPS = {"keda.sh"}
"""Custom resources the schema bundle does not know; they get structural checks of their own."""

Doc = dict[str, Any]


def _rendered(directory: Path) -> list[Doc]:
    return render(directory)


def _group(doc: Doc) -> str:
    return doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""


def _by(docs: list[Doc], kind: str) -> dict[tuple[str, str], Doc]:
    return {(d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs if d["kind"] == kind}


def _all_yaml_objects() -> list[tuple[Path, Doc]]:
    patches = set().union(*(patch_files(d) for d in OVERLAYS))
    found = []
    for path in sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")]):
        if path.resolve() in patches:
            continue
        for doc in load_documents(path):
            if (
                isinstance(doc, dict)
                and "kind" in doc
                and "apiVersion" in doc
                and doc["kind"] != "Kustomization"
            ):
                found.append((path, doc))
    return found


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_every_rendered_object_validates(directory: Path) -> None:
    docs = _rendered(directory)
    assert docs
    keys = Counter((d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs)
    assert [k for k, n in keys.items() if n > 1] == [], "duplicate objects"
    for doc in docs:
        if _group(doc) in CRD_GROUPS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_kubernetes_yaml_under_infra_validates() -> None:
    objects = _all_yaml_objects()
    assert len(objects) >= 20
    for path, doc in objects:
        if _group(doc) in CRD_GROUPS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{path.relative_to(INFRA)} {doc['kind']}/{doc['metadata']['name']}: {error}"
            ) from None


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_every_pod_template_is_hardened(directory: Path) -> None:
    docs = _rendered(directory)
    bound = {
        subject["name"]
        for binding in docs
        if binding["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for subject in binding["subjects"]
        if subject["kind"] == "ServiceAccount"
    }
    workloads = [d for d in docs if pod_spec(d) is not None]
    assert {d["metadata"]["name"] for d in workloads} >= {
        "devart-control-plane",
        "devart-aiops",
        "devart-agent-shell",
    }
    for doc in workloads:
        spec = pod_spec(doc)
        assert spec is not None
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        pod_context = spec.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, where
        assert pod_context.get("runAsUser", 0) != 0, where
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        automount = spec.get("automountServiceAccountToken")
        assert automount is False or (automount is True and spec.get("serviceAccountName") in bound), (
            f"{where}: a token only for a ServiceAccount that has a RoleBinding"
        )
        for container in spec["containers"] + spec.get("initContainers", []):
            name = f"{where}/{container['name']}"
            limits = container.get("resources", {}).get("limits", {})
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= limits.keys() and {"cpu", "memory"} <= requests.keys(), name
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert context.get("runAsUser", pod_context["runAsUser"]) != 0, name
            assert context.get("privileged", False) is False, name


def test_namespaces_enforce_restricted_pod_security() -> None:
    namespaces = _by(_rendered(K8S / "base"), "Namespace")
    for name in ("devart", "devart-sandbox"):
        assert (
            namespaces[("", name)]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        )


def test_rbac_is_least_privilege() -> None:
    docs = _rendered(K8S / "base")
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = _by(docs, "Role")
    runner = roles[("devart-sandbox", "devart-sandbox-runner")]
    granted = {(r, v) for rule in runner["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {
        ("jobs", "create"),
        ("jobs", "delete"),
        ("jobs", "watch"),
        ("pods", "watch"),
        ("pods/log", "get"),
    } <= granted
    assert not {r for r, _ in granted} - {"jobs", "pods", "pods/log", "events"}
    remediation = roles[("devart", "devart-remediation")]
    deployment_verbs = {
        v for rule in remediation["rules"] if "deployments" in rule["resources"] for v in rule["verbs"]
    }
    assert "patch" in deployment_verbs and not deployment_verbs & {"create", "delete", "*"}
    assert any("deployments/scale" in rule["resources"] for rule in remediation["rules"])
    bindings = _by(docs, "RoleBinding")
    agent = bindings[("devart-sandbox", "devart-agent-sandbox-runner")]
    assert agent["subjects"] == [{"kind": "ServiceAccount", "name": "devart-agent", "namespace": "devart"}]


def test_sandbox_network_policy_is_the_one_the_sandbox_generates() -> None:
    policies = _by(_rendered(K8S / "base"), "NetworkPolicy")
    deployed = policies[("devart-sandbox", "sandbox-default-deny")]
    expected = build_network_policy(KubernetesSandboxSettings())
    assert deployed["spec"] == expected["spec"]
    assert deployed["metadata"]["labels"].items() >= expected["metadata"]["labels"].items()
    assert policies[("devart", "default-deny")]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }


def test_agent_pool_scales_on_its_real_queue() -> None:
    docs = _rendered(K8S / "base")
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    deployments = _by(docs, "Deployment")
    assert ("devart", scaled["spec"]["scaleTargetRef"]["name"]) in deployments
    (trigger,) = scaled["spec"]["triggers"]
    expected_queue = Topology().pool_queue(build_shell_agent().pool_id)
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["queueName"] == expected_queue
    auth = _by(docs, "TriggerAuthentication")[("devart", trigger["authenticationRef"]["name"])]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["key"] in _by(_secret_templates(), "Secret")[("devart", ref["name"])]["stringData"]


def _secret_templates() -> list[Doc]:
    return load_documents(K8S / "secrets.template.yaml")


def test_workloads_reference_only_templated_secrets() -> None:
    templated = {name for _, name in _by(_secret_templates(), "Secret")}
    for deployment in _by(_rendered(K8S / "base"), "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in templated, deployment["metadata"]["name"]
    assert not [d for d in _rendered(K8S / "base") if d["kind"] == "Secret"], (
        "apply -k must not overwrite Secrets"
    )


def test_agents_never_see_database_credentials() -> None:
    agent = _by(_rendered(K8S / "base"), "Deployment")[("devart", "devart-agent-shell")]
    (container,) = agent["spec"]["template"]["spec"]["containers"]
    sources = {ref.get("secretRef", ref.get("configMapRef"))["name"] for ref in container["envFrom"]}
    assert "devart-database" not in sources


def test_agents_get_what_they_need_to_register() -> None:
    """An agent refuses to start without a control plane URL and an agent token (it signs its events
    with the key it registers for), so the manifests must hand it both."""
    rendered = _rendered(K8S / "base")
    agent = _by(rendered, "Deployment")[("devart", "devart-agent-shell")]
    (container,) = agent["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for ref in container["envFrom"]:
        if "configMapRef" in ref:
            env |= _by(rendered, "ConfigMap")[("devart", ref["configMapRef"]["name"])]["data"]
        else:
            env |= _by(_secret_templates(), "Secret")[("devart", ref["secretRef"]["name"])]["stringData"]
    assert env["DEVART_AGENT_API_URL"].startswith("http://devart-control-plane.devart.svc:")
    assert "DEVART_AGENT_TOKEN" in env


def test_secret_templates_hold_placeholders_only() -> None:
    secrets = _secret_templates()
    assert secrets
    for secret in secrets:
        assert "data" not in secret
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{secret['metadata']['name']}.{key}"


def test_overlays_change_what_they_say() -> None:
    dev = _by(_rendered(K8S / "overlays" / "dev"), "Deployment")
    prod_docs = _rendered(K8S / "overlays" / "prod")
    prod = _by(prod_docs, "Deployment")
    assert dev[("devart", "devart-control-plane")]["spec"]["replicas"] == 1
    assert prod[("devart", "devart-control-plane")]["spec"]["replicas"] == 3
    for deployment in prod.values():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] == "registry.example.com/devart/devart:0.1.0"
        assert deployment["spec"]["template"]["metadata"]["labels"]["devart.io/environment"] == "prod"
    for deployment in dev.values():
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "devart:dev"
    prod_cp = prod[("devart", "devart-control-plane")]["spec"]["template"]["spec"]
    (server,) = prod_cp["containers"]
    assert server["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz", "the patch merges, it does not replace"
    assert [c["name"] for c in prod_cp["initContainers"]] == ["migrate"]
    (scaled,) = [d for d in prod_docs if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["maxReplicaCount"] == 30 and scaled["spec"]["triggers"]


def test_control_plane_probes_and_disruption_budget() -> None:
    docs = _rendered(K8S / "base")
    deployment = _by(docs, "Deployment")[("devart", "devart-control-plane")]
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert server["command"] == ["devart", "serve"]
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (migrate,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert migrate["command"] == ["devart", "migrate"]
    pdb = _by(docs, "PodDisruptionBudget")[("devart", "devart-control-plane")]
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    service = _by(docs, "Service")[("devart", "devart-control-plane")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_every_devart_container_gets_its_kubernetes_attributes(directory: Path) -> None:
    """The telemetry resource reads K8S_* variables; the downward API must provide them."""
    from agents.sdk.telemetry import K8S_ENV

    for doc in _by(_rendered(directory), "Deployment").values():
        for container in pod_spec(doc)["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["K8S_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            assert {"K8S_POD_UID", "K8S_NAMESPACE_NAME", "K8S_NODE_NAME", "K8S_CONTAINER_NAME"} <= env.keys()
            assert set(env) & set(K8S_ENV) == {n for n in env if n.startswith("K8S_")}
