"""A handler whose role check is gone still cannot write beyond the caller's role: the database refuses.

The app is the real one with one change, made the way FastAPI allows: every role check
(``require(...)``) is overridden by a dependency that authenticates the caller, switches the
request's transaction to them, and admits them whatever their role. What is left between a viewer
and the data is row-level security.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials

from control_plane.api import deps
from control_plane.api.app import create_app
from control_plane.auth import Principal
from control_plane.service import ControlPlane
from tests.support.system import client, make_token, serve_api


async def _no_role_check(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(deps._bearer),  # noqa: B008
    conn: asyncpg.Connection = Depends(deps._connection, scope="function"),  # noqa: B008
) -> Principal:
    return await deps._principal(request, credentials, conn)


async def _no_role_check_outside_transaction(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(deps._bearer),  # noqa: B008
) -> Principal:
    return await deps._principal_outside_transaction(request, credentials)


# what each kind of role check authenticates with -> the check's stand-in admitting any role
_STAND_INS = {deps._principal: _no_role_check, deps._principal_outside_transaction: _no_role_check_outside_transaction}


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # an included router
            yield from _api_routes(route.original_router.routes)


def _without_role_checks(cp: ControlPlane) -> FastAPI:
    app = create_app(control_plane=cp)
    removed = 0
    for route in _api_routes(app.routes):
        pending = list(route.dependant.dependencies)
        while pending:
            dependency = pending.pop()
            pending.extend(dependency.dependencies)
            call = dependency.call
            if not hasattr(call, "permission"):
                continue
            # streams keep their checks: what they read is not what this file is about
            stand_in = _STAND_INS.get(call.principal)
            if stand_in is not None and route.path_format != "/api/v1/events" and not route.path_format.endswith("/logs"):
                app.dependency_overrides[call] = stand_in
                removed += 1
    assert removed > 20  # every non-streaming route's check, the submit's included
    return app


@pytest.fixture
async def unchecked(cp: ControlPlane) -> AsyncIterator[str]:
    async with serve_api(cp, _without_role_checks(cp)) as url:
        yield url


async def test_a_viewer_cannot_submit_a_task_through_a_handler_without_its_check(
    unchecked: str, base_url: str, database_url: str, db: asyncpg.Pool
) -> None:
    token = await make_token(database_url, "viewer")
    task = {"type": "echo", "requires": ["echo"], "input": {}}
    async with client(base_url, token) as checked:  # the real app: the handler's check answers
        refused = await checked.post("/api/v1/tasks", json=task)
        assert refused.status_code == 403 and "may not" in refused.json()["error"]["message"], refused.text
    async with client(unchecked, token) as viewer:
        assert (await viewer.get("/api/v1/tasks")).status_code == 200  # reading is a viewer's right
        refused = await viewer.post("/api/v1/tasks", json=task)
    assert refused.status_code == 403, refused.text
    assert "row-level security" in refused.json()["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_ci_token_cannot_mint_an_admin_token_or_cancel_a_task_without_the_checks(
    unchecked: str, database_url: str, db: asyncpg.Pool
) -> None:
    async with client(unchecked, await make_token(database_url, "ci")) as ci:
        created = await ci.post("/api/v1/tasks", json={"type": "echo", "requires": ["echo"], "input": {}})
        assert created.status_code == 201, created.text  # creating tasks is a ci token's right
        minted = await ci.post("/api/v1/tokens", json={"name": "mine", "role": "admin"})
        cancelled = await ci.post(f"/api/v1/tasks/{created.json()['id']}/cancel")
    assert minted.status_code == 403, minted.text
    assert await db.fetchval("SELECT count(*) FROM api_tokens WHERE name = 'mine'") == 0
    assert cancelled.status_code >= 400, cancelled.text  # the row is not the ci token's to update
    assert await db.fetchval("SELECT status FROM tasks WHERE id = $1::uuid", created.json()["id"]) != "cancelled"


async def test_a_supervisor_cannot_read_tokens_or_the_audit_log_without_the_checks(
    unchecked: str, database_url: str
) -> None:
    await make_token(database_url, "admin")
    async with client(unchecked, await make_token(database_url, "supervisor")) as supervisor:
        listed = await supervisor.get("/api/v1/tokens")
    assert listed.status_code == 200 and listed.json() == [], listed.text  # no row is visible to it
