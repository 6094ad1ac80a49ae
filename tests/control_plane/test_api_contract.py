"""Auth on every endpoint but health, roles, and clear 4xx errors that write nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.support.system import client, make_token


async def _count(admin: httpx.AsyncClient) -> int:
    return len((await admin.get("/api/v1/tasks", params={"limit": 500})).json()["items"])


async def test_health_needs_no_token(base_url: str) -> None:
    async with client(base_url, None) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        ready = await anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/v1/tasks"), ("post", "/api/v1/tasks"), ("get", "/api/v1/agents"), ("get", "/api/v1/pools"),
     ("post", "/api/v1/tasks/batch"), ("get", "/api/v1/events"), ("get", "/api/v1/tokens"), ("post", "/api/v1/tokens")],
)
async def test_every_endpoint_needs_a_token(base_url: str, method: str, path: str) -> None:
    async with client(base_url, None) as anonymous:
        response = await anonymous.request(method, path)
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "Authorization"
    async with client(base_url, "dvt_not-a-real-token") as forged:
        assert (await forged.request(method, path)).status_code == 401


async def test_roles(base_url: str, database_url: str, admin: httpx.AsyncClient) -> None:
    async with (
        client(base_url, await make_token(database_url, "viewer")) as viewer,
        client(base_url, await make_token(database_url, "ci")) as ci,
        client(base_url, await make_token(database_url, "agent")) as agent,
    ):
        assert (await viewer.get("/api/v1/tasks")).status_code == 200
        denied = await viewer.post("/api/v1/tasks", json={"type": "noop"})
        assert denied.status_code == 403 and "viewer" in denied.json()["error"]["message"]
        created = await ci.post("/api/v1/tasks", json={"type": "noop"})
        assert created.status_code == 201
        assert (await ci.post(f"/api/v1/tasks/{created.json()['id']}/cancel")).status_code == 403
        assert (await ci.get("/api/v1/tokens")).status_code == 403
        assert (await agent.get("/api/v1/tasks")).status_code == 403
        assert (await admin.post(f"/api/v1/tasks/{created.json()['id']}/cancel")).status_code == 200
    assert await _count(admin) == 1


async def test_token_lifecycle(base_url: str, admin: httpx.AsyncClient) -> None:
    made = await admin.post("/api/v1/tokens", json={"name": "ci-bot", "role": "ci"})
    assert made.status_code == 201
    secret = made.json()["token"]
    listed = (await admin.get("/api/v1/tokens")).json()
    assert all("token" not in t and "token_hash" not in t for t in listed)
    async with client(base_url, secret) as bot:
        assert (await bot.get("/api/v1/tasks")).status_code == 200
        assert (await admin.delete(f"/api/v1/tokens/{made.json()['id']}")).status_code == 204
        assert (await bot.get("/api/v1/tasks")).status_code == 401
    duplicate = await admin.post("/api/v1/tokens", json={"name": "ci-bot", "role": "ci"})
    assert duplicate.status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.type"),
        ({"type": 42}, "body.type"),
        ({"type": "noop", "timeout_s": "soon"}, "body.timeout_s"),
        ({"type": "noop", "timeout_s": -1}, "body.timeout_s"),
        ({"type": "noop", "max_attempts": 0}, "body.max_attempts"),
        ({"type": "noop", "input": [1, 2]}, "body.input"),
        ({"type": "noop", "requires": "python"}, "body.requires"),
        ({"type": "noop", "surprise": True}, "body.surprise"),
        ({"type": "has spaces"}, "body.type"),
        ({"type": "noop", "backoff": {"factor": 0.5}}, "body.backoff.factor"),
        ({"type": "noop", "input": {"blob": "x" * 300_000}}, "body.input"),
        ({"type": "noop", "max_attempts": 1000}, "body.max_attempts"),
    ],
)
async def test_bad_task_bodies_name_the_field(admin: httpx.AsyncClient, body: dict, field: str) -> None:
    response = await admin.post("/api/v1/tasks", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert await _count(admin) == 0


async def test_malformed_json_and_oversized_body(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/api/v1/tasks", content=b'{"type": "noop",', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"]["message"]
    huge = b'{"type": "noop", "input": {"x": "' + b"y" * 2_000_000 + b'"}}'
    response = await admin.post("/api/v1/tasks", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "body"
    assert await _count(admin) == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [({"cursor": "not-a-cursor"}, "cursor"), ({"status": "sleeping"}, "query.status"), ({"limit": 0}, "query.limit"),
     ({"limit": 10_000}, "query.limit")],
)
async def test_bad_list_queries(admin: httpx.AsyncClient, params: dict, field: str) -> None:
    response = await admin.get("/api/v1/tasks", params=params)
    assert response.status_code in (400, 422)
    assert response.json()["error"]["field"] == field


async def test_cursor_pagination(admin: httpx.AsyncClient) -> None:
    ids = [(await admin.post("/api/v1/tasks", json={"type": "noop"})).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = (await admin.get("/api/v1/tasks", params={"limit": 2} | ({"cursor": cursor} if cursor else {}))).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    pending = (await admin.get("/api/v1/tasks", params={"status": "pending"})).json()["items"]
    assert len(pending) == 5


async def test_unknown_ids(admin: httpx.AsyncClient) -> None:
    missing = await admin.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert (await admin.get("/api/v1/tasks/not-a-uuid")).status_code == 422
    assert (await admin.post("/api/v1/agents/nobody/drain")).status_code == 404
    done = (await admin.post("/api/v1/tasks", json={"type": "noop"})).json()
    await admin.post(f"/api/v1/tasks/{done['id']}/cancel")
    again = await admin.post(f"/api/v1/tasks/{done['id']}/cancel")
    assert again.status_code == 409
