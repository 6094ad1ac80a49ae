"""Agents publish their handlers' input schemas; the control plane refuses bad input at submission."""

from __future__ import annotations

from pathlib import Path

import httpx

from agents.examples.hello import build_agent as hello_agent
from agents.sandbox import SandboxSettings
from agents.shell import build_shell_agent
from tests.support.system import StartAgent, wait_for


async def _types(api: httpx.AsyncClient, *names: str) -> list[dict] | None:
    listed = (await api.get("/api/v1/task-types")).json()
    return listed if {t["type"] for t in listed} >= set(names) else None


async def test_submit_time_422_from_a_published_schema(
    admin: httpx.AsyncClient, start_agent: StartAgent, tmp_path: Path
) -> None:
    await start_agent(build_shell_agent(slots=1, settings=SandboxSettings(root=tmp_path)))
    await start_agent(hello_agent(slots=1))
    listed = await wait_for(lambda: _types(admin, "shell", "greet"), what="both pools to be live")

    shell = next(t for t in listed if t["type"] == "shell")
    [pool] = shell["pools"]
    assert pool["live_agents"] == 1 and "shell" in pool["skills"]
    assert pool["input_schema"]["properties"]["command"]["anyOf"][0]["type"] == "array"

    bad = await admin.post("/api/v1/tasks", json={"type": "shell", "requires": ["shell"],
                                                  "input": {"command": "echo hi"}})
    assert bad.status_code == 422, bad.text
    error = bad.json()["error"]
    assert error["field"] == "body.input.command" and "input schema of task type 'shell'" in error["message"]

    empty_name = await admin.post("/api/v1/tasks", json={"type": "greet", "requires": ["greeting"],
                                                         "input": {"name": ""}})
    assert empty_name.status_code == 422 and empty_name.json()["error"]["field"] == "body.input.name"
    missing = await admin.post("/api/v1/tasks", json={"type": "greet", "requires": ["greeting"], "input": {}})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "body.input"

    batch = await admin.post("/api/v1/tasks/batch", json={"tasks": [
        {"type": "greet", "requires": ["greeting"], "input": {"name": "Ada"}},
        {"type": "greet", "requires": ["greeting"], "input": {"name": "Ada", "times": 99}},
    ]})
    assert batch.status_code == 422 and batch.json()["error"]["field"] == "body.tasks.1.input.times"
    assert (await admin.get("/api/v1/tasks")).json()["items"] == []  # nothing half-written

    good = await admin.post("/api/v1/tasks", json={"type": "greet", "requires": ["greeting"],
                                                   "input": {"name": "Ada"}})
    assert good.status_code == 201


async def test_a_type_no_live_pool_declares_is_not_checked(admin: httpx.AsyncClient) -> None:
    created = await admin.post("/api/v1/tasks", json={"type": "greet", "input": {"name": ""}})
    assert created.status_code == 201 and created.json()["status"] == "pending"
    assert (await admin.get("/api/v1/task-types")).json() == []


async def test_readers_only(base_url: str, database_url: str) -> None:
    from tests.support.system import client, make_token

    async with client(base_url, await make_token(database_url, "agent")) as agent:
        assert (await agent.get("/api/v1/task-types")).status_code == 403
    async with client(base_url, None) as anonymous:
        assert (await anonymous.get("/api/v1/task-types")).status_code == 401
