"""What an agent is: a name, its skills, how many tasks it runs at once, and its handlers."""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Sequence

from agents.sdk.handlers import HandlerDefinition
from agents.sdk.messages import pool_id

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SKILL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")


class Agent:
    """An agent definition, independent of any broker connection.

    ``types`` are the task types of ``handlers``; ``pool_id`` is the queue the agent competes on
    with every agent of the same skills and types. ``agent_id`` names this process on the broker.
    """

    def __init__(
        self,
        name: str,
        skills: Sequence[str],
        slots: int,
        handlers: Sequence[HandlerDefinition],
        *,
        version: str = "",
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"name {name!r} must be 1-63 letters, digits, '-', '_', '.' (starting alphanumeric)"
            )
        if isinstance(skills, str):
            raise TypeError("skills must be a sequence of strings, not one string")
        bad = [skill for skill in skills if not isinstance(skill, str) or not _SKILL.match(skill)]
        if bad:
            raise ValueError(f"skills {bad!r} must be 1-63 letters, digits, '-', '_', '.', ':'")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an integer >= 1, got {slots!r}")
        if not handlers:
            raise ValueError("handlers must name at least one @task_handler")
        by_type: dict[str, HandlerDefinition] = {}
        for handler in handlers:
            if not isinstance(handler, HandlerDefinition):
                raise TypeError(f"handlers must be @task_handler definitions, got {handler!r}")
            if handler.type in by_type:
                raise ValueError(f"two handlers for task type {handler.type!r}")
            by_type[handler.type] = handler
        self.name = name
        self.skills: tuple[str, ...] = tuple(sorted(set(skills)))
        self.slots = slots
        self.version = version
        self.handlers: dict[str, HandlerDefinition] = by_type
        self.types: tuple[str, ...] = tuple(sorted(by_type))
        self.pool_id = pool_id(self.skills, self.types)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.agent_id = f"{name}-{self.host.split('.')[0]}-{self.pid}-{secrets.token_hex(2)}"

    def handler_for(self, task_type: str) -> HandlerDefinition | None:
        """The handler of ``task_type``, or None when this agent does not run it."""
        return self.handlers.get(task_type)

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, pool_id={self.pool_id!r}, types={list(self.types)!r}, slots={self.slots})"
