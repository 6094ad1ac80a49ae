"""The built-in shell agent: runs ``shell`` tasks (build, test, anything with a command line)."""

from __future__ import annotations

from collections.abc import Sequence

from agents.sandbox import SandboxSettings
from agents.sdk import Agent
from agents.shell.handler import run_shell, shell_handler


def build_shell_agent(
    slots: int = 2,
    skills: Sequence[str] = ("shell", "build", "test"),
    name: str = "shell",
    settings: SandboxSettings | None = None,
) -> Agent:
    """An agent running ``shell`` tasks; ``settings`` defaults to the ``DEVART_SANDBOX_*`` environment."""
    handler = run_shell if settings is None else shell_handler(settings)
    return Agent(name, skills, slots, handlers=[handler])
