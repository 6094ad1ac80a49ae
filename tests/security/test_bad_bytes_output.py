"""Attack: a task prints a NUL byte, invalid UTF-8 and a lone surrogate's UTF-8 encoding. The task
still succeeds and keeps every line; the unstorable characters are stored as U+FFFD."""

from __future__ import annotations

from pathlib import Path

import httpx

from agents.sandbox import SandboxSettings
from agents.shell import build_shell_agent
from tests.support.system import StartAgent, wait_for

SCRIPT = r"printf 'before\n\000nul\nbad \377 utf8\nsurrogate \355\240\200 bytes\nafter\n'"


async def test_nul_and_invalid_utf8_in_output_lose_nothing(
    admin: httpx.AsyncClient, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = build_shell_agent(slots=1, settings=SandboxSettings(root=tmp_path / "sandboxes", kill_grace_s=0.5))
    await start_agent(agent)
    created = await admin.post("/api/v1/tasks", json={"type": "shell", "input": {"script": SCRIPT},
                                                     "requires": ["shell"], "timeout_s": 30})
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    async def finished() -> dict | None:
        task = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
        return task if task["status"] not in ("pending", "queued", "running") else None

    task = await wait_for(finished, timeout_s=30, what="the task to finish")
    assert task["status"] == "succeeded", task["status_reason"]
    assert "\ufffdnul" in task["result"]["stdout_tail"]
    lines = (await admin.get(f"/api/v1/tasks/{task_id}/logs")).json()["lines"]
    assert [line["line"] for line in lines] == [
        "before", "\ufffdnul", "bad \ufffd utf8", "surrogate \ufffd\ufffd\ufffd bytes", "after",
    ]
