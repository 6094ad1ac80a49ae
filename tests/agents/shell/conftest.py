"""Shell tests: handlers over a private sandbox root, and a TaskContext built by hand."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from agents.sandbox import SandboxSettings
from agents.sdk import TaskContext


@pytest.fixture
def sandbox_settings(tmp_path: Path) -> SandboxSettings:
    return SandboxSettings(root=tmp_path / "sandboxes", kill_grace_s=0.5)


class Collected:
    """A TaskContext whose log lines are kept, as ``(stream, text)``."""

    def __init__(self, timeout_s: float = 30.0, **fields: object) -> None:
        self.logs: list[tuple[str, str]] = []

        async def sink(stream: str, text: str) -> None:
            self.logs.append((stream, text))

        defaults: dict[str, object] = {"task_id": uuid.uuid4(), "attempt": 1, "type": "shell"}
        self.ctx = TaskContext(
            timeout_s=timeout_s,
            deadline=asyncio.get_running_loop().time() + timeout_s,
            _log_sink=sink,
            **{**defaults, **fields},  # type: ignore[arg-type]
        )
