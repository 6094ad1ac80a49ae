"""Per-task state handed to handlers, and reachable anywhere below them through a contextvar."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

LogSink = Callable[[str, str], Awaitable[None]]
ProgressSink = Callable[[float | None, str | None], Awaitable[None]]

_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("devart_task", default=None)

_logger = logging.getLogger("devart.task")


class TaskLogger(logging.LoggerAdapter):
    """Stamps every record with the task and attempt of the context it runs in."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        ctx = _current.get()
        extra = dict(kwargs.get("extra") or {})
        if ctx is not None:
            extra.setdefault("task_id", str(ctx.task_id))
            extra.setdefault("attempt", ctx.attempt)
            msg = f"[task {ctx.task_id} attempt {ctx.attempt}] {msg}"
        kwargs["extra"] = extra
        return msg, kwargs


task_logger = TaskLogger(_logger, {})


class CancelRequest(asyncio.Event):
    """``ctx.cancelled``: an :class:`asyncio.Event` that also calls back whoever waits for an
    attempt's end, so the runtime needs no task parked in ``wait()`` for every attempt."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        if not self.is_set():
            super().set()
            for callback in self._callbacks:
                callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.remove(callback)


async def _discard_log(stream: str, line: str) -> None:
    return None


async def _discard_progress(fraction: float | None, message: str | None) -> None:
    return None


@dataclass
class TaskContext:
    """What a handler knows about the attempt it runs, and how it reports back."""

    task_id: UUID
    attempt: int
    type: str
    timeout_s: float
    max_attempts: int = 1
    pool_id: str = ""
    agent_id: str = ""
    sandbox: dict[str, Any] = field(default_factory=dict)
    traceparent: str | None = None
    cancelled: CancelRequest = field(default_factory=CancelRequest)
    deadline: float = 0.0
    """``loop.time()`` after which the attempt is out of time (set by the runtime)."""
    _log_sink: LogSink = _discard_log
    _progress_sink: ProgressSink = _discard_progress

    @property
    def logger(self) -> TaskLogger:
        return task_logger

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    async def log(self, text: str, stream: str = "stdout") -> None:
        """Append a line to the task's log (batched by the runtime)."""
        await self._log_sink(stream, text)

    async def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress; the next heartbeat carries it to the control plane."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError("progress fraction must be within [0, 1]")
        await self._progress_sink(fraction, message)

    @contextmanager
    def activate(self) -> Iterator[TaskContext]:
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


def current_task() -> TaskContext:
    """The context of the task being run; raises outside a handler."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("current_task() called outside a task handler")
    return ctx
