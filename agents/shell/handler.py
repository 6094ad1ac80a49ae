"""The ``shell`` task handler: run a command in this agent's sandbox and map how it ended.

Failures travel as exceptions carrying ``result`` (the :class:`ShellResult` as a dict), which the
runtime puts into the failure event: ``CommandFailed`` (not retried), ``CommandTimedOut`` (a
``TimeoutError``, reported as timed out) and ``CommandCancelled`` (the runtime already knows it
cancelled; the exception only carries the partial result).
"""

from __future__ import annotations

import math

from pydantic import ValidationError

from agents.sandbox import (
    OverrideNotAllowed,
    Sandbox,
    SandboxError,
    SandboxOverrides,
    SandboxSettings,
    SandboxSpec,
    make_sandbox,
)
from agents.sdk import NonRetryableError, TaskContext, task_handler
from agents.sdk.handlers import HandlerDefinition
from agents.shell.models import ShellInput, ShellResult


class _CarriesResult(Exception):
    def __init__(self, message: str, *, result: ShellResult) -> None:
        super().__init__(message)
        self.result = result.model_dump(mode="json")


class CommandFailed(_CarriesResult, NonRetryableError):
    """The command (or the checkout before it) failed; running it again would not help."""


class CommandTimedOut(_CarriesResult, TimeoutError):
    """The command ran out of time and its process tree was killed."""


class CommandCancelled(_CarriesResult, NonRetryableError):
    """The task was cancelled and the command's process tree was killed."""


class _ShellRunner:
    """Sandboxes are made on first use, once per kind, from settings read at that moment."""

    def __init__(self, settings: SandboxSettings | None) -> None:
        self._settings = settings
        self._sandboxes: dict[str, Sandbox] = {}

    def _current_settings(self) -> SandboxSettings:
        if self._settings is None:
            self._settings = SandboxSettings()
        return self._settings

    def _sandbox(self, settings: SandboxSettings, kind: str | None) -> Sandbox:
        kind = kind or settings.kind
        if kind not in self._sandboxes:
            self._sandboxes[kind] = make_sandbox(settings.model_copy(update={"kind": kind}))
        return self._sandboxes[kind]

    async def run(self, ctx: TaskContext, data: ShellInput) -> ShellResult:
        settings = self._current_settings()
        if data.timeout_s is not None and data.timeout_s > ctx.timeout_s:
            raise NonRetryableError(
                f"timeout_s: {data.timeout_s:g}s exceeds the task's timeout of {ctx.timeout_s:g}s"
            )
        overrides = _overrides(ctx, data, settings)
        timeout_s = min(data.timeout_s or math.inf, ctx.remaining())
        if timeout_s <= 0:
            raise TimeoutError("no time left before the task's deadline")
        spec = SandboxSpec(
            task_id=str(ctx.task_id),
            attempt=ctx.attempt,
            command=data.command,
            script=data.script,
            env=data.env,
            secret_env=data.secret_env,
            repo=data.repo,
            ref=data.ref,
            workdir=data.workdir,
            timeout_s=timeout_s,
            artifacts=data.artifacts,
            traceparent=ctx.traceparent,
            **overrides.model_dump(include={"image", "resources"}, exclude_unset=True, exclude_none=True),
        )

        async def forward(stream: str, line: str) -> None:
            await ctx.log(line, stream)

        sandbox = self._sandbox(settings, overrides.kind)
        try:
            outcome = await sandbox.run(spec, on_log=forward, cancel=ctx.cancelled)
        except SandboxError as exc:
            raise NonRetryableError(str(exc)) from exc
        result = ShellResult.from_sandbox(outcome)
        if outcome.outcome == "succeeded":
            return result
        if outcome.outcome == "timed_out":
            raise CommandTimedOut(f"command timed out: {outcome.reason}", result=result)
        if outcome.outcome == "cancelled":
            raise CommandCancelled("command cancelled", result=result)
        raise CommandFailed(f"command failed: {outcome.reason}", result=result)


def _overrides(ctx: TaskContext, data: ShellInput, settings: SandboxSettings) -> SandboxOverrides:
    """The task's sandbox overrides with the input's on top, checked against the allow-list."""
    requested = {**ctx.sandbox, **(data.sandbox.model_dump(exclude_unset=True) if data.sandbox else {})}
    try:
        merged = SandboxOverrides.model_validate(requested)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(part) for part in ("sandbox", *error["loc"])) + f": {error['msg']}"
            for error in exc.errors()
        )
        raise NonRetryableError(f"invalid sandbox overrides: {problems}") from None
    try:
        settings.check_overrides(merged)
    except OverrideNotAllowed as exc:
        raise NonRetryableError(str(exc)) from None
    return merged


def shell_handler(settings: SandboxSettings | None = None) -> HandlerDefinition:
    """A ``shell`` handler using sandboxes built from ``settings`` (default: the environment, read on first task)."""
    return task_handler("shell", input=ShellInput)(_ShellRunner(settings).run)


run_shell = shell_handler()
"""The ``shell`` handler of this process, configured by ``DEVART_SANDBOX_*`` variables."""
