"""The agent runtime: consume a pool queue, run handlers, report through events, ack when reported.

Two layers live here. :func:`execute_attempt` runs one handler for one attempt and maps whatever it
does (return, raise, overrun, get cancelled) to an :class:`AttemptOutcome`; the test harness in
``agents.sdk.testing`` uses it too, so a handler behaves the same with and without a broker.
:class:`AgentRuntime` wraps it in the delivery protocol of ``agents.sdk.messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, NoReturn
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from pydantic import AliasChoices, BaseModel, Field, ValidationError
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sdk import eventloop
from agents.sdk.acks import Acker, held
from agents.sdk.agent import Agent
from agents.sdk.batcher import EventBatcher, Outgoing
from agents.sdk.connection import connect_robust
from agents.sdk.consumer import QueueConsumer
from agents.sdk.context import TaskContext
from agents.sdk.errors import NonRetryableError, RetryableError
from agents.sdk.eventloop import EventLoop
from agents.sdk.handlers import HandlerDefinition
from agents.sdk.messages import (
    HEADER_DEAD_REASON,
    HEADER_TRACEPARENT,
    HEADER_TRACESTATE,
    AgentBye,
    AgentHeartbeat,
    AgentHello,
    AgentState,
    ControlCommand,
    Event,
    FailureReason,
    LogLine,
    RunningTask,
    TaskFailed,
    TaskLog,
    TaskMessage,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
    event_routing_key,
    utcnow,
)
from agents.sdk.publisher import ConfirmedPublisher
from agents.sdk.settings import BrokerPrefixUnset, BrokerSettings
from agents.sdk.telemetry import (
    ROUTING_KEY_ATTRIBUTE,
    agent_service,
    extract_context,
    record_failure,
    start_telemetry,
    traceparent_of,
)
from agents.sdk.topology import (
    Topology,
    declare_dead_queue,
    declare_events_queue,
    declare_exchanges,
    declare_pool_queue,
)
from agents.sdk.trust import (
    HEADER_DELIVERY_SECRET,
    HEADER_SIGNATURE,
    AgentCredentials,
    delivery_proof,
    delivery_secret,
    register,
)

log = logging.getLogger("devart.agent")
_tracer = trace.get_tracer("devart.agent")

TRUNCATED_LINE = "[log truncated]"


class AgentRuntimeSettings(BaseSettings):
    """Limits and intervals of one agent process."""

    model_config = SettingsConfigDict(env_prefix="DEVART_AGENT_", extra="ignore", populate_by_name=True)

    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, description="seconds between two heartbeats (state, free slots, progress)"
    )
    log_flush_interval_s: float = Field(
        default=0.2, gt=0, description="longest time a task log line waits before it is published"
    )
    log_batch_lines: int = Field(default=100, ge=1, description="log lines per TaskLog event at most")
    max_log_bytes: int = Field(
        default=1024 * 1024,
        ge=0,
        description="bytes of log text kept per attempt; later lines are replaced by one '[log truncated]' line",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="seconds a drain waits for running tasks before abandoning them to the broker",
    )
    timeout_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="seconds a handler gets past its timeout, or after a cancel request, before it is cancelled",
    )
    coalesce_start_s: float = Field(
        default=0.02, ge=0,
        description="an attempt that ends within this many seconds sends one terminal event carrying its "
        "start instead of a started event and a terminal one; longer ones send started once it has passed, "
        "or at its first log line or progress report (0 = always send started before running the handler)",
    )
    event_batch_s: float = Field(
        default=0.002, ge=0,
        description="longest time a terminal event waits for others to share one broker message (while "
        "a batch awaits its confirm the next one gathers anyway); 0 = only those ready at once",
    )
    event_batch_max: int = Field(default=64, ge=1, description="terminal events per broker message at most")
    finished_memory: int = Field(
        default=10_000,
        ge=1,
        description="finished attempts remembered so a redelivery re-reports the result instead of running again",
    )
    reconnect_interval_s: float = Field(
        default=5.0, gt=0, description="seconds between two attempts to reconnect to a lost broker"
    )
    publish_retry_s: float = Field(
        default=30.0, ge=0,
        description="seconds a task event is retried while the broker connection recovers, before its "
        "delivery is handed back to the broker",
    )
    event_loop: EventLoop = Field(default="uvloop", description="event loop of the agent process: uvloop or asyncio")
    api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DEVART_AGENT_API_URL", "DEVART_API_URL"),
        description="control plane base URL the agent registers with at start (to get its event key); "
        "falls back to DEVART_API_URL, which the telemetry settings read too",
    )
    token: str | None = Field(
        default=None, validation_alias=AliasChoices("DEVART_AGENT_TOKEN", "DEVART_OTLP_TOKEN"),
        description="API token of role agent used to register (never logged)",
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="broker URL and names")

    def topology(self) -> Topology:
        return self.broker.topology()


# --- one attempt, independent of any broker -------------------------------------------------------


@dataclass(frozen=True)
class AttemptOutcome:
    """How an attempt ended, in the terms of ``TaskSucceeded`` / ``TaskFailed``."""

    status: Literal["succeeded", "failed"]
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    error_type: str = ""
    retryable: bool = False
    retry_delay_s: float | None = None
    reason: FailureReason | None = None
    duration_s: float = 0.0


def describe_validation_error(exc: ValidationError) -> str:
    """``input.<field>: <problem>`` for every problem, so the submitter knows what to fix."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in ("input", *error["loc"]))
        problems.append(f"{where}: {error['msg']}")
    return "invalid input: " + "; ".join(problems)


