"""Settings of the AIOps side: where spans come from, the OTLP receiver's limits, retention, signals."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiops.signals import Signal
from aiops.traces.otlp import OtlpLimits


class AiopsSettings(BaseSettings):
    """Everything the trace and signal code reads from the environment (prefix ``DEVART_AIOPS_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_AIOPS_", extra="ignore", populate_by_name=True)

    span_source: Literal["postgres", "tempo"] = Field(
        default="postgres",
        description="where the AIOps chain reads spans: the built-in Postgres store or a Tempo HTTP API",
    )
    tempo_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEVART_AIOPS_TEMPO_URL", "TEMPO_URL", "tempo_url"),
        description="base URL of the Tempo HTTP API (e.g. http://tempo:3200); required when span_source=tempo",
    )
    tempo_tenant: str | None = Field(
        default=None,
        description="tenant sent as X-Scope-OrgID to a multi-tenant Tempo; unset for single-tenant",
    )
    tempo_timeout_s: float = Field(
        default=30.0, gt=0, description="overall timeout of one Tempo HTTP request, seconds"
    )
    tempo_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="timeout to open a connection to Tempo, seconds"
    )
    tempo_attempts: int = Field(
        default=4,
        ge=1,
        le=20,
        description="attempts of one Tempo request when it fails with 429, 5xx or a transport error",
    )
    tempo_backoff_s: float = Field(
        default=0.2, gt=0, description="first delay between two Tempo attempts, seconds; doubles each retry"
    )
    tempo_backoff_max_s: float = Field(
        default=5.0,
        gt=0,
        description="longest delay between two Tempo attempts (also caps Retry-After), seconds",
    )
    tempo_search_limit: int = Field(
        default=500, ge=1, description="most traces one Tempo search returns (the `limit` parameter)"
    )
    tempo_spans_per_spanset: int = Field(
        default=3,
        ge=1,
        description="matching spans Tempo returns per trace in a search (the `spss` parameter)",
    )
    tempo_fetch_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="traces fetched from Tempo at the same time when listing a window",
    )
    otlp_max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="largest OTLP request body accepted as sent (413 above)"
    )
    otlp_max_decompressed_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="largest OTLP body after gzip decompression, a guard against zip bombs (413 above)",
    )
    otlp_max_spans: int = Field(
        default=100_000, ge=1, description="most spans in one OTLP request (413 above)"
    )
    otlp_max_concurrent_decodes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="OTLP requests read, decoded and stored at once per API process; one more gets 503 with "
        "Retry-After (the receiver's memory is at most this many times the body and decompressed limits)",
    )
    otlp_retry_after_s: int = Field(
        default=1, ge=1, description="the Retry-After, seconds, of an OTLP request refused because every decode slot is busy"
    )
    retention_days: float = Field(
        default=7.0, gt=0, description="spans older than this are deleted from the store"
    )
    retention_batch_size: int = Field(
        default=10_000,
        ge=1,
        description="rows deleted per statement by the retention job, to keep locks short",
    )
    signal_step_s: int = Field(default=60, ge=1, description="width of one RED signal bucket, seconds")
    signal_max_cells: int = Field(
        default=5_000_000,
        ge=1,
        description="most (operation x step) cells one signal computation may allocate (guards memory)",
    )
    incident_signals: list[Signal] = Field(
        default=["rate", "error_ratio", "p95"],
        min_length=1,
        description="RED signals of each operation that the AIOps service watches for anomalies",
    )
    incident_lag_s: float = Field(
        default=10.0,
        ge=0,
        description="a step is processed this long after it ends, so late-exported spans are counted, seconds",
    )
    incident_correlation_window_s: float = Field(
        default=600.0,
        ge=0,
        description="an anomaly joins an incident on its call path whose latest anomaly is at most this old, seconds",
    )
    incident_max_series: int = Field(
        default=10_000,
        ge=1,
        description="most (service, operation, signal) series tracked at once; the least recently seen is evicted",
    )
    incident_warmup_steps: int = Field(
        default=120,
        ge=0,
        description="steps of history fed to the detectors on the very first run (no stored state yet)",
    )
    incident_min_anomalous_steps: int = Field(
        default=2,
        ge=1,
        le=60,
        description="consecutive anomalous steps of a series before its alert opens or joins an incident (debounce)",
    )
    incident_recovery_steps: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="consecutive steps back within the lead-in baseline's band before an anomaly recovers",
    )
    incident_recovery_sigmas: float = Field(
        default=3.0,
        gt=0,
        le=100,
        description="half-width of the recovery band in robust sigmas (1.4826 MAD) of the anomaly's lead-in",
    )
    incident_recovery_share: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="the band is at least this share of the anomaly's largest deviation from its baseline",
    )
    incident_max_catchup_steps: int = Field(
        default=60,
        ge=1,
        description="most missed steps processed after a pause; older missed steps are skipped",
    )
    incident_excerpt_points: int = Field(
        default=30,
        ge=1,
        le=1000,
        description="recent values kept per series as an anomaly's lead-in; as many more are kept after it",
    )
    incident_call_graph_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="a caller -> callee edge not seen in spans for this long no longer links anomalies, seconds",
    )

    @model_validator(mode="after")
    def _tempo_needs_url(self) -> AiopsSettings:
        if self.span_source == "tempo" and not self.tempo_url:
            raise ValueError(
                "tempo_url (DEVART_AIOPS_TEMPO_URL or TEMPO_URL) is required when span_source is 'tempo'"
            )
        return self

    @property
    def otlp_limits(self) -> OtlpLimits:
        """The receiver's size limits, as :func:`aiops.traces.otlp.parse_export_request` takes them."""
        return OtlpLimits(
            max_body_bytes=self.otlp_max_body_bytes,
            max_decompressed_bytes=self.otlp_max_decompressed_bytes,
            max_spans=self.otlp_max_spans,
        )
