"""The built-in shell agent: ``shell`` tasks run a command or script in the agent's sandbox."""

from __future__ import annotations

from agents.shell.agent import build_shell_agent
from agents.shell.handler import CommandCancelled, CommandFailed, CommandTimedOut, run_shell, shell_handler
from agents.shell.models import ShellInput, ShellResult

__all__ = [
    "CommandCancelled",
    "CommandFailed",
    "CommandTimedOut",
    "ShellInput",
    "ShellResult",
    "build_shell_agent",
    "run_shell",
    "shell_handler",
]