def _result_dict(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return to_jsonable_python(value)
    raise NonRetryableError(
        f"handler returned {type(value).__name__}; return a pydantic model, a dict or None"
    )


def _failure(exc: BaseException, duration_s: float) -> AttemptOutcome:
    extra = getattr(exc, "result", None)
    result = to_jsonable_python(extra, fallback=str) if isinstance(extra, dict) else {}
    error = str(exc) or type(exc).__name__
    common = {"status": "failed", "result": result, "error": error, "error_type": type(exc).__name__}
    if isinstance(exc, TimeoutError):
        return AttemptOutcome(**common, reason="timeout", retryable=False, duration_s=duration_s)
    if isinstance(exc, RetryableError):
        return AttemptOutcome(
            **common, reason="error", retryable=True, retry_delay_s=exc.delay, duration_s=duration_s
        )
    if isinstance(exc, NonRetryableError):
        return AttemptOutcome(**common, reason="error", retryable=False, duration_s=duration_s)
    return AttemptOutcome(**common, reason="error", retryable=True, duration_s=duration_s)


def _cancelled(run: asyncio.Task[Any], duration_s: float) -> AttemptOutcome:
    exc = run.exception() if run.done() and not run.cancelled() else None
    extra = getattr(exc, "result", None)
    result = to_jsonable_python(extra, fallback=str) if isinstance(extra, dict) else {}
    return AttemptOutcome(
        status="failed",
        result=result,
        error="cancelled on request",
        error_type="CancelledError",
        reason="cancelled",
        retryable=False,
        duration_s=duration_s,
    )


async def _stop(run: asyncio.Task[Any], grace_s: float) -> None:
    """Cancel the handler and wait (bounded) for it to unwind."""
    run.cancel()
    done, _ = await asyncio.wait({run}, timeout=max(grace_s, 0.1))
    if not done:
        log.warning("handler task %s ignored cancellation; abandoning it", run.get_name())
    elif not run.cancelled():
        run.exception()  # retrieved, so asyncio does not warn about it


async def execute_attempt(
    handler: HandlerDefinition, ctx: TaskContext, data: dict[str, Any], *, grace_s: float
) -> AttemptOutcome:
    """Validate ``data``, run ``handler`` under ``ctx`` and map how it ended.

    The handler has ``ctx.timeout_s`` plus ``grace_s``; once ``ctx.cancelled`` is set it has
    ``grace_s`` to return, and the attempt counts as cancelled however it returns. If the caller is
    cancelled, the handler is cancelled too.
    """
    return await Execution(handler, ctx, data).outcome(grace_s=grace_s)


class Execution:
    """One handler running for one attempt: it starts when made; :meth:`outcome` waits for its end.

    Waiting is one future woken by whatever comes first (the handler's end, a cancel request, a
    timer), not a task per thing waited for: the runtime pays this for every task it takes.
    """

    def __init__(self, handler: HandlerDefinition, ctx: TaskContext, data: dict[str, Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx = ctx
        self.started = self._loop.time()
        self._invalid: AttemptOutcome | None = None
        self._run: asyncio.Task[Any] | None = None
        try:
            parsed = handler.parse_input(data)
        except ValidationError as exc:
            self._invalid = AttemptOutcome(
                status="failed",
                error=describe_validation_error(exc),
                error_type="ValidationError",
                reason="error",
                retryable=False,
                duration_s=self._loop.time() - self.started,
            )
            return
        ctx.deadline = self.started + ctx.timeout_s
        with ctx.activate():
            self._run = asyncio.create_task(
                handler(ctx, parsed), name=f"handler-{ctx.type}-{ctx.task_id}-{ctx.attempt}"
            )

    @property
    def done(self) -> bool:
        """Whether the handler has returned (or never ran: its input was invalid)."""
        return self._run is None or self._run.done()

    async def wait(self, timeout_s: float) -> None:
        """Wait until the handler has returned, a cancel is requested or ``timeout_s`` has passed."""
        run, cancelled = self._run, self._ctx.cancelled
        if run is None or run.done() or cancelled.is_set():
            return
        waiter = self._loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        run.add_done_callback(wake)
        cancelled.add_callback(wake)
        timer = self._loop.call_later(timeout_s, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            run.remove_done_callback(wake)
            cancelled.remove_callback(wake)

    async def outcome(self, *, grace_s: float) -> AttemptOutcome:
        """How the attempt ended; the handler is stopped if it overran (or if the caller is cancelled)."""
        if self._run is None:
            assert self._invalid is not None
            return self._invalid
        run, ctx, loop = self._run, self._ctx, self._loop
        try:
            await self.wait(self.started + ctx.timeout_s + grace_s - loop.time())
            if ctx.cancelled.is_set():
                # a cancel request wins over whatever the handler did after seeing it
                await asyncio.wait({run}, timeout=grace_s)
                if not run.done():
                    await _stop(run, grace_s)
                return _cancelled(run, loop.time() - self.started)
            if run.done():
                if run.cancelled():
                    return _failure(asyncio.CancelledError("handler cancelled itself"), loop.time() - self.started)
                exc = run.exception()
                if exc is not None:
                    return _failure(exc, loop.time() - self.started)
                try:
                    return AttemptOutcome(
                        status="succeeded", result=_result_dict(run.result()), duration_s=loop.time() - self.started
                    )
                except (NonRetryableError, ValueError, TypeError) as bad_result:
                    return _failure(NonRetryableError(str(bad_result)), loop.time() - self.started)
            await _stop(run, grace_s)
            return _failure(
                TimeoutError(f"attempt exceeded its timeout of {ctx.timeout_s:g}s"), loop.time() - self.started
            )
        finally:
            await self.stop(grace_s)

    async def stop(self, grace_s: float) -> None:
        """Cancel the handler if it still runs, and wait (bounded) for it to unwind."""
        if self._run is not None and not self._run.done():
            await _stop(self._run, grace_s)


# --- the broker side -------------------------------------------------------------------------------


class _PublishFailed(Exception):
    """An event could not be confirmed by the broker (connection lost, or returned)."""


@dataclass
class _AttemptLog:
    """Log lines of one attempt waiting to be published, with the per-attempt byte cap."""

    max_bytes: int
    pending: list[LogLine] = field(default_factory=list)
    next_seq: int = 0
    kept_bytes: int = 0
    truncated: bool = False

    def add(self, stream: str, text: str) -> None:
        if self.truncated:
            return
        size = len(text.encode("utf-8", errors="replace"))
        if self.kept_bytes + size > self.max_bytes:
            self.truncated = True
            stream, text = "system", TRUNCATED_LINE
        else:
            self.kept_bytes += size
        self.pending.append(LogLine(seq=self.next_seq, ts=utcnow(), stream=stream, text=text))
        self.next_seq += 1

    def take(self, limit: int) -> list[LogLine]:
        batch, self.pending = self.pending[:limit], self.pending[limit:]
        return batch


@dataclass
class _Attempt:
    """An attempt running on this agent and the deliveries that wait for its terminal event."""

    message: TaskMessage
    handler: HandlerDefinition
    ctx: TaskContext
    headers: dict[str, str]
    log: _AttemptLog
    deliveries: list[DeliveredMessage]
    proof: str | None
    """The proof of delivery every event about this attempt carries (None: the message had no secret)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seq: int = 0
    progress: float | None = None
    progress_message: str | None = None
    cancel_reason: str = ""
    task: asyncio.Task[None] | None = None
    flusher: asyncio.Task[None] | None = None
    """Publishes log lines periodically; started at the attempt's first log line."""
    ended: bool = False
    started_at: datetime = field(default_factory=utcnow)
    announced: bool = False
    """Whether the started event was published (not yet during the coalescing window)."""

    @property
    def key(self) -> tuple[UUID, int]:
        return (self.message.task_id, self.message.attempt)

    def take_seq(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        return seq


def _headers(delivery: DeliveredMessage) -> dict[str, Any]:
    return delivery.header.properties.headers or {}


def _trace_headers(delivery: DeliveredMessage) -> dict[str, str]:
    headers = _headers(delivery)
    found = {}
    for name in (HEADER_TRACEPARENT, HEADER_TRACESTATE):
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str) and value:
            found[name] = value
    return found


class AgentRuntime:
    """Runs one :class:`Agent` against the broker. Use ``async with`` and ``run_until_stopped()``."""

    def __init__(
        self, agent: Agent, settings: AgentRuntimeSettings | None = None, *, credentials: AgentCredentials | None = None
    ) -> None:
        self.agent = agent
        self.settings = settings or AgentRuntimeSettings()
        self._credentials = credentials
        """The agent's event key and the control plane's public key; registered for at start if None."""
        self.topology = self.settings.topology()
        self.state: AgentState = "active"
        self._agent_seq = 0
        self._connection: AbstractRobustConnection | None = None
        self._publisher: ConfirmedPublisher | None = None
        self._consumer: QueueConsumer | None = None
        self._running: dict[tuple[UUID, int], _Attempt] = {}
        self._finished: OrderedDict[tuple[UUID, int], TaskSucceeded | TaskFailed] = OrderedDict()
        self._background: list[asyncio.Task[None]] = []
        self._settling: set[asyncio.Task[Any]] = set()
        """Delivery callbacks still publishing (poison, re-reports); a drain waits for them too."""
        self._stop_requested = asyncio.Event()
        self._closed = False
        self._batcher: EventBatcher | None = None
        self._acker = Acker()

    # lifecycle

    async def __aenter__(self) -> AgentRuntime:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.drain()

    async def start(self) -> None:
        """Connect, declare what the agent uses, say hello and start taking tasks."""
        if self._connection is not None:
            raise RuntimeError("AgentRuntime already started")
        if self._credentials is None:
            self._credentials = await self._register()
        connection = await connect_robust(
            self.settings.broker.amqp_url,
            reconnect_interval=self.settings.reconnect_interval_s,
            client_properties={"connection_name": self.agent.agent_id},
        )
        self._connection = connection
        try:
            await self._open(connection)
        except BaseException:
            self._connection = None
            await connection.close()
            raise
        self._background.append(asyncio.create_task(self._heartbeat_loop(), name="agent-heartbeat"))
        log.info(
            "agent %s started on pool %s (%d slots)",
            self.agent.agent_id,
            self.agent.pool_id,
            self.agent.slots,
        )

    async def _register(self) -> AgentCredentials:
        s = self.settings
        if not s.api_url or not s.token:
            raise RuntimeError(
                "an agent registers with the control plane to sign its events: set DEVART_API_URL and "
                "DEVART_AGENT_TOKEN (a token of role agent: devart token create --role agent --pool "
                f"{self.agent.pool_id})"
            )
        return await register(s.api_url, s.token, self.agent.agent_id, self.agent.pool_id)

    @property
    def credentials(self) -> AgentCredentials:
        if self._credentials is None:
            raise RuntimeError("AgentRuntime not started")
        return self._credentials

    async def _open(self, connection: AbstractRobustConnection) -> None:
        publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_exchanges(publish, self.topology)
        self._publisher = ConfirmedPublisher(publish)
        self._batcher = EventBatcher(self._publisher, self.topology.events, self.agent.agent_id,
                                     self.credentials.sign_event, window_s=self.settings.event_batch_s,
                                     max_events=self.settings.event_batch_max)
        await declare_events_queue(publish, self.topology)
        await declare_dead_queue(publish, self.topology)

        consume = await connection.channel()
        await consume.set_qos(prefetch_count=self.agent.slots)
        pool_queue = await declare_pool_queue(consume, self.topology, self.agent.pool_id)
        self._consumer = QueueConsumer(consume, pool_queue, self._on_delivery)

        await self._consume_control(await connection.channel())
        connection.reconnect_callbacks.add(self._on_reconnect)
        await self._publish_hello()
        await self._start_consuming()

    def request_stop(self) -> None:
        """Ask :meth:`run_until_stopped` to drain and return (signal handlers call this)."""
        self._stop_requested.set()

    async def run_until_stopped(self) -> bool:
        """Serve until a stop is requested (signal or ``drain`` command), then drain.

        Returns True when every running task finished within the drain timeout.
        """
        if self._connection is None:
            raise RuntimeError("AgentRuntime.run_until_stopped() needs 'async with runtime:' or start()")
        await self._stop_requested.wait()
        return await self.drain()

    async def drain(self) -> bool:
        """Stop taking tasks, let running ones finish (bounded), say bye and close.

        Tasks still running at the drain timeout are cancelled and left unacked, so the broker
        hands them to another agent. Returns True when nothing had to be abandoned.
        """
        if self._closed or self._connection is None:
            return True
        self._closed = True
        self.state = "draining"
        await self._stop_consuming()
        await self._publish_heartbeat()
        clean = await self._wait_for_running(self.settings.drain_timeout_s)
        if not clean:
            abandoned = list(self._running.values())
            log.warning("drain timed out; abandoning %d task(s) to the broker", len(abandoned))
            for attempt in abandoned:
                if attempt.task is not None:
                    attempt.task.cancel()
            await asyncio.gather(*(a.task for a in abandoned if a.task is not None), return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await self._publish(
                AgentBye(agent_id=self.agent.agent_id, seq=self._next_agent_seq(), pool_id=self.agent.pool_id)
            )
        except _PublishFailed as exc:
            log.warning("could not publish bye: %s", exc)
        await self._acker.flush()
        if self._consumer is not None:
            await self._consumer.close()
        await self._connection.close()
        self._stop_requested.set()
        log.info("agent %s left (clean=%s)", self.agent.agent_id, clean)
        return clean

    async def _wait_for_running(self, timeout_s: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._running or self._settling:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            tasks = {a.task for a in self._running.values() if a.task is not None} | self._settling
            await asyncio.wait(tasks, timeout=left)
        return True

    # consuming

    async def _start_consuming(self) -> None:
        if self._consumer is not None:
            await self._consumer.start()

    async def _stop_consuming(self) -> None:
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                log.warning("could not cancel the pool consumer: %s", exc)

    async def _on_delivery(self, delivery: DeliveredMessage) -> None:
        callback = asyncio.current_task()
        assert callback is not None
        self._settling.add(callback)
        try:
            await self._take(delivery)
        finally:
            self._settling.discard(callback)

    async def _take(self, delivery: DeliveredMessage) -> None:
        refused = self.credentials.verify_from_control_plane(delivery.body, _headers(delivery).get(HEADER_SIGNATURE))
        if refused is not None:
            await self._dead_letter(delivery, f"task message {refused}")
            return
        try:
            message = TaskMessage.model_validate_json(delivery.body)
        except ValidationError as exc:
            await self._dead_letter(delivery, f"undecodable: {_one_line(exc)}")
            return
        if message.pool_id != self.agent.pool_id:  # signed for another pool, replayed into ours
            await self._dead_letter(
                delivery, f"task message for pool {message.pool_id!r} delivered to pool {self.agent.pool_id!r}"
            )
            return
        handler = self.agent.handler_for(message.type)
        if handler is None:
            await self._dead_letter(delivery, f"unknown task type {message.type!r}")
            return
        key = (message.task_id, message.attempt)
        headers = _trace_headers(delivery)
        finished = self._finished.get(key)
        if finished is not None:
            log.info("task %s attempt %d already finished here; re-reporting", *key)
            await self._report_and_ack(finished, headers, [delivery])
            return
        running = self._running.get(key)
        if running is not None:
            running.deliveries.append(delivery)
            return
        if self.state != "active":
            await self._acker.nack(delivery, requeue=True)
            return
        secret = delivery_secret(_headers(delivery).get(HEADER_DELIVERY_SECRET))
        attempt = _Attempt(
            message=message,
            handler=handler,
            # the sinks look ``attempt`` up when called, by which time it is bound
            ctx=TaskContext(
                task_id=message.task_id,
                attempt=message.attempt,
                type=message.type,
                timeout_s=message.timeout_s,
                max_attempts=message.max_attempts,
                pool_id=message.pool_id,
                agent_id=self.agent.agent_id,
                sandbox=dict(message.sandbox),
                traceparent=headers.get(HEADER_TRACEPARENT),
                _log_sink=lambda stream, text: self._on_log(attempt, stream, text),
                _progress_sink=lambda fraction, text: self._on_progress(attempt, fraction, text),
            ),
            headers=headers,
            log=_AttemptLog(max_bytes=self.settings.max_log_bytes),
            deliveries=[delivery],
            proof=delivery_proof(secret, self.agent.agent_id) if secret is not None else None,
        )
        self._running[key] = attempt
        # a task of its own: the channel cancels its delivery callbacks when it closes, and an
        # attempt outlives a lost connection
        attempt.task = asyncio.create_task(self._run(attempt), name=f"attempt-{key[0]}-{key[1]}")

    async def _run(self, attempt: _Attempt) -> None:
        """One attempt under a CONSUMER span, child of the delivery's ``traceparent``, from the
        started event to the acked result; the handler sees this span as ``ctx.traceparent``."""
        message = attempt.message
        parent = extract_context(attempt.headers)
        span = _tracer.start_span(
            f"task {message.type}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": self.topology.pool_queue(self.agent.pool_id),
                "devart.task_id": str(message.task_id),
                "devart.attempt": message.attempt,
                "devart.task.type": message.type,
                "devart.pool": self.agent.pool_id,
                "devart.agent_id": self.agent.agent_id,
            },
        )
        # made current by hand, not by start_as_current_span's context managers (their cost shows per task)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            attempt.ctx.traceparent = traceparent_of(span) or attempt.ctx.traceparent
            await self._run_attempt(attempt)
        except Exception as exc:
            record_failure(span, exc)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    async def _run_attempt(self, attempt: _Attempt) -> None:
        message = attempt.message
        try:
            # A redelivered attempt may still be bound to the agent that had it (and died): the
            # control plane takes its result only once a started event has moved it here.
            window = 0.0 if attempt.deliveries[0].redelivered else self.settings.coalesce_start_s
            if window <= 0 and not await self._announce_start(attempt):
                return
            grace_s = self.settings.timeout_grace_s
            execution = Execution(attempt.handler, attempt.ctx, message.input)
            try:
                # A short attempt's start rides in its terminal event (one message instead of two);
                # a longer one announces its start once the window has passed, or before its first
                # log line or progress report, whichever comes first.
                if window > 0:
                    await execution.wait(window)
                if not execution.done and not await self._announce_start(attempt):
                    return
                outcome = await execution.outcome(grace_s=grace_s)
            finally:
                await execution.stop(grace_s)
                await self._stop_flusher(attempt)
            await self._flush_logs(attempt)
            async with attempt.lock:
                terminal = self._terminal_event(attempt, outcome, started_at=attempt.started_at)
                self._remember(terminal)
            await self._report_and_ack(terminal, attempt.headers, attempt.deliveries)
        finally:
            self._running.pop(attempt.key, None)
            await self._stop_flusher(attempt)

    async def _announce_start(self, attempt: _Attempt) -> bool:
        """Publish the attempt's started event unless it was already; False, with the deliveries
        handed back to the broker, when the broker did not confirm it."""

        async def announce() -> None:
            async with attempt.lock:
                await self._announce(attempt)

        try:
            await self._publish_holding(attempt.deliveries, announce)
        except _PublishFailed as exc:
            log.warning("task %s attempt %d: start not confirmed (%s); leaving it to the broker", *attempt.key, exc)
            await self._requeue(attempt.deliveries)
            return False
        return True

    async def _announce(self, attempt: _Attempt) -> None:
        """Publish the started event first if it is still due (the caller holds ``attempt.lock``)."""
        if not attempt.announced:
            message = attempt.message
            await self._publish(TaskStarted(
                ts=attempt.started_at, agent_id=self.agent.agent_id, seq=attempt.take_seq(), task_id=message.task_id,
                attempt=message.attempt, pool_id=self.agent.pool_id, proof=attempt.proof), attempt.headers)
            attempt.announced = True

    def _terminal_event(
        self, attempt: _Attempt, outcome: AttemptOutcome, *, started_at: datetime | None = None
    ) -> TaskSucceeded | TaskFailed:
        common = {
            "started_at": started_at,
            "agent_id": self.agent.agent_id,
            "seq": attempt.take_seq(),
            "task_id": attempt.message.task_id,
            "attempt": attempt.message.attempt,
            "proof": attempt.proof,
            "result": outcome.result,
            "duration_s": outcome.duration_s,
        }
        if outcome.status == "succeeded":
            return TaskSucceeded(**common)
        error = outcome.error
        if outcome.reason == "cancelled" and attempt.cancel_reason:
            error = f"{error}: {attempt.cancel_reason}"
        return TaskFailed(
            **common,
            reason=outcome.reason or "error",
            error=error,
            error_type=outcome.error_type,
            retryable=outcome.retryable,
            retry_delay_s=outcome.retry_delay_s,
        )

    def _remember(self, terminal: TaskSucceeded | TaskFailed) -> None:
        self._finished[(terminal.task_id, terminal.attempt)] = terminal
        while len(self._finished) > self.settings.finished_memory:
            self._finished.popitem(last=False)

    async def _report_and_ack(
        self,
        terminal: TaskSucceeded | TaskFailed,
        headers: dict[str, str],
        deliveries: list[DeliveredMessage],
    ) -> None:
        try:
            await self._publish_holding(deliveries, lambda: self._publish(terminal, headers))
        except _PublishFailed as exc:
            log.warning(
                "task %s attempt %d: result not confirmed (%s); not acking",
                terminal.task_id,
                terminal.attempt,
                exc,
            )
            await self._requeue(deliveries)
            return
        for delivery in deliveries:
            self._acker.ack(delivery)

    async def _requeue(self, deliveries: list[DeliveredMessage]) -> None:
        for delivery in deliveries:
            await self._acker.nack(delivery, requeue=True)

    async def _dead_letter(self, delivery: DeliveredMessage, reason: str) -> None:
        log.warning("poison message on %s: %s", self.agent.pool_id, reason)
        assert self._publisher is not None
        headers = dict(_headers(delivery))
        headers.pop(HEADER_DELIVERY_SECRET, None)  # the dead letter is kept and shown; the secret is not
        headers[HEADER_DEAD_REASON] = reason
        try:
            await self._publisher.publish(self.topology.dead, "", delivery.body, headers,
                                          content_type=delivery.header.properties.content_type)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("could not dead-letter a poison message (%s); the broker keeps it", exc)
            await self._acker.nack(delivery, requeue=True)
            return
        self._acker.ack(delivery)

    # what handlers report

    async def _on_log(self, attempt: _Attempt, stream: str, text: str) -> None:
        attempt.log.add(stream, text)
        if len(attempt.log.pending) >= self.settings.log_batch_lines:
            await self._flush_logs(attempt)
        elif attempt.flusher is None and not attempt.ended:
            attempt.flusher = asyncio.create_task(self._flush_periodically(attempt), name="attempt-log-flush")

    async def _stop_flusher(self, attempt: _Attempt) -> None:
        """Stop the periodic log flush, and start none later: the caller flushes what is left."""
        attempt.ended = True
        if attempt.flusher is not None:
            attempt.flusher.cancel()
            await asyncio.gather(attempt.flusher, return_exceptions=True)

    async def _flush_logs(self, attempt: _Attempt) -> None:
        while attempt.log.pending:
            lines: list[LogLine] = []
            try:
                async with attempt.lock:
                    lines = attempt.log.take(self.settings.log_batch_lines)
                    if not lines:
                        return
                    await self._announce(attempt)
                    await self._publish(
                        TaskLog(
                            agent_id=self.agent.agent_id,
                            seq=attempt.take_seq(),
                            task_id=attempt.message.task_id,
                            attempt=attempt.message.attempt,
                            proof=attempt.proof,
                            lines=lines,
                        ),
                        attempt.headers,
                    )
            except _PublishFailed as exc:
                log.warning("task %s attempt %d: dropped %d log line(s): %s", *attempt.key, len(lines), exc)

    async def _flush_periodically(self, attempt: _Attempt) -> None:
        while True:
            await asyncio.sleep(self.settings.log_flush_interval_s)
            await self._flush_logs(attempt)

    async def _on_progress(self, attempt: _Attempt, fraction: float | None, text: str | None) -> None:
        attempt.progress, attempt.progress_message = fraction, text
        try:
            await self._publish_task_event(
                attempt,
                lambda seq: TaskProgress(
                    agent_id=self.agent.agent_id,
                    seq=seq,
                    task_id=attempt.message.task_id,
                    attempt=attempt.message.attempt,
                    proof=attempt.proof,
                    progress=fraction,
                    message=text,
                ),
            )
        except _PublishFailed as exc:
            log.warning("task %s attempt %d: progress not published: %s", *attempt.key, exc)

    # control commands

    async def _consume_control(self, channel: AbstractChannel) -> None:
        queue = await channel.declare_queue(
            self.topology.agent_queue(self.agent.agent_id), exclusive=True, auto_delete=True
        )
        await queue.bind(self.topology.control, routing_key=f"agent.{self.agent.agent_id}")
        await queue.consume(self._on_control, no_ack=True)

    async def _on_control(self, delivery: AbstractIncomingMessage) -> None:
        refused = self.credentials.verify_from_control_plane(delivery.body, (delivery.headers or {}).get(HEADER_SIGNATURE))
        if refused is not None:
            log.warning("ignoring a control command: %s", refused)
            return
        try:
            command = ControlCommand.model_validate_json(delivery.body)
        except ValidationError as exc:
            log.warning("ignoring undecodable control command: %s", _one_line(exc))
            return
        log.info("control command %s %s", command.action, command.task_id or "")
        if command.action == "cancel":
            self._cancel(command)
        elif command.action == "pause" and self.state == "active":
            self.state = "paused"
            await self._stop_consuming()
            await self._publish_heartbeat()
        elif command.action == "resume" and self.state == "paused":
            self.state = "active"
            await self._start_consuming()
            await self._publish_heartbeat()
        elif command.action == "drain":
            self.request_stop()

    def _cancel(self, command: ControlCommand) -> None:
        for attempt in self._running.values():
            if attempt.message.task_id == command.task_id and command.attempt in (
                None,
                attempt.message.attempt,
            ):
                attempt.cancel_reason = command.reason
                attempt.ctx.cancelled.set()

    # agent events

    async def _on_reconnect(self, _connection: object) -> None:
        log.info("agent %s reconnected", self.agent.agent_id)
        try:
            await self._publish_hello()
        except _PublishFailed as exc:
            log.warning("hello after reconnect not confirmed: %s", exc)

    async def _publish_hello(self) -> None:
        agent = self.agent
        await self._publish(
            AgentHello(
                agent_id=agent.agent_id,
                seq=self._next_agent_seq(),
                name=agent.name,
                pool_id=agent.pool_id,
                skills=list(agent.skills),
                types=list(agent.types),
                slots=agent.slots,
                host=agent.host,
                pid=agent.pid,
                version=agent.version,
                input_schemas={t: h.input_model.model_json_schema() for t, h in agent.handlers.items()},
            )
        )

    async def _publish_heartbeat(self) -> None:
        """Publish the agent's state now; a lost heartbeat is only logged (the next one follows)."""
        running = [
            RunningTask(
                task_id=a.message.task_id,
                attempt=a.message.attempt,
                progress=a.progress,
                message=a.progress_message,
            )
            for a in self._running.values()
        ]
        free = self.agent.slots - len(running) if self.state == "active" else 0
        heartbeat = AgentHeartbeat(
            agent_id=self.agent.agent_id,
            seq=self._next_agent_seq(),
            pool_id=self.agent.pool_id,
            state=self.state,
            free_slots=max(free, 0),
            running=running,
        )
        try:
            await self._publish(heartbeat)
        except _PublishFailed as exc:
            log.warning("heartbeat not confirmed: %s", exc)

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            started = loop.time()
            await self._publish_heartbeat()
            if loop.time() - started > interval:
                log.warning(
                    "heartbeat took %.1fs, longer than its %.1fs interval", loop.time() - started, interval
                )

    def _next_agent_seq(self) -> int:
        seq, self._agent_seq = self._agent_seq, self._agent_seq + 1
        return seq

    # publishing

    async def _publish_task_event(self, attempt: _Attempt, build: Callable[[int], Event]) -> None:
        async with attempt.lock:
            await self._announce(attempt)
            await self._publish(build(attempt.take_seq()), attempt.headers)

    async def _publish_holding(
        self, deliveries: list[DeliveredMessage], publish: Callable[[], Awaitable[None]]
    ) -> None:
        """``publish()``, retried with backoff while the broker connection recovers, for as long as one
        of ``deliveries`` is still held on an open channel (at most ``publish_retry_s``).

        Handing a delivery back at the first failure would be redelivered at once, fail again while
        the publishing channel is still being restored, and soon exhaust the queue's delivery limit.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_retry_s
        delay = 0.05
        while True:
            try:
                await publish()
                return
            except _PublishFailed:
                if not any(held(d) for d in deliveries) or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_interval_s)

    async def _publish(self, event: Event, headers: dict[str, str] | None = None) -> None:
        """Publish ``event`` persistently and mandatorily; return once the broker confirmed it."""
        if self._publisher is None:
            raise _PublishFailed("runtime is not started")
        routing_key = event_routing_key(event)
        # A PRODUCER span under the current one (the attempt's consumer span for task events), not
        # made current itself: nothing runs under it but the publish. Heartbeats are dropped by the
        # sampler (agents.sdk.telemetry.DropHeartbeats).
        span = _tracer.start_span(
            f"publish {self.topology.events}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "publish",
                "messaging.destination.name": self.topology.events,
                ROUTING_KEY_ATTRIBUTE: routing_key,
            },
        )
        try:
            carrier: dict[str, Any] = dict(headers or {})
            traceparent = traceparent_of(span)
            if traceparent is not None:
                carrier[HEADER_TRACEPARENT] = traceparent
            body = event.model_dump_json().encode()
            carrier[HEADER_SIGNATURE] = self.credentials.sign_event(body)
            try:
                if isinstance(event, TaskSucceeded | TaskFailed) and self._batcher is not None:
                    await self._batcher.send(Outgoing(body, routing_key, event.kind, carrier))
                else:
                    await self._publisher.publish(self.topology.events, routing_key, body, carrier,
                                                  message_type=event.kind)
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                raise _PublishFailed(f"{type(exc).__name__}: {exc}") from exc
        except BaseException as exc:
            record_failure(span, exc)
            raise
        finally:
            span.end()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]


def run_agent(agent: Agent, settings: AgentRuntimeSettings | None = None) -> NoReturn:
    """Run ``agent`` until SIGTERM/SIGINT or a ``drain`` command, then drain and exit.

    Exits 0 after a clean drain, 3 when running tasks had to be abandoned to the broker.
    """
    logging.basicConfig(level=os.environ.get("DEVART_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings or AgentRuntimeSettings()
    try:
        settings.topology()
    except BrokerPrefixUnset as exc:
        sys.exit(f"{agent.name}: {exc}")
    sys.exit(eventloop.run(_serve(agent, settings), settings.event_loop))


async def _serve(agent: Agent, settings: AgentRuntimeSettings) -> int:
    telemetry = start_telemetry(agent_service(agent.name))
    try:
        return await _serve_runtime(agent, settings)
    finally:
        await asyncio.to_thread(telemetry.shutdown)  # exports the spans still queued


async def _serve_runtime(agent: Agent, settings: AgentRuntimeSettings) -> int:
    runtime = AgentRuntime(agent, settings)
    loop = asyncio.get_running_loop()
    async with runtime:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runtime.request_stop)
        eventloop.settle_collector()
        clean = await runtime.run_until_stopped()
    with contextlib.suppress(NotImplementedError):
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0 if clean else 3
