"""Where task commands run: the ``Sandbox`` protocol, its local implementation and the factory."""

from __future__ import annotations

from agents.sandbox.base import LogSink, Outcome, Resources, Sandbox, SandboxResult, SandboxSpec, SecretRef
from agents.sandbox.local import LocalSandbox, SandboxError, relative_inside
from agents.sandbox.settings import (
    OverrideNotAllowed,
    SandboxKind,
    SandboxOverrides,
    SandboxSettings,
    parse_cpu,
    parse_memory,
)

__all__ = [
    "LocalSandbox",
    "LogSink",
    "Outcome",
    "OverrideNotAllowed",
    "Resources",
    "Sandbox",
    "SandboxError",
    "SandboxKind",
    "SandboxOverrides",
    "SandboxResult",
    "SandboxSettings",
    "SandboxSpec",
    "SecretRef",
    "make_sandbox",
    "parse_cpu",
    "parse_memory",
    "relative_inside",
]


def make_sandbox(settings: SandboxSettings) -> Sandbox:
    """The sandbox ``settings.kind`` names; the Kubernetes one reads its own settings from the environment."""
    if settings.kind == "kubernetes":
        from agents.sandbox.kubernetes import KubernetesSandbox, KubernetesSandboxSettings

        return KubernetesSandbox(KubernetesSandboxSettings())
    return LocalSandbox(settings)
