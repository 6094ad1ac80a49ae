"""Run one handler with no broker: what the runtime would report, plus everything it logged."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from agents.sdk.context import TaskContext
from agents.sdk.handlers import HandlerDefinition
from agents.sdk.messages import LogLine, utcnow
from agents.sdk.runtime import AttemptOutcome, execute_attempt


@dataclass(frozen=True)
class HandlerOutcome(AttemptOutcome):
    """An :class:`AttemptOutcome` with the log lines and progress reports the handler made."""

    logs: list[tuple[str, str]] = field(default_factory=list)
    """``(stream, text)`` in the order the handler logged them."""
    progress: list[tuple[float | None, str | None]] = field(default_factory=list)
    """``(fraction, message)`` in the order the handler reported them."""


async def run_handler(
    handler: HandlerDefinition,
    input: dict[str, Any] | BaseModel,
    *,
    timeout_s: float = 60.0,
    cancel_after: float | None = None,
    grace_s: float = 5.0,
    task_id: UUID | None = None,
    attempt: int = 1,
    max_attempts: int = 3,
    sandbox: dict[str, Any] | None = None,
) -> HandlerOutcome:
    """Run ``handler`` once on ``input`` exactly as an agent would, and report how it ended.

    ``cancel_after`` (seconds) requests cancellation like a ``cancel`` control command does;
    ``grace_s`` is the time the handler then gets, and the time it gets past ``timeout_s``.
    """
    data = input.model_dump(mode="json") if isinstance(input, BaseModel) else input
    logs: list[tuple[str, str]] = []
    progress: list[tuple[float | None, str | None]] = []

    async def collect_log(stream: str, text: str) -> None:
        line = LogLine(seq=len(logs), ts=utcnow(), stream=stream, text=text)  # same checks as on the wire
        logs.append((line.stream, line.text))

    async def collect_progress(fraction: float | None, message: str | None) -> None:
        progress.append((fraction, message))

    ctx = TaskContext(
        task_id=task_id or uuid.uuid4(),
        attempt=attempt,
        type=handler.type,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        pool_id="testing",
        agent_id="testing",
        sandbox=dict(sandbox or {}),
        _log_sink=collect_log,
        _progress_sink=collect_progress,
    )
    canceller = None
    if cancel_after is not None:
        canceller = asyncio.get_running_loop().call_later(cancel_after, ctx.cancelled.set)
    try:
        outcome = await execute_attempt(handler, ctx, data, grace_s=grace_s)
    finally:
        if canceller is not None:
            canceller.cancel()
    return HandlerOutcome(
        **{f.name: getattr(outcome, f.name) for f in dataclasses.fields(outcome)},
        logs=logs,
        progress=progress,
    )
