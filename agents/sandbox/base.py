"""The one protocol every sandbox implements, and the values that cross it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

LogSink = Callable[[str, str], Awaitable[None]]
"""``await on_log(stream, line)`` with stream ``stdout`` or ``stderr``; lines without the newline."""


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    cpu: str = Field(default="1", description="Kubernetes quantity, e.g. '500m'; local: CPU seconds cap derives from timeout")
    memory: str = Field(default="512Mi", description="Kubernetes quantity; local: address-space limit")


class SecretRef(BaseModel):
    """A value that lives in a secret store, never in the spec itself (Kubernetes: a Secret key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    key: str


class SandboxSpec(BaseModel):
    """What to run. ``command`` is an argv list; ``script`` a shell script run by ``/bin/sh -eu``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    task_id: str
    attempt: int = 1
    command: list[str] | None = None
    script: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, SecretRef] = Field(default_factory=dict)
    repo: str | None = Field(default=None, description="git URL or local path checked out before the command")
    ref: str | None = Field(default=None, description="branch, tag or commit of repo")
    workdir: str = Field(default=".", description="directory inside the checkout to run in")
    timeout_s: float = Field(default=600, gt=0)
    image: str | None = None
    resources: Resources = Field(default_factory=Resources)
    artifacts: list[str] = Field(default_factory=list, description="glob patterns, relative to the checkout")
    labels: dict[str, str] = Field(default_factory=dict)
    traceparent: str | None = None


Outcome = Literal["succeeded", "failed", "timed_out", "cancelled"]


class SandboxResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    outcome: Outcome
    exit_code: int | None = None
    reason: str | None = Field(default=None, description="e.g. OOMKilled, DeadlineExceeded, signal")
    duration_s: float = 0.0
    stdout_tail: str = ""
    stderr_tail: str = ""
    output_truncated: bool = False
    artifacts: list[str] = Field(default_factory=list)


@runtime_checkable
class Sandbox(Protocol):
    """Runs one spec to completion, streaming its output, honouring its deadline and ``cancel``.

    ``run`` never raises for the command's own failure: that is an outcome. It raises only when
    the sandbox itself cannot work (bad spec, infrastructure down).
    """

    async def run(self, spec: SandboxSpec, *, on_log: LogSink, cancel: asyncio.Event) -> SandboxResult: ...
