"""SandboxSettings from the environment, the override allow-list, quantities and the factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agents.sandbox import (
    LocalSandbox,
    OverrideNotAllowed,
    Resources,
    SandboxOverrides,
    SandboxSettings,
    make_sandbox,
    parse_cpu,
    parse_memory,
)


def test_every_setting_is_described() -> None:
    missing = [name for name, info in SandboxSettings.model_fields.items() if not info.description]
    assert missing == []


def test_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVART_SANDBOX_OUTPUT_CAP_BYTES", "4096")
    monkeypatch.setenv("DEVART_SANDBOX_NETWORK", "host")
    monkeypatch.setenv("DEVART_SANDBOX_BASE_ENV", '{"PATH": "/usr/bin", "JAVA_HOME": "/usr/lib/jvm"}')
    monkeypatch.setenv("DEVART_SANDBOX_INSECURE", "1")
    monkeypatch.setenv("DEVART_HOME", str(tmp_path))
    settings = SandboxSettings()
    assert settings.output_cap_bytes == 4096
    assert settings.network == "host"
    assert settings.base_env == {"PATH": "/usr/bin", "JAVA_HOME": "/usr/lib/jvm"}
    assert settings.insecure
    assert settings.root == tmp_path / "sandboxes"


def test_default_root_without_devart_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVART_HOME", raising=False)
    assert SandboxSettings().root == Path(".devart") / "sandboxes"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("DEVART_SANDBOX_NETWORK", "bridge", "network"),
        ("DEVART_SANDBOX_OUTPUT_CAP_BYTES", "0", "output_cap_bytes"),
        ("DEVART_SANDBOX_MAX_MEMORY", "lots", "max_memory"),
        ("DEVART_SANDBOX_OVERRIDABLE", '["workdir"]', "overridable"),
    ],
)
def test_bad_settings_name_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=field):
        SandboxSettings()


@pytest.mark.parametrize(("quantity", "cores"), [("2", 2.0), ("0.5", 0.5), ("500m", 0.5), ("1500m", 1.5)])
def test_parse_cpu(quantity: str, cores: float) -> None:
    assert parse_cpu(quantity) == cores


@pytest.mark.parametrize(
    ("quantity", "size"),
    [("512Mi", 512 * 1024**2), ("1Gi", 1024**3), ("1G", 10**9), ("2048", 2048), ("1.5Ki", 1536)],
)
def test_parse_memory(quantity: str, size: int) -> None:
    assert parse_memory(quantity) == size


@pytest.mark.parametrize("quantity", ["", "two", "1Xi", "-1", "1.2.3"])
def test_malformed_quantities_are_refused(quantity: str) -> None:
    with pytest.raises(ValueError):
        parse_memory(quantity)
    with pytest.raises(ValueError):
        parse_cpu(quantity)


def test_allowed_overrides_pass() -> None:
    settings = SandboxSettings()
    settings.check_overrides(
        SandboxOverrides(image="python:3.12", resources=Resources(cpu="4", memory="8Gi"))
    )
    settings.check_overrides(SandboxOverrides())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            SandboxOverrides(kind="kubernetes"),
            r"sandbox\.kind: per-task override not allowed \(allowed: image, resources\)",
        ),
        (SandboxOverrides(resources=Resources(cpu="5")), r"sandbox\.resources\.cpu: 5 exceeds the maximum 4"),
        (
            SandboxOverrides(resources=Resources(memory="9Gi")),
            r"sandbox\.resources\.memory: 9Gi exceeds the maximum 8Gi",
        ),
        (
            SandboxOverrides(resources=Resources(cpu="lots")),
            r"sandbox\.resources\.cpu: 'lots' is not a CPU quantity",
        ),
    ],
)
def test_overrides_outside_the_policy_name_the_field(overrides: SandboxOverrides, message: str) -> None:
    with pytest.raises(OverrideNotAllowed, match=message):
        SandboxSettings().check_overrides(overrides)


def test_kind_override_when_allowed() -> None:
    SandboxSettings(overridable=["kind"]).check_overrides(SandboxOverrides(kind="kubernetes"))
    with pytest.raises(OverrideNotAllowed, match=r"sandbox\.image: .*\(allowed: kind\)"):
        SandboxSettings(overridable=["kind"]).check_overrides(SandboxOverrides(image="x"))


def test_unknown_override_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="workdir"):
        SandboxOverrides.model_validate({"workdir": "/"})


def test_make_sandbox_local(tmp_path: Path) -> None:
    assert isinstance(make_sandbox(SandboxSettings(root=tmp_path)), LocalSandbox)


async def test_make_sandbox_kubernetes_reads_its_own_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        "clusters: [{name: test, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: test, user: {token: abc}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
    )
    monkeypatch.setenv("DEVART_K8S_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("DEVART_K8S_NAMESPACE", "from-env")
    from agents.sandbox.kubernetes import KubernetesSandbox

    sandbox = make_sandbox(SandboxSettings(kind="kubernetes"))
    assert isinstance(sandbox, KubernetesSandbox)
    assert sandbox.settings.namespace == "from-env"
    await sandbox.aclose()
