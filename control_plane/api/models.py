"""Request and response models of the REST API, split by role (``TaskCreate`` in, ``TaskPublic`` out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
TaskStatus = Literal["pending", "queued", "running", "succeeded", "failed", "dead", "cancelled", "timed_out"]


class BackoffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_s: float | None = Field(default=None, gt=0, le=3600, description="first retry delay")
    factor: float | None = Field(default=None, ge=1, le=10, description="growth per attempt")
    cap_s: float | None = Field(default=None, gt=0, le=86400, description="longest delay")
    jitter: float | None = Field(default=None, ge=0, le=1, description="fraction randomised (+/-)")


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Name = Field(description="task type; an agent pool must handle it")
    input: dict[str, Any] = Field(default_factory=dict, description="handler input (JSON object)")
    requires: list[Name] = Field(default_factory=list, max_length=32, description="capabilities the agent must have")
    timeout_s: float | None = Field(default=None, gt=0, description="wall-clock budget per attempt")
    start_timeout_s: float | None = Field(
        default=None, gt=0,
        description="the task ends timed_out unless an attempt starts this long after it is queued "
        "(submission, for the first attempt); default DEVART_DEFAULT_START_TIMEOUT_S",
    )
    deadline_s: float | None = Field(
        default=None, gt=0,
        description="overall deadline from submission, whatever the state; default DEVART_DEFAULT_DEADLINE_S (none)",
    )
    max_attempts: int | None = Field(default=None, ge=1, description="attempts before the task is dead")
    backoff: BackoffIn | None = None
    sandbox: dict[str, Any] = Field(default_factory=dict, description="per-task sandbox overrides (allow-listed)")


class TaskBatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[TaskCreate] = Field(min_length=1, description="tasks created all or none, in this order")


class AttemptPublic(BaseModel):
    attempt: int
    status: str
    pool_id: str | None
    agent_id: str | None
    deliveries: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    retry_at: datetime | None
    progress: float | None
    progress_msg: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None


class TransitionPublic(BaseModel):
    attempt: int
    from_status: str | None
    to_status: str
    at: datetime
    actor: str
    reason: str


class TaskBatch(BaseModel):
    tasks: list[TaskPublic] = Field(description="the created tasks, in the order of the request")


class TaskPublic(BaseModel):
    id: UUID
    type: str
    status: TaskStatus
    status_reason: str
    requires: list[str]
    pool_id: str | None
    agent_id: str | None
    attempt: int
    max_attempts: int
    timeout_s: float
    start_timeout_s: float
    start_deadline_at: datetime | None = Field(description="when the current attempt must have started by")
    deadline_s: float | None
    expires_at: datetime | None = Field(description="the overall deadline from submission, if any")
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    trace_id: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TaskDetail(TaskPublic):
    input: dict[str, Any]
    sandbox: dict[str, Any]
    backoff: dict[str, float]
    attempts: list[AttemptPublic]
    transitions: list[TransitionPublic]


class TaskPage(BaseModel):
    items: list[TaskPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class LogLinePublic(BaseModel):
    position: int = Field(description="order of the line among the task's stored lines")
    attempt: int
    agent_id: str = Field(description="the agent that ran the attempt when the line was written")
    seq: int = Field(description="the line's number within what that agent logged for the attempt")
    ts: datetime
    stream: str
    line: str


class LogPage(BaseModel):
    lines: list[LogLinePublic]
    next_after: str | None = Field(description="pass as ?after= to continue; null when nothing was returned")


class AgentPublic(BaseModel):
    id: str
    name: str
    pool_id: str
    skills: list[str]
    types: list[str]
    slots: int
    free_slots: int
    state: str
    live: bool
    host: str
    pid: int
    version: str
    running: list[dict[str, Any]]
    running_tasks: list[UUID]
    started_at: datetime
    last_heartbeat: datetime


class PoolPublic(BaseModel):
    id: str
    skills: list[str]
    types: list[str]
    live_agents: int
    free_slots: int
    queue_depth: int = Field(description="tasks queued for this pool (including delayed retries)")
    in_flight: int = Field(description="tasks running on this pool's agents")


class CommandAccepted(BaseModel):
    agent_id: str
    action: str


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    role: Literal["admin", "supervisor", "viewer", "ci", "agent"]
    pools: list[str] | None = Field(default=None, max_length=1000,
                                    description="agent tokens: the pools its agents may register in (unset: any "
                                    "pool, refused at registration in production)")


class TokenCreated(BaseModel):
    id: UUID
    name: str
    role: str
    pools: list[str] | None
    token: str = Field(description="the secret; shown once, store it now")


class TokenPublic(BaseModel):
    id: UUID
    name: str
    role: str
    pools: list[str] | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None
