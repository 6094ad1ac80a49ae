"""Attack: open server-sent event streams until the API falls over. Each stream once held a
database connection for its whole life, so seven of them starved every other request, /readyz and
the background loops. Now streams hold none, are capped per token and per process (429 beyond),
send heartbeats, and end when their token is revoked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from agents.noop import build_agent as noop_agent
from agents.sdk import BrokerSettings
from control_plane.settings import Settings
from tests.support.system import StartAgent, client, fast_settings, make_token, wait_for

PER_TOKEN = 8
GLOBAL = 16


@pytest.fixture
def settings(database_url: str, broker_settings: BrokerSettings) -> Settings:
    return fast_settings(database_url, broker_settings, sse_max_streams=GLOBAL, sse_max_streams_per_token=PER_TOKEN,
                         sse_heartbeat_s=0.3, sse_revocation_check_s=0.2)


class OpenStream:
    """A stream opened by a real HTTP client and read in the background, line by line."""

    def __init__(self, api: httpx.AsyncClient, path: str) -> None:
        self.lines: list[str] = []
        self.status = 0
        self.ended = asyncio.Event()
        self.opened = asyncio.Event()
        self._task = asyncio.create_task(self._read(api, path))

    async def _read(self, api: httpx.AsyncClient, path: str) -> None:
        try:
            async with api.stream("GET", path, timeout=httpx.Timeout(10.0, read=None)) as response:
                self.status = response.status_code
                self.opened.set()
                async for line in response.aiter_lines():
                    self.lines.append(line)
        finally:
            self.opened.set()
            self.ended.set()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._task


@contextlib.asynccontextmanager
async def streams(api: httpx.AsyncClient, count: int, path: str = "/api/v1/events") -> AsyncIterator[list[OpenStream]]:
    opened = [OpenStream(api, path) for _ in range(count)]
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(s.opened.wait() for s in opened))
        yield opened
    finally:
        for stream in opened:
            await stream.close()


async def test_streams_up_to_the_caps_then_429_while_the_api_and_loops_go_on(
    admin: httpx.AsyncClient, base_url: str, database_url: str, start_agent: StartAgent
) -> None:
    await start_agent(noop_agent(skills=["python"]))
    limits = httpx.Limits(max_connections=GLOBAL + 8)
    tokens = [await make_token(database_url, "viewer", f"viewer-{i}") for i in range(3)]
    first, second, third = (httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {t}"},
                                              limits=limits, timeout=10.0) for t in tokens)
    async with first, second, third, streams(first, PER_TOKEN) as mine:
        assert all(s.status == 200 for s in mine), [(s.status, s.lines[:3]) for s in mine]
        over = await first.get("/api/v1/events")
        assert over.status_code == 429 and over.json()["error"]["field"] == "Authorization", over.text
        follow = await first.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/logs")
        assert follow.status_code == 404  # a plain log page is no stream and needs no stream slot

        async with streams(second, GLOBAL - PER_TOKEN) as theirs:
            assert all(s.status == 200 for s in theirs)
            full = await third.get("/api/v1/events")
            assert full.status_code == 429, full.text

            # with every stream slot taken, requests, readiness and the background loops go on
            assert (await third.get("/api/v1/tasks")).status_code == 200
            assert (await third.get("/readyz")).status_code == 200
            created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["python"]})).json()

            async def succeeded() -> bool:
                return (await admin.get(f"/api/v1/tasks/{created['id']}")).json()["status"] == "succeeded"

            await wait_for(succeeded, what="a task to run while every stream slot is taken")
            # ... and every open stream saw it, with heartbeats in between
            await wait_for(lambda: _all_saw(mine + theirs, created["id"]), what="every stream to see the task")
            await wait_for(lambda: _all_heartbeat(mine + theirs), what="heartbeats")
        # closed streams free their slots
        async def reopened() -> bool:
            async with third.stream("GET", "/api/v1/events") as response:
                return response.status_code == 200

        await wait_for(reopened, what="a freed slot")


async def _all_saw(opened: list[OpenStream], task_id: str) -> bool:
    return all(any(task_id in line and '"succeeded"' in line for line in s.lines) for s in opened)


async def _all_heartbeat(opened: list[OpenStream]) -> bool:
    return all(": keepalive" in s.lines for s in opened)


async def test_a_revoked_tokens_streams_end(admin: httpx.AsyncClient, base_url: str, database_url: str) -> None:
    created = (await admin.post("/api/v1/tokens", json={"name": "watcher", "role": "viewer"})).json()
    other = await make_token(database_url, "viewer", "elsewhere")
    async with client(base_url, created["token"]) as watcher, client(base_url, other) as elsewhere, \
            streams(watcher, 2) as revoked_here, \
            streams(watcher, 1, "/api/v1/tasks/00000000-0000-0000-0000-000000000001/logs?follow=true") as missing, \
            streams(elsewhere, 1) as revoked_elsewhere:
        assert missing[0].status == 404
        # revoked through this API process: its streams end at once
        assert (await admin.delete(f"/api/v1/tokens/{created['id']}")).status_code == 204
        async with asyncio.timeout(10):
            await asyncio.gather(*(s.ended.wait() for s in revoked_here))
        # revoked by another process (here: straight in the database): within the check interval
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = 'elsewhere'")
        finally:
            await conn.close()
        async with asyncio.timeout(10):
            await revoked_elsewhere[0].ended.wait()
