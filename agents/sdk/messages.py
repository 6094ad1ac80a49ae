"""The wire contract between the control plane and agents.

Every message on the broker is one of the pydantic models below, serialised as JSON with a
``v`` (schema version) field. The control plane imports these models; nothing here imports the
control plane. AMQP headers carry the W3C ``traceparent`` next to the body, never inside it.

Flows:

* ``TaskMessage``: control plane -> ``devart.tasks`` exchange, routing key = pool id.
  An agent acks it only after its terminal event (succeeded / failed / cancelled) was confirmed by
  the broker. The same ``(task_id, attempt)`` may be delivered more than once; handlers are
  idempotent per that pair. Header ``x-devart-delivery-secret`` carries the attempt's delivery
  secret, from which every task event about the attempt gets its ``proof`` (``agents.sdk.trust``).
* ``Event``: agent -> ``devart.events`` (topic), routing key ``task.<task_id>.<kind>`` or
  ``agent.<agent_id>.<kind>``. ``seq`` increases per ``(task_id, attempt)`` for task events and per
  agent instance for agent events, so the control plane can drop duplicates. Terminal events of
  several tasks that are ready together travel as one *event batch* message: AMQP type ``batch``,
  routing key ``agent.<agent_id>.batch``, the body a JSON array of the events (all of that agent),
  signed as a whole, and header ``x-devart-traceparents`` listing each event's ``traceparent`` in
  order.
* ``ControlCommand``: control plane -> ``devart.control`` (topic), routing key ``agent.<agent_id>``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

WIRE_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def pool_id(skills: list[str] | set[str] | tuple[str, ...], types: list[str] | set[str] | tuple[str, ...]) -> str:
    """Stable id of the pool formed by agents with this skill set and these task types.

    Agents that declare the same skills and handle the same task types compete on one queue.
    The types are part of the key so that a queue never holds a task its consumers cannot run.
    """
    key = ",".join(sorted(set(skills))) + "|" + ",".join(sorted(set(types)))
    return "pool-" + hashlib.sha256(key.encode()).hexdigest()[:12]


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def safe_text(text: str) -> str:
    """``text`` with every NUL and lone surrogate replaced by U+FFFD: neither can be encoded as
    UTF-8 JSON nor stored in a Postgres ``text``/``jsonb``. (Invalid UTF-8 never gets this far:
    output is decoded with ``errors="replace"``, which yields U+FFFD too.)"""
    return _UNSTORABLE.sub(REPLACEMENT, text) if _UNSTORABLE.search(text) else text


def safe_value(value: Any) -> Any:
    """A JSON-like value with :func:`safe_text` applied to every string in it, keys included."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): safe_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [safe_value(v) for v in value]
    return value


SafeText = Annotated[str, AfterValidator(safe_text)]
"""Text an agent reports (log lines, errors, progress): made storable where it is built."""
SafeJson = Annotated[dict[str, Any], AfterValidator(safe_value)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int = WIRE_VERSION


class TaskMessage(_Wire):
    """One attempt of a task, as delivered to an agent of a pool."""

    task_id: UUID
    attempt: int = Field(ge=1)
    type: str
    input: dict[str, Any] = Field(default_factory=dict)
    requires: list[str] = Field(default_factory=list)
    timeout_s: float = Field(gt=0, description="wall-clock budget for this attempt, enforced by the sandbox")
    max_attempts: int = Field(ge=1, default=3)
    pool_id: str
    sandbox: dict[str, Any] = Field(default_factory=dict, description="per-task sandbox overrides")
    submitted_at: datetime = Field(default_factory=utcnow)


class LogLine(BaseModel):
    model_config = ConfigDict(frozen=True)
    seq: int = Field(ge=0, description="position of the line within the attempt's log")
    ts: datetime
    stream: Literal["stdout", "stderr", "system"] = "stdout"
    text: SafeText


class RunningTask(BaseModel):
    model_config = ConfigDict(frozen=True)
    task_id: UUID
    attempt: int
    progress: float | None = None
    message: SafeText | None = None


AgentState = Literal["active", "paused", "draining"]


class _EventBase(_Wire):
    agent_id: str
    seq: int = Field(ge=0)
    ts: datetime = Field(default_factory=utcnow)


class AgentHello(_EventBase):
    kind: Literal["hello"] = "hello"
    name: str
    pool_id: str
    skills: list[str]
    types: list[str]
    slots: int = Field(ge=1)
    host: str = ""
    pid: int = 0
    version: str = ""
    input_schemas: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="task type -> JSON schema of its handler's input"
    )


