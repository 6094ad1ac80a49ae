"""Running devart's real parts inside a test: the control plane behind a real HTTP server, agents."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from agents.sdk import AgentRuntime
from agents.sdk.trust import AgentCredentials
from control_plane import identity
from control_plane.agent_keys import register_agent
from control_plane.api.app import create_app
from control_plane.auth import Principal, create_token
from control_plane.db import connect
from control_plane.service import ControlPlane
from control_plane.serving import serve_in_process
from control_plane.settings import Settings

StartAgent = Callable[..., Awaitable[AgentRuntime]]
"""The ``start_agent`` fixture: ``await start_agent(agent, **runtime_setting_overrides)``."""


async def wait_for(condition: Callable[[], Awaitable[Any]], *, timeout_s: float = 20.0, interval_s: float = 0.02,
                   what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last value: {value!r})")
        await asyncio.sleep(interval_s)


async def post_until_created(next_api: Callable[[], httpx.AsyncClient], path: str, body: Any, *,
                             idempotency_key: str) -> Any:
    """POST ``body`` until it is created, with the same Idempotency-Key each time, as a client does while
    an API restarts or behind a load balancer (``next_api``: the API to try next). No answer or a 5xx
    is tried again; any other answer than 201 fails the test. Returns the 201's body."""
    while True:
        try:
            response = await next_api().post(path, json=body, headers={"Idempotency-Key": idempotency_key})
        except httpx.TransportError:
            await asyncio.sleep(0.05)  # a client's back-off: the API is down or restarting
            continue
        if response.status_code == 201:
            return response.json()
        assert response.status_code >= 500, response.text
        await asyncio.sleep(0.1)


async def wait_all_succeeded(db: asyncpg.Pool, ids: list[str], *, timeout_s: float, interval_s: float = 0.2) -> None:
    """Wait until every task of ``ids`` has succeeded; on timeout, fail with the tasks by status and
    the outbox rows still unpublished."""
    keys = [uuid.UUID(i) for i in ids]

    async def all_done() -> bool:
        return await db.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1) AND status = 'succeeded'", keys) == len(keys)

    try:
        await wait_for(all_done, timeout_s=timeout_s, interval_s=interval_s, what=f"{len(keys)} tasks to succeed")
    except AssertionError as exc:
        counts = await db.fetch("SELECT status, status_reason, count(*) FROM tasks GROUP BY 1, 2")
        outbox = await db.fetchval("SELECT count(*) FROM outbox")
        raise AssertionError(f"{exc}; tasks by status: {[tuple(r) for r in counts]}; outbox rows: {outbox}") from exc


async def api_ready(base_url: str) -> bool:
    """Whether a control plane at ``base_url`` answers /readyz with 200 (for ``wait_for``)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as api:
        try:
            return (await api.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False


@asynccontextmanager
async def serve_api(cp: ControlPlane, app: FastAPI | None = None) -> AsyncIterator[str]:
    """The real API (or ``app``, built by ``create_app`` for ``cp``) on a free loopback port; yields its base URL."""
    async with serve_in_process(app or create_app(control_plane=cp), graceful_shutdown_s=1) as url:
        yield url


async def make_token(database_url: str, role: str, name: str | None = None) -> str:
    conn = await connect(database_url)
    try:
        _, token = await create_token(conn, name=name or f"{role}-token", role=role, created_by="test")
    finally:
        await conn.close()
    return token


async def register_in_database(cp: ControlPlane, database_url: str, agent_id: str, pool_id: str) -> AgentCredentials:
    """What ``POST /api/v1/agents/register`` gives an agent of ``pool_id``, done straight in the
    database with a token scoped to that pool."""
    conn = await connect(database_url)
    try:
        token_id, _ = await create_token(conn, name=f"agent-{agent_id}", role="agent", created_by="test",
                                         pools=[pool_id])
        principal = Principal(token_id, f"agent-{agent_id}", "agent")
        async with conn.transaction():  # under the agent token's identity, as the API registers
            await identity.assume(conn, principal)
            key = await register_agent(conn, principal, agent_id, pool_id)
    finally:
        await conn.close()
    return AgentCredentials(agent_id=agent_id, event_key=key, control_plane_key=cp.signer.public_key)


def client(base_url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30.0)


def fast_settings(database_url: str, broker: Any, **overrides: Any) -> Settings:
    """Fast timings for tests; everything else as in production."""
    values: dict[str, Any] = dict(
        database_url=database_url, broker=broker, embedded_broker=False, heartbeat_ttl_s=3.0, lease_s=10.0,
        reaper_interval_s=0.2, dispatch_interval_s=0.5, outbox_sweep_s=0.2, outbox_retry_s=0.2,
        backoff_base_s=0.2, deadline_grace_s=1.0,
    )
    values.update(overrides)
    return Settings(**values)
