"""Request and response models of the workflow and run endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

RunState = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
RunTrigger = Literal["api", "schedule", "rerun", "webhook"]
JobState = Literal["waiting", "running", "succeeded", "failed", "skipped", "cancelled"]


class SchedulePublic(BaseModel):
    cron: str
    missed: str
    next_at: datetime
    last_at: datetime | None


class WorkflowVersion(BaseModel):
    version: int
    digest: str
    created_by: str
    created_at: datetime


class WorkflowPublic(BaseModel):
    name: str
    version: int = Field(description="the version shown; runs keep the version they started with")
    digest: str = Field(description="SHA-256 of the canonical JSON of the definition")
    created_by: str
    created_at: datetime
    definition: dict[str, Any] = Field(description="the definition as applied (JSON form of the YAML)")
    schedule: SchedulePublic | None = None


class WorkflowDetail(WorkflowPublic):
    versions: list[WorkflowVersion]


class WorkflowList(BaseModel):
    items: list[WorkflowPublic]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] = Field(default_factory=dict, description="values of the workflow's declared inputs")
    version: int | None = Field(default=None, ge=1, description="a version to run; default the latest")


class RunPublic(BaseModel):
    id: UUID
    workflow: str
    version: int
    state: RunState
    state_reason: str
    inputs: dict[str, Any]
    trigger: RunTrigger
    concurrency_group: str | None
    rerun_of: UUID | None = Field(description="the run this one re-runs, if any")
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPublic(BaseModel):
    job: str = Field(description="the step's name, or name[key=value,...] for one combination of a matrix")
    step: str
    phase: Literal["main", "finally"]
    matrix: dict[str, Any] | None
    state: JobState
    skip_reason: str | None = Field(description="why it was skipped: needs_unmet: <step>=<result>, ... or if_false")
    reason: str
    task_id: UUID | None
    task_status: str | None
    approval_id: str | None
    attempts: int
    outputs: dict[str, Any] | None
    reused_from: UUID | None = Field(description="the earlier run whose result this job kept (re-runs)")
    started_at: datetime | None
    finished_at: datetime | None
    task_started_at: datetime | None
    task_finished_at: datetime | None


class RunTransitionPublic(BaseModel):
    job: str | None = Field(description="null for the run itself")
    from_state: str | None
    to_state: str
    at: datetime
    actor: str
    reason: str


class RunDetail(RunPublic):
    steps: list[JobPublic]
    transitions: list[RunTransitionPublic]


class RunPage(BaseModel):
    items: list[RunPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")
