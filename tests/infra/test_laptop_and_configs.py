"""compose.yml, the broker/collector/Tempo/Grafana configuration and the Dockerfile."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.settings import Settings as ControlPlaneSettings

INFRA = Path(__file__).resolve().parents[2] / "infra"
_SECRET_KEY = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN|API_KEY", re.IGNORECASE)
_REAL_LOOKING = [
    re.compile(r"\b(ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    re.compile(r"\b\d{8,10}:[A-Za-z0-9_-]{35}\b"),  # Telegram bot token
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yml").read_text())


def _placeholder(value: str) -> bool:
    """Empty, an environment reference, or a default that says it is for development only."""
    return (
        value == ""
        or bool(re.fullmatch(r"\$\{[A-Z_]+(:-[^}]*)?\}", value))
        and (":-" not in value or value.endswith(":-}") or "dev-only" in value)
    )


def test_every_compose_service_has_a_healthcheck() -> None:
    services = _compose()["services"]
    assert {
        "rabbitmq",
        "postgres",
        "tempo",
        "otel-collector",
        "grafana",
        "control-plane",
        "agent-shell",
    } <= set(services)
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_compose_wiring() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg16")
    control = services["control-plane"]
    assert control["command"] == ["devart", "serve"]
    assert "/readyz" in " ".join(control["healthcheck"]["test"])
    assert services["agent-shell"]["command"] == ["python", "-m", "agents.shell"]
    assert "DATABASE_URL" not in services["agent-shell"]["environment"], "agents know the broker only"
    assert (INFRA.parent / control["build"]["dockerfile"]).exists()


def test_compose_holds_no_real_looking_secret() -> None:
    text = (INFRA / "compose.yml").read_text()
    for pattern in _REAL_LOOKING:
        assert not pattern.search(text), pattern.pattern
    compose = _compose()
    environments = [compose["x-devart-env"]] + [
        s.get("environment", {}) for s in compose["services"].values()
    ]
    for environment in environments:
        for key, value in environment.items():
            if _SECRET_KEY.search(key):
                assert _placeholder(str(value)), f"{key}={value!r} looks like a real secret"
            for password in re.findall(r"://[^:/@]+:([^@]+)@", str(value)):
                assert _placeholder(password), f"{key} embeds a password"


@pytest.mark.parametrize("value", ["hunter2-prod", "${TOKEN:-abcdef0123456789}", "s3cr3t"])
def test_placeholder_check_catches_literals(value: str) -> None:
    assert not _placeholder(value)


def test_collector_receives_otlp_and_exports_to_tempo() -> None:
    collector = yaml.safe_load((INFRA / "otel" / "collector.yaml").read_text())
    assert set(collector["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    traces = collector["service"]["pipelines"]["traces"]
    assert "batch" in traces["processors"]
    for section in ("receivers", "processors", "exporters"):
        for pipeline in collector["service"]["pipelines"].values():
            assert set(pipeline[section]) <= set(collector[section]), section
    (exporter,) = [collector["exporters"][name] for name in traces["exporters"]]
    host, port = exporter["endpoint"].rsplit(":", 1)
    tempo = yaml.safe_load((INFRA / "tempo" / "tempo.yaml").read_text())
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert host == "tempo" and grpc.endswith(f":{port}")
    assert "tempo" in _compose()["services"]


def test_tempo_stores_locally() -> None:
    tempo = yaml.safe_load((INFRA / "tempo" / "tempo.yaml").read_text())
    assert tempo["storage"]["trace"]["backend"] == "local"
    assert set(tempo["distributor"]["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    datasource = yaml.safe_load(
        (INFRA / "grafana" / "provisioning" / "datasources" / "tempo.yaml").read_text()
    )
    (tempo_source,) = datasource["datasources"]
    assert tempo_source["type"] == "tempo"
    assert tempo_source["url"].endswith(f":{tempo['server']['http_listen_port']}")


def _rabbitmq_conf() -> dict[str, str]:
    entries = {}
    for line in (INFRA / "rabbitmq" / "rabbitmq.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert _, f"not a key = value line: {line!r}"
            entries[key.strip()] = value.strip()
    return entries


def test_rabbitmq_defaults_to_quorum_queues_and_outwaits_the_longest_task() -> None:
    conf = _rabbitmq_conf()
    assert conf["default_queue_type"] == "quorum"
    longest_task_ms = ControlPlaneSettings.model_fields["max_timeout_s"].default * 1000
    assert int(conf["consumer_timeout"]) > longest_task_ms
    assert 0 < float(conf["vm_memory_high_watermark.relative"]) < 1
    assert "disk_free_limit.absolute" in conf


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.MULTILINE)
    assert len(stages) >= 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert (INFRA / "docker" / "Dockerfile.dockerignore").exists()


def test_the_image_copies_every_installed_package() -> None:
    """The console (dashboard/) was missing from the image once: each package pip installs is copied."""
    pyproject = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, package
        assert f"!{package}/**" in ignore, package