class AgentHeartbeat(_EventBase):
    kind: Literal["heartbeat"] = "heartbeat"
    pool_id: str
    state: AgentState = "active"
    free_slots: int = Field(ge=0)
    running: list[RunningTask] = Field(default_factory=list)


class AgentBye(_EventBase):
    """Sent when an agent leaves on purpose (drain finished, SIGTERM)."""

    kind: Literal["bye"] = "bye"
    pool_id: str


class _TaskEventBase(_EventBase):
    task_id: UUID
    attempt: int = Field(ge=1)
    proof: str | None = Field(
        default=None, repr=False,
        description="proof of delivery: agents.sdk.trust.delivery_proof of the attempt's delivery secret; the "
        "control plane refuses a task event without a valid one",
    )


class TaskStarted(_TaskEventBase):
    kind: Literal["started"] = "started"
    pool_id: str


class TaskProgress(_TaskEventBase):
    kind: Literal["progress"] = "progress"
    progress: float | None = Field(default=None, ge=0, le=1)
    message: SafeText | None = None


class TaskLog(_TaskEventBase):
    kind: Literal["log"] = "log"
    lines: list[LogLine]


class _TerminalBase(_TaskEventBase):
    started_at: datetime | None = Field(
        default=None,
        description="when the attempt started on the agent: the control plane records the start from it "
        "when no started event was applied before (an attempt short enough to send none, or a started "
        "event that another control plane applies later)",
    )


class TaskSucceeded(_TerminalBase):
    kind: Literal["succeeded"] = "succeeded"
    result: SafeJson = Field(default_factory=dict)
    duration_s: float = 0.0


FailureReason = Literal["error", "timeout", "cancelled"]


class TaskFailed(_TerminalBase):
    """A failed attempt. ``reason`` says why: ``timeout`` maps to ``timed_out``, ``cancelled`` to a
    cancelled attempt; ``error`` is retried when ``retryable`` and attempts remain."""

    kind: Literal["failed"] = "failed"
    reason: FailureReason = "error"
    error: SafeText
    error_type: SafeText = ""
    retryable: bool = True
    retry_delay_s: float | None = Field(default=None, ge=0)
    result: SafeJson = Field(default_factory=dict)
    duration_s: float = 0.0


Event = Annotated[
    AgentHello | AgentHeartbeat | AgentBye | TaskStarted | TaskProgress | TaskLog | TaskSucceeded | TaskFailed,
    Field(discriminator="kind"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENTS_ADAPTER: TypeAdapter[list[Event]] = TypeAdapter(list[Event])

TERMINAL_EVENT_KINDS = frozenset({"succeeded", "failed"})

BATCH_TYPE = "batch"
"""The AMQP ``type`` of an event batch message."""
HEADER_TRACEPARENTS = "x-devart-traceparents"


def batch_routing_key(agent_id: str) -> str:
    return f"agent.{agent_id}.{BATCH_TYPE}"


def decode_events(message_type: str | None, body: bytes) -> list[Event]:
    """The events of one message: its one event, or an event batch's (never empty). Raises
    ``ValidationError`` or ``ValueError`` for a body that is neither."""
    if message_type != BATCH_TYPE:
        return [EVENT_ADAPTER.validate_json(body)]
    events = EVENTS_ADAPTER.validate_json(body)
    if not events:
        raise ValueError("an empty event batch")
    return events


def event_headers(message_type: str | None, headers: Mapping[str, Any] | None, i: int) -> Mapping[str, Any] | None:
    """The headers that stand for the ``i``-th event of a message: the message's own for a single
    event; for an event batch, the event's entry of ``x-devart-traceparents``."""
    if message_type != BATCH_TYPE:
        return headers
    parents = (headers or {}).get(HEADER_TRACEPARENTS)
    if not isinstance(parents, list) or i >= len(parents):
        return None
    return {HEADER_TRACEPARENT: parents[i]}


def event_routing_key(event: Event) -> str:
    if isinstance(event, _TaskEventBase):
        return f"task.{event.task_id}.{event.kind}"
    return f"agent.{event.agent_id}.{event.kind}"


class ControlCommand(_Wire):
    """Control plane -> one agent. ``cancel`` names the task attempt to stop."""

    action: Literal["drain", "pause", "resume", "cancel"]
    task_id: UUID | None = None
    attempt: int | None = None
    reason: str = ""


# AMQP header names shared by both sides.
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
HEADER_DEAD_REASON = "x-devart-dead-reason"
