"""Registering task handlers: ``@task_handler("type", input=Model)`` on a plain async function."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from agents.sdk.context import TaskContext

HandlerFn = Callable[["TaskContext", Any], Awaitable[BaseModel | dict[str, Any] | None]]


@dataclass(frozen=True)
class HandlerDefinition:
    """A validated handler: the task type it serves, its input model and the function."""

    type: str
    input_model: type[BaseModel]
    fn: HandlerFn

    def parse_input(self, data: dict[str, Any]) -> BaseModel:
        return self.input_model.model_validate(data)

    async def __call__(self, ctx: TaskContext, data: BaseModel) -> BaseModel | dict[str, Any] | None:
        return await self.fn(ctx, data)


def task_handler(type: str, *, input: type[BaseModel]) -> Callable[[HandlerFn], HandlerDefinition]:
    """Declare ``fn(ctx, input)`` as the handler of tasks of ``type``.

    The function must be ``async`` and take exactly two parameters; the input model must be a
    pydantic model. Both are checked here, at registration, not at the first task.
    """
    if not type or not type.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"task type {type!r} must be non-empty and made of letters, digits, '-', '_', '.'")
    if not (inspect.isclass(input) and issubclass(input, BaseModel)):
        raise TypeError("input must be a pydantic BaseModel subclass")

    def register(fn: HandlerFn) -> HandlerDefinition:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an async function")
        if len(inspect.signature(fn).parameters) != 2:
            raise TypeError(f"handler {fn.__qualname__} must take (ctx, input)")
        return HandlerDefinition(type=type, input_model=input, fn=fn)

    return register
