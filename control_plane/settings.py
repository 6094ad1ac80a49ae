"""Typed settings of the control plane, read from the environment (``DEVART_`` prefix)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import AliasChoices, AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sdk.eventloop import EventLoop
from agents.sdk.settings import BrokerSettings
from control_plane.supabase.settings import SupabaseSettings


def default_home() -> Path:
    """One ``DEVART_HOME`` per user, whatever the current directory: every command finds the same one."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "devart"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development", description="production refuses embedded defaults that are unsafe to expose"
    )
    home: Path = Field(
        default_factory=lambda: default_home(),
        description="where embedded Postgres, RabbitMQ, sandboxes and `devart up`'s run state live; one place per "
        "user: $XDG_DATA_HOME/devart, else ~/.local/share/devart (a relative path is taken from the current directory)",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "DEVART_DATABASE_URL"),
        description="Postgres 15+ with pgvector 0.5+; unset = embedded pgserver under DEVART_HOME",
    )
    db_app_password: SecretStr | None = Field(
        default=None,
        description="password of devart_app, the login the control plane's pools use (no rights of its own, "
        "no superuser, no BYPASSRLS); set on the role at start-up by the DATABASE_URL owner, who runs the "
        "migrations; unset = the pools use DATABASE_URL's user, refused in production if it is a superuser "
        "or BYPASSRLS; the embedded Postgres makes its own (docs/rls.md)",
    )
    db_pool_min: int = Field(default=2, ge=1, description="minimum connections in the API's pool")
    db_pool_max: int = Field(default=10, ge=1, description="maximum connections in the API's pool")
    db_loops_pool_max: int = Field(
        default=8, ge=3,
        description="maximum connections of the background loops and consumers, a pool apart from the API's",
    )
    db_retry_after_s: int = Field(
        default=2, ge=1,
        description="Retry-After (seconds) of the 503 a request gets while the database is unreachable or its "
        "connection died under it",
    )
    sse_max_streams: int = Field(
        default=2000, ge=1, description="open server-sent event streams per API process; more get 429"
    )
    sse_max_streams_per_token: int = Field(
        default=100, ge=1, description="open server-sent event streams per token and API process; more get 429"
    )
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, description="seconds of silence after which a stream gets a keepalive comment"
    )
    sse_flush_s: float = Field(
        default=0.2, gt=0, description="notifications reach streams in batches at most this often (fan-out cost)"
    )
    sse_max_writes_per_s: float = Field(
        default=2000.0, gt=0,
        description="stream writes per second the fan-out keeps under: with many streams open, batches go out "
        "less often than sse_flush_s (every open streams / this seconds; 1,000 streams: 0.5 s)",
    )
    sse_yield_max_s: float = Field(
        default=0.25, ge=0,
        description="a batch's fan-out waits while API requests hold database connections, at most this long in "
        "all: requests go first, streams get the batch this much later at worst",
    )
    sse_fanout_slice: int = Field(
        default=16, ge=1,
        description="streams handed a batch per turn of the event loop; other requests run between slices",
    )
    sse_max_buffer_bytes: int = Field(
        default=262_144, ge=1024,
        description="bytes an event stream may have waiting unsent (its client does not read fast enough); past "
        "them the stream's connection is dropped, so no client holds memory or the other streams up",
    )
    sse_revocation_check_s: float = Field(
        default=2.0, gt=0, description="how often open streams' tokens are checked; a revoked token's streams close"
    )
    embedded_broker: bool = Field(
        default=True, description="start a private rabbitmq-server under DEVART_HOME when AMQP_URL does not answer"
    )

    event_loop: EventLoop = Field(default="uvloop", description="event loop of the control plane's processes: uvloop or asyncio")
    host: str = Field(default="127.0.0.1", description="address the API listens on")
    port: int = Field(default=8000, ge=0, le=65535, description="port the API listens on")

    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="largest accepted request body")
    max_input_bytes: int = Field(default=262_144, ge=16, description="largest task input (JSON) accepted")
    max_batch_tasks: int = Field(default=500, ge=1, description="most tasks one POST /api/v1/tasks/batch may create")
    submit_group_max: int = Field(
        default=64, ge=1,
        description="most single-task submissions (POST /api/v1/tasks) of one caller written in one shared transaction",
    )
    submit_transactions_max: int = Field(
        default=2, ge=1,
        description="shared submit transactions being written at once per API process; submissions arriving "
        "meanwhile wait and go into the next one together",
    )
    page_size_default: int = Field(default=50, ge=1, description="tasks per page when limit is not given")
    page_size_max: int = Field(default=500, ge=1, description="largest page a client may ask for")
    log_page_max: int = Field(default=1000, ge=1, description="most log lines returned by one page")

    default_timeout_s: float = Field(default=600.0, gt=0, description="task timeout when the request names none")
    max_timeout_s: float = Field(default=24 * 3600.0, gt=0, description="longest timeout a task may ask for")
    default_start_timeout_s: float = Field(
        default=600.0, gt=0,
        description="a task whose attempt has not started this long after it was queued (its submission, for "
        "the first attempt) ends timed_out, whether no pool matches or no agent takes it",
    )
    default_deadline_s: float | None = Field(
        default=None, gt=0,
        description="overall deadline of a task from its submission when the request names none; unset = none",
    )
    requeue_after_s: float = Field(
        default=30.0, gt=0,
        description="a queued task whose message is missing from its pool queue this long is published again",
    )
    broker_management_url: AnyHttpUrl | None = Field(
        default=None,
        description="RabbitMQ management API (http://user:password@host:15672/) the reaper counts queue messages "
        "with, ready and unacknowledged, to tell a lost task message from one a consumer holds; unset = AMQP_URL's "
        "host on port 15672 with its credentials (a private node of `devart up`: its own); where it does not "
        "answer, lost messages are not looked for and their tasks end by their start timeout",
    )
    max_republish: int = Field(
        default=3, ge=0,
        description="times a queued task's lost message is published again before the task fails",
    )
    schema_refresh_s: float = Field(
        default=2.0, gt=0,
        description="how long an API process reuses the live pools' input schemas before reading them again",
    )
    default_max_attempts: int = Field(default=3, ge=1, description="attempts when the request names none")
    max_attempts_limit: int = Field(default=20, ge=1, description="most attempts a task may ask for")
    backoff_base_s: float = Field(default=1.0, gt=0, description="first retry delay")
    backoff_factor: float = Field(default=2.0, ge=1, description="growth of the delay per attempt")
    backoff_cap_s: float = Field(default=300.0, gt=0, description="longest retry delay")
    backoff_jitter: float = Field(default=0.2, ge=0, le=1, description="fraction of the delay randomised (+/-)")

    heartbeat_ttl_s: float = Field(
        default=20.0, gt=0, description="an agent silent this long is gone; its pool may lose its tasks"
    )
    lease_s: float = Field(
        default=60.0, gt=0,
        description="a running attempt whose agent has not reported it for this long fails as the agent gone and is "
        "retried per the task's policy",
    )
    deadline_grace_s: float = Field(default=30.0, ge=0, description="slack past a task's deadline before the reaper acts")
    reaper_interval_s: float = Field(default=2.0, gt=0, description="period of the reaper loop")
    dispatch_interval_s: float = Field(default=2.0, gt=0, description="period of the pending-task dispatch sweep")
    leader_interval_s: float = Field(
        default=2.0, gt=0,
        description="how often a control plane tries to become the leader (runs the reaper and the other "
        "installation-wide sweeps), and how often the leader checks its database session",
    )

    outbox_batch: int = Field(default=500, ge=1, description="outbox rows claimed per relay round")
    outbox_sweep_s: float = Field(default=1.0, gt=0, description="relay poll period when no NOTIFY arrives")
    outbox_retry_s: float = Field(default=2.0, gt=0, description="delay before re-publishing a failed outbox row")
    outbox_direct_lease_s: float = Field(
        default=5.0, gt=0,
        description="a submitted task's message is published by the control plane that committed it, at once; "
        "the other relays leave its outbox row alone this long (a crash before the publish delays the task by it)",
    )
    events_batch: int = Field(default=256, ge=1, description="agent events applied per transaction")
    events_prefetch: int = Field(default=512, ge=1, description="unacked agent events held by the consumer")

    job_sweeper_enabled: bool = Field(
        default=False,
        description="delete sandbox Jobs whose task is terminal; needs the Kubernetes API (DEVART_K8S_KUBECONFIG "
        "or the in-cluster service account) with list/delete on Jobs in the sandbox namespace",
    )
    job_sweeper_interval_s: float = Field(default=60.0, gt=0, description="period of the sandbox Job sweeper")
    job_sweeper_namespace: str = Field(
        default="devart-sandbox", min_length=1, description="namespace whose devart Jobs the sweeper looks at"
    )

    approval_expiry_interval_s: float = Field(
        default=5.0, gt=0, description="period of the loop that expires approvals nobody decided in time"
    )

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    supabase: SupabaseSettings = Field(default_factory=SupabaseSettings)

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("db_pool_min must not exceed db_pool_max")
        if self.environment == "production" and self.database_url is None:
            raise ValueError("DATABASE_URL is required in production (embedded Postgres is for development)")
        if self.environment == "production" and _default_broker_user(self.broker.amqp_url):
            raise ValueError(
                "AMQP_URL uses RabbitMQ's default guest:guest credentials, refused in production: "
                "give devart a broker user of its own"
            )
        return self


def _default_broker_user(amqp_url: str) -> bool:
    parsed = urlparse(amqp_url)
    return unquote(parsed.username or "guest") == "guest" and unquote(parsed.password or "guest") == "guest"
