"""Server-sent event streams: state changes and followed logs arrive live."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx

from agents.noop import build_agent as noop_agent
from tests.support.system import StartAgent


async def _events(
    api: httpx.AsyncClient, path: str, until: Callable[[dict], bool], out: list[tuple[str, dict]],
    opened: asyncio.Event | None = None,
) -> None:
    async with api.stream("GET", path, timeout=None) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = ""
        async for line in stream.aiter_lines():
            if line == ": connected" and opened is not None:
                opened.set()
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
                if until(out[-1][1]):
                    return


async def test_event_stream_carries_every_transition(admin: httpx.AsyncClient, start_agent: StartAgent) -> None:
    await start_agent(noop_agent(skills=["python"]))
    seen: list[tuple[str, dict]] = []
    opened = asyncio.Event()
    listener = asyncio.create_task(_events(admin, "/api/v1/events", lambda data: data.get("to") == "succeeded", seen, opened))
    async with asyncio.timeout(20):
        await opened.wait()
        created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["python"]})).json()
        await listener
    mine = [data for kind, data in seen if kind == "task" and data["task_id"] == created["id"]]
    assert [d["to"] for d in mine] == ["pending", "queued", "running", "succeeded"]


async def test_log_follow_streams_until_the_end(admin: httpx.AsyncClient) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "noop"})).json()
    seen: list[tuple[str, dict]] = []
    follower = asyncio.create_task(_events(admin, f"/api/v1/tasks/{created['id']}/logs?follow=true",
                                           lambda data: set(data) == {"status"}, seen))
    await admin.post(f"/api/v1/tasks/{created['id']}/cancel")
    async with asyncio.timeout(20):
        await follower
    assert seen[-1] == ("end", {"status": "cancelled"})
    # status frames say what the task waits for (the follower may connect after the cancel), then how it ended
    statuses = [data["status"] for kind, data in seen if kind == "status"]
    assert set(statuses) <= {"pending", "cancelled"} and statuses[-1] == "cancelled"
