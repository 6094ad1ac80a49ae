"""The Job and NetworkPolicy the Kubernetes sandbox generates, field by field and against the schema."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from agents.sandbox.base import Resources, SandboxSpec, SecretRef
from agents.sandbox.kubernetes import (
    KubernetesSandboxSettings,
    SandboxSpecError,
    build_job_manifest,
    build_network_policy,
    job_name,
)

K8S_VERSION = "1.37.0"
"""The newest schema kubernetes_validate ships offline."""


@pytest.fixture
def settings() -> KubernetesSandboxSettings:
    return KubernetesSandboxSettings(
        kubeconfig=None,
        allowed_images=["python:3.11-slim", "ghcr.io/acme/*"],
        extra_labels={"team": "platform"},
        ttl_seconds_after_finished=900,
    )


def _spec(**overrides: object) -> SandboxSpec:
    values: dict[str, object] = {
        "task_id": "9f1c2d3e-Task_ID.with.dots",
        "attempt": 2,
        "script": "make test",
        "env": {"CI": "1"},
        "secret_env": {"GITHUB_TOKEN": SecretRef(name="gh", key="token")},
        "repo": "https://github.com/acme/app.git",
        "ref": "v1.2.3",
        "workdir": "services/api",
        "timeout_s": 90.5,
        "resources": Resources(cpu="500m", memory="1Gi"),
        "labels": {"pool": "p-3fa9", "workflow_run": "run 17"},
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    values.update(overrides)
    return SandboxSpec(**values)


def _validate(document: dict) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_job_is_hardened_field_by_field(settings: KubernetesSandboxSettings) -> None:
    spec = _spec()
    job = build_job_manifest(spec, settings)
    _validate(job)

    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == job_name(spec.task_id, 2)
    assert job["metadata"]["namespace"] == "devart-sandbox"
    assert job["metadata"]["annotations"]["devart.io/task-id"] == spec.task_id
    job_spec = job["spec"]
    assert job_spec["backoffLimit"] == 0
    assert job_spec["activeDeadlineSeconds"] == 91
    assert job_spec["ttlSecondsAfterFinished"] == 900

    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "devart"
    assert labels["devart.io/task-id"] == "9f1c2d3e-Task_ID.with.dots"
    assert labels["devart.io/attempt"] == "2"
    assert labels["devart.io/pool"] == "p-3fa9"
    assert labels["devart.io/workflow-run"] == "run-17"
    assert labels["team"] == "platform"
    assert job_spec["template"]["metadata"]["labels"] == labels

    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["volumes"] == [
        {"name": "workspace", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]

    (task,) = pod["containers"]
    (checkout,) = pod["initContainers"]
    for container in (task, checkout):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"] == {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "500m", "memory": "1Gi"},
        }
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/workspace", "/tmp"}

    assert task["image"] == "python:3.11-slim"
    assert task["command"] == ["/bin/sh", "-eu", "-c", "make test"]
    assert task["workingDir"] == "/workspace/services/api"
    env = {e["name"]: e for e in task["env"]}
    assert env["CI"] == {"name": "CI", "value": "1"}
    assert env["TRACEPARENT"]["value"] == spec.traceparent
    assert env["GITHUB_TOKEN"] == {
        "name": "GITHUB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}},
    }

    assert checkout["image"] == settings.git_image
    checkout_env = {e["name"]: e["value"] for e in checkout["env"]}
    assert checkout_env["DEVART_REPO"] == "https://github.com/acme/app.git"
    assert checkout_env["DEVART_REF"] == "v1.2.3"
    assert "GITHUB_TOKEN" not in checkout_env
    assert "v1.2.3" not in " ".join(checkout["command"]), "the ref travels as env, never inside the script"


def test_secret_values_never_appear_literally(settings: KubernetesSandboxSettings) -> None:
    job = build_job_manifest(
        _spec(secret_env={"DB_PASSWORD": SecretRef(name="db", key="password")}), settings
    )
    (task,) = job["spec"]["template"]["spec"]["containers"]
    (secret,) = [e for e in task["env"] if e["name"] == "DB_PASSWORD"]
    assert "value" not in secret
    assert secret["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "password"}}


def test_command_without_repo_has_no_init_container_and_uses_defaults(
    settings: KubernetesSandboxSettings,
) -> None:
    spec = SandboxSpec(task_id="t1", command=["python", "-c", "print(1)"], image="ghcr.io/acme/runner:3")
    job = build_job_manifest(spec, settings)
    _validate(job)
    pod = job["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    (task,) = pod["containers"]
    assert task["command"] == ["python", "-c", "print(1)"]
    assert task["image"] == "ghcr.io/acme/runner:3"
    assert task["workingDir"] == "/workspace"
    assert task["resources"]["limits"] == {"cpu": settings.default_cpu, "memory": settings.default_memory}


def test_job_names_are_deterministic_dns_labels() -> None:
    names = {job_name("Task/With Spaces_and_UPPER" * 5, 1), job_name("Task/With Spaces_and_UPPER" * 5, 1)}
    assert len(names) == 1
    (name,) = names
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 52
    assert job_name("a", 1) != job_name("a", 2)
    assert job_name("A", 1) != job_name("a", 1), "case-folding must not merge two tasks"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image": "docker.io/evil/miner:latest"}, "image"),
        ({"resources": Resources(cpu="64", memory="1Gi")}, "resources.cpu"),
        ({"resources": Resources(cpu="1", memory="lots")}, "resources.memory"),
        ({"workdir": "../../etc"}, "workdir"),
        ({"repo": "/home/me/checkout"}, "repo"),
        ({"env": {"BAD NAME": "x"}}, "env.BAD NAME"),
        ({"env": {"GITHUB_TOKEN": "literal"}}, "secret_env.GITHUB_TOKEN"),
        ({"command": ["true"]}, "command/script"),
        ({"labels": {"bad key!": "x"}}, "labels.bad key!"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(
    settings: KubernetesSandboxSettings, overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(SandboxSpecError, match=re.escape(field)):
        build_job_manifest(_spec(**overrides), settings)


def test_settings_refuse_bad_quantities() -> None:
    with pytest.raises(ValueError, match="max_memory"):
        KubernetesSandboxSettings(max_memory="a lot")


def test_network_policy_denies_all_but_dns(settings: KubernetesSandboxSettings) -> None:
    policy = build_network_policy(settings)
    _validate(policy)
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == "devart-sandbox"
    assert spec["podSelector"] == {}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    (dns,) = spec["egress"]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
