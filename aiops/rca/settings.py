"""Limits and thresholds of root cause analysis (env prefix ``DEVART_RCA_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RcaSettings(BaseSettings):
    """Tunable limits of ``analyze``; the defaults need no per-system tuning."""

    model_config = SettingsConfigDict(env_prefix="DEVART_RCA_", extra="ignore")

    min_traces: int = Field(5, ge=1, description="Fewest distinct traces a window needs to be analysed.")
    min_spans: int = Field(20, ge=1, description="Fewest valid spans a window needs to be analysed.")
    max_spans: int = Field(
        2_000_000, ge=1000, description="Most spans per window; larger windows are refused, not truncated."
    )
    abnormal_quantile: float = Field(
        0.99,
        gt=0.5,
        lt=1.0,
        description="Baseline quantile of self time above which an invocation is abnormal.",
    )
    top_k: int = Field(5, ge=1, le=50, description="How many ranked causes a result carries.")
    change_window_s: float = Field(
        3600.0, gt=0, description="How long before the incident window a change still counts as related."
    )
