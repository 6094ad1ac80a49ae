"""Settings of the remediation worker (env prefix ``DEVART_REMEDIATION_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RemediationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_REMEDIATION_", extra="ignore")

    enabled: bool = Field(default=True, description="run the remediation worker in the control plane")
    policy: Path | None = Field(
        default=None, description="remediation policy YAML; unset = every action suggest, nothing automatic"
    )
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig for Kubernetes actions; unset = in_cluster decides"
    )
    in_cluster: bool = Field(
        default=False, description="use the pod's service account for Kubernetes actions when no kubeconfig is set"
    )
    context: str | None = Field(default=None, description="kubeconfig context; unset = its current context")
    default_namespace: str = Field(
        default="default", description="namespace of Kubernetes targets RCA names by service only"
    )
    interval_s: float = Field(default=2.0, gt=0, description="period of the worker loop advancing remediations")
    rollout_poll_s: float = Field(default=2.0, gt=0, description="between two checks of a rollout in progress")
    batch: int = Field(default=50, ge=1, le=1000, description="remediations advanced per worker round")
