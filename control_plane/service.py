"""The control plane's composition root: connections and background workers, started and closed together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import aio_pika
import asyncpg
from aio_pika.abc import AbstractRobustConnection
from opentelemetry.sdk.trace import SpanProcessor

from agents.sdk.connection import connect_robust
from agents.sdk.settings import BrokerSettings
from agents.sdk.telemetry import API_SERVICE, Telemetry, TelemetrySettings, batch_processor, start_telemetry
from agents.sdk.topology import Topology, declare_dead_queue, declare_events_queue, declare_exchanges
from agents.sdk.trust import MessageSigner
from aiops.remediation.pipeline import Pipeline
from aiops.remediation.settings import RemediationSettings
from aiops.settings import AiopsSettings
from aiops.traces.source import SpanSource, make_span_source
from control_plane import approvals
from control_plane.agent_keys import DeliverySecrets, load_keys
from control_plane.approvals import ApprovalExpiry
from control_plane.broker import BrokerUnavailable, PrivateRabbitMQ, redact, resolve_broker
from control_plane.db import (
    APP_ROLE,
    SERVICE_ROLE,
    Database,
    EmbeddedPostgres,
    connect,
    create_pool,
    migrate_database,
    refuse_privileged,
    set_app_password,
)
from control_plane.dead_letters import DeadLetterConsumer
from control_plane.dispatch import Dispatcher
from control_plane.events import EventsConfig, EventsConsumer
from control_plane.github.settings import GitHubSettings
from control_plane.installation import Installation, load_installation
from control_plane.leadership import Leadership
from control_plane.metrics import PrometheusMetrics
from control_plane.notify import Notifications, NotifySettings
from control_plane.outbox import Outbound, OutboxRelay
from control_plane.queue_counts import QueueCounts
from control_plane.reaper import Reaper
from control_plane.remediation import RemediationLoop, build_pipeline
from control_plane.schemas import InputSchemas
from control_plane.settings import Settings
from control_plane.span_retention import SpanRetention
from control_plane.submissions import Submissions
from control_plane.telemetry import ControlPlaneMetrics, ObservabilitySettings, SpanStoreExporter
from control_plane.workflows.engine import APPROVAL_SUBJECT, WorkflowEngine
from control_plane.workflows.scheduler import WorkflowScheduler
from control_plane.workflows.settings import WorkflowSettings

if TYPE_CHECKING:
    from control_plane.github.service import GitHubIntegration
    from control_plane.k8s_sweeper import JobSweeper

log = logging.getLogger("devart.control_plane")


async def resolve_database(settings: Settings) -> Database:
    """The database to use: ``DATABASE_URL`` (with devart_app's password from ``DEVART_DB_APP_PASSWORD``),
    or the embedded pgserver under ``DEVART_HOME``."""
    if settings.database_url:
        password = settings.db_app_password.get_secret_value() if settings.db_app_password else None
        return Database(settings.database_url, app_password=password)
    return await EmbeddedPostgres(settings.home).start()


@dataclass
class Workers:
    relay: OutboxRelay
    events: EventsConsumer
    dead: DeadLetterConsumer
    reaper: Reaper
    dispatcher: Dispatcher
    approval_expiry: ApprovalExpiry
    workflow_scheduler: WorkflowScheduler
    remediation: RemediationLoop | None = None
    sweeper: JobSweeper | None = None
    span_retention: SpanRetention | None = None
    metrics: ControlPlaneMetrics | None = None
    notifications: Notifications | None = None
    github: GitHubIntegration | None = None
    leadership: Leadership | None = None
    """Runs the installation-wide sweeps (reaper, approval expiry, remediation, span retention, Job
    sweeper) while this control plane is the leader."""


class ControlPlane:
    """Owns the database pool, the broker connection and the background workers.

    ``async with ControlPlane(settings) as cp:`` migrates, connects and starts everything;
    leaving the block stops it all in reverse order. Using it outside the block is an error.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        workers: bool = True,
        telemetry: TelemetrySettings | None = None,
        aiops: AiopsSettings | None = None,
        observability: ObservabilitySettings | None = None,
        remediation: RemediationSettings | None = None,
        workflows: WorkflowSettings | None = None,
        notify: NotifySettings | None = None,
        github: GitHubSettings | None = None,
    ) -> None:
        self.settings = settings
        self.github = github or GitHubSettings()
        self.workflow_settings = workflows or WorkflowSettings()
        self._workflows: WorkflowEngine | None = None
        # DEVART_API_URL is how agents reach the built-in receiver; the control plane stores its own
        # spans in process, never by posting them to itself (without a token: 401, spans lost).
        self.telemetry_settings = (telemetry or TelemetrySettings()).model_copy(update={"api_url": None})
        self.aiops = aiops or AiopsSettings()
        self.observability = observability or ObservabilitySettings()
        self.remediation_settings = remediation or RemediationSettings()
        self._remediation: Pipeline | None = None
        self._remediation_source: SpanSource | None = None
        self.notify = notify or NotifySettings()
        self.telemetry: Telemetry | None = None
        self._span_sink: SpanProcessor | None = None
        self._span_pool: asyncpg.Pool | None = None
        self._topology: Topology | None = None
        self.broker: BrokerSettings = settings.broker
        """The broker settings in use: the configured ones, with the prefix resolved."""
        self.installation: Installation | None = None
        self.prometheus = PrometheusMetrics()
        self.input_schemas = InputSchemas(agent_ttl_s=settings.heartbeat_ttl_s, refresh_s=settings.schema_refresh_s)
        self._run_workers = workers
        self._pool: asyncpg.Pool | None = None
        self._submissions: Submissions | None = None
        self._loops_pool: asyncpg.Pool | None = None
        self._signer: MessageSigner | None = None
        self._deliveries: DeliverySecrets | None = None
        self._connection: AbstractRobustConnection | None = None
        self._private_broker: PrivateRabbitMQ | None = None
        self.workers: Workers | None = None
        self.database: Database | None = None
        self.amqp_url = ""

    @property
    def pool(self) -> asyncpg.Pool:
        """The API's connections, as devart_app: a request's transaction switches to its caller
        (control_plane/identity.py); without that switch they may do nothing but authenticate."""
        if self._pool is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._pool

    @property
    def submissions(self) -> Submissions:
        """Writes single-task submissions of concurrent requests in shared transactions."""
        if self._submissions is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._submissions

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._topology

    @property
    def workflows(self) -> WorkflowEngine:
        if self._workflows is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._workflows

    @property
    def signer(self) -> MessageSigner:
        """Signs what the control plane sends agents; its public key is handed out at registration."""
        if self._signer is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._signer

    @property
    def deliveries(self) -> DeliverySecrets:
        """Attempts' delivery secrets: the relay puts them in task messages, the events consumer checks proofs."""
        if self._deliveries is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._deliveries

    @property
    def loops_pool(self) -> asyncpg.Pool:
        """Connections of the background loops and consumers (outbox relay, events, dead letters,
        reaper, dispatcher, the event hub's LISTEN), apart from ``pool`` so that slow or many API
        requests can never starve them."""
        if self._loops_pool is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._loops_pool

    @property
    def span_pool(self) -> asyncpg.Pool:
        """Connections for the span store, without the JSON codecs of ``pool`` (the store encodes
        attributes itself) and apart from it, so span traffic never starves the API."""
        if self._span_pool is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._span_pool

    @property
    def remediation(self) -> Pipeline:
        """The remediation pipeline (proposals, kill switch, approvals' outcomes)."""
        if self._remediation is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._remediation

    @asynccontextmanager
    async def owner_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection as the schema owner, for the local operator's own administration (the token
        ``devart up`` makes for its agents, the demo's): what ``devart token create`` does."""
        if self.database is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        conn = await connect(self.database.owner_url)
        try:
            yield conn
        finally:
            await conn.close()

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError("ControlPlane used outside `async with`")
        return self._connection

    async def __aenter__(self) -> ControlPlane:
        s = self.settings
        self.database = db = await resolve_database(s)
        applied = await migrate_database(db.owner_url)  # as the owner; nothing else runs as it
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        if db.app_password is not None:
            await set_app_password(db.owner_url, db.app_password)
        self._pool = await create_pool(db.app_url, role=APP_ROLE, min_size=s.db_pool_min, max_size=s.db_pool_max)
        # with no relay here, the task messages are left due at once, to another process's relay
        self._submissions = Submissions(self._pool, self.input_schemas, max_tasks=s.submit_group_max,
                                        max_transactions=s.submit_transactions_max,
                                        lease_s=s.outbox_direct_lease_s if self._run_workers else 0.0,
                                        on_committed=self._publish_committed)
        if s.environment == "production":
            await refuse_privileged(self._pool)
        self._loops_pool = await create_pool(db.app_url, role=SERVICE_ROLE, min_size=1, max_size=s.db_loops_pool_max)
        async with self._loops_pool.acquire() as conn:
            self.installation = await load_installation(conn)
            keys = await load_keys(conn)
            self._signer, self._deliveries = keys.signer, keys.deliveries
        if s.broker.prefix is None:
            self.broker = s.broker.model_copy(update={"prefix": self.installation.broker_prefix})
        self._topology = self.broker.topology()
        self._workflows = WorkflowEngine(s, self.workflow_settings, self._topology)
        approvals.register_outcome_handler(APPROVAL_SUBJECT, self._workflows.approval_decided,
                                           lock=self._workflows.lock_approval_subject)
        self._span_pool = await create_pool(db.app_url, role=SERVICE_ROLE, min_size=1,
                                            max_size=self.observability.span_pool_max, codecs=False)
        self._start_telemetry()
        try:
            self._remediation_source = make_span_source(self.aiops, self._loops_pool)
            self._remediation = build_pipeline(
                self._loops_pool, self.remediation_settings, topology=self.topology, agent_ttl_s=s.heartbeat_ttl_s,
                attempts_budget=s.default_max_attempts, source=self._remediation_source,
            )
            self.amqp_url, self._private_broker = await resolve_broker(
                s.broker.amqp_url, s.home, allow_private=s.embedded_broker
            )
            self.broker = self.broker.model_copy(update={"amqp_url": self.amqp_url})
            try:
                self._connection = await connect_robust(self.amqp_url)
            except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
                raise BrokerUnavailable(f"cannot connect to RabbitMQ at {redact(self.amqp_url)}: {exc}") from exc
            channel = await self._connection.channel()
            await declare_exchanges(channel, self.topology)
            await declare_events_queue(channel, self.topology)
            await declare_dead_queue(channel, self.topology)
            await channel.close()
            if self._run_workers:
                await self._start_workers()
        except BaseException:
            await self._close()
            raise
        return self

    def _publish_committed(self, messages: list[Outbound]) -> None:
        if self.workers is not None:
            self.workers.relay.publish_committed(messages)

    def _queue_counts(self) -> QueueCounts:
        configured = self.settings.broker_management_url
        private = self._private_broker.management_url if self._private_broker is not None else None
        return QueueCounts.for_broker(str(configured) if configured else private, self.amqp_url)

    async def _start_workers(self) -> None:
        s = self.settings
        pool, connection = self.loops_pool, self.connection
        dispatcher = Dispatcher(pool, self.topology, interval_s=s.dispatch_interval_s, agent_ttl_s=s.heartbeat_ttl_s)

        async def agents_joined() -> None:
            self.input_schemas.forget()
            dispatcher.wake()

        self.workers = Workers(
            relay=OutboxRelay(
                pool, connection, self.topology, self.signer, self.deliveries, batch=s.outbox_batch, sweep_s=s.outbox_sweep_s, retry_s=s.outbox_retry_s,
                lease_s=s.outbox_direct_lease_s,
            ),
            events=EventsConsumer(
                pool, connection,
                EventsConfig(lease_s=s.lease_s, agent_ttl_s=s.heartbeat_ttl_s, topology=self.topology,
                             deliveries=self.deliveries,
                             on_tasks_ended=self.workflows.tasks_ended),
                batch=s.events_batch, prefetch=s.events_prefetch, on_agents_joined=agents_joined,
            ),
            dead=DeadLetterConsumer(pool, connection, self.topology, self.workflows.tasks_ended),
            reaper=Reaper(
                pool, connection, self.topology, self._queue_counts(), interval_s=s.reaper_interval_s, agent_ttl_s=s.heartbeat_ttl_s,
                deadline_grace_s=s.deadline_grace_s, requeue_after_s=s.requeue_after_s, max_republish=s.max_republish,
                on_tasks_ended=self.workflows.tasks_ended,
            ),
            dispatcher=dispatcher,
            approval_expiry=ApprovalExpiry(pool, interval_s=s.approval_expiry_interval_s),
            workflow_scheduler=WorkflowScheduler(pool, self.workflows,
                                                 interval_s=self.workflow_settings.schedule_interval_s),
            sweeper=self._job_sweeper(),
            span_retention=SpanRetention(
                self.span_pool, self.aiops, interval_s=self.observability.retention_interval_s
            ),
            metrics=ControlPlaneMetrics(pool, interval_s=self.observability.metrics_poll_s),
            remediation=RemediationLoop(self.remediation) if self.remediation_settings.enabled else None,
            notifications=Notifications(pool, self.notify),
        )
        w = self.workers
        leader_loops = [w.reaper, w.approval_expiry, w.remediation, w.sweeper,
                        w.span_retention if self.aiops.span_source == "postgres" else None]
        w.leadership = Leadership(pool, [loop for loop in leader_loops if loop is not None],
                                  interval_s=s.leader_interval_s)
        await w.relay.listen()
        w.relay.start()
        await w.events.start()
        await w.dead.start()
        dispatcher.start()
        w.workflow_scheduler.start()
        if self.telemetry_settings.enabled:
            w.metrics.start()
        await w.leadership.run_once()  # a lone control plane leads from the start, not one interval later
        w.leadership.start()
        await w.notifications.start()
        if self.github.enabled:
            # Imported here: only a control plane with GitHub configured loads githubkit.
            from control_plane.github.service import GitHubIntegration

            w.github = GitHubIntegration(pool, self.github, self.workflows)
            w.github.start()

    def _start_telemetry(self) -> None:
        """Join the process's telemetry; without an OTLP endpoint, this process's spans go straight
        into the span store (no HTTP hop)."""
        settings = self.telemetry_settings
        if not settings.enabled:
            return
        self.telemetry = start_telemetry(API_SERVICE, settings)
        if not self.telemetry.exports_remotely:
            exporter = SpanStoreExporter(self.span_pool, asyncio.get_running_loop(), timeout_s=settings.export_timeout_s)
            self._span_sink = batch_processor(exporter, settings)
            self.telemetry.add_span_processor(self._span_sink)

    async def _stop_telemetry(self) -> None:
        if self._span_sink is not None and self.telemetry is not None:
            self.telemetry.remove_span_processor(self._span_sink)
            # shutdown() exports what is queued, waiting on this loop from its own thread
            await asyncio.to_thread(self._span_sink.shutdown)
            self._span_sink = None

    def _job_sweeper(self) -> JobSweeper | None:
        s = self.settings
        if not s.job_sweeper_enabled:
            return None
        # Imported here: only a control plane that sweeps Jobs loads the Kubernetes client.
        from agents.sandbox.kubernetes import KubernetesSandboxSettings
        from control_plane.k8s_sweeper import JobSweeper

        sandbox = KubernetesSandboxSettings(namespace=s.job_sweeper_namespace)
        return JobSweeper(self.loops_pool, sandbox, interval_s=s.job_sweeper_interval_s)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.workers is not None:
            if self.workers.github is not None:
                await self.workers.github.stop()
            if self.workers.notifications is not None:
                await self.workers.notifications.stop()
            if self.workers.leadership is not None:
                await self.workers.leadership.stop()  # and the leader's loops with it
            for loop in (self.workers.metrics, self.workers.workflow_scheduler):
                if loop is not None:
                    await loop.stop()
            await self.workers.dispatcher.stop()
            await self.workers.events.stop()
            await self.workers.relay.stop()
            self.workers = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        await self._stop_telemetry()
        if self._remediation_source is not None:
            await self._remediation_source.aclose()
            self._remediation_source = None
        if self._remediation is not None:
            self._remediation.close()
            self._remediation = None
        if self._span_pool is not None:
            await self._span_pool.close()
            self._span_pool = None
        for pool in (self._pool, self._loops_pool):
            if pool is not None:
                await pool.close()
        self._pool = self._loops_pool = None
        if self._private_broker is not None:
            await self._private_broker.stop()
            self._private_broker = None
