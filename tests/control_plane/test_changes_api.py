"""/api/v1/changes: CI records deployments, readers list them, bad input names the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from tests.support.system import client, make_token


async def test_ci_records_and_readers_list_changes(
    base_url: str, database_url: str, db: asyncpg.Pool
) -> None:
    async with (
        client(base_url, await make_token(database_url, "ci")) as ci,
        client(base_url, await make_token(database_url, "viewer")) as viewer,
    ):
        earlier = datetime.now(UTC) - timedelta(minutes=10)
        recorded = await ci.post("/api/v1/changes", json={
            "kind": "deployment", "service": "api", "at": earlier.isoformat(), "detail": "image api:1.4 -> 1.5"})
        assert recorded.status_code == 201, recorded.text
        assert recorded.json()["recorded_by"].startswith("ci")
        now = await ci.post("/api/v1/changes", json={"kind": "config", "service": "db"})
        assert now.status_code == 201
        assert (await viewer.post("/api/v1/changes", json={"kind": "config", "service": "db"})).status_code == 403

        listed = (await viewer.get("/api/v1/changes")).json()
        assert [c["service"] for c in listed] == ["db", "api"]  # newest first
        only_api = (await viewer.get("/api/v1/changes", params={"service": "api"})).json()
        assert [c["detail"] for c in only_api] == ["image api:1.4 -> 1.5"]
        since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        assert [c["service"] for c in (await viewer.get("/api/v1/changes", params={"since": since})).json()] == ["db"]
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'change.record'") == 2


async def test_bad_changes_name_the_field(admin: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    cases = [
        ({"kind": "reboot", "service": "api"}, "body.kind"),
        ({"kind": "config"}, "body.service"),
        ({"kind": "config", "service": "api", "at": "2026-01-01T00:00:00"}, "body.at"),  # no time zone
        ({"kind": "config", "service": "api", "at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, "body.at"),
        ({"kind": "config", "service": "api", "detail": "x" * 2001}, "body.detail"),
    ]
    for body, field in cases:
        response = await admin.post("/api/v1/changes", json=body)
        assert response.status_code == 422 and response.json()["error"]["field"] == field, (body, response.text)
    assert await db.fetchval("SELECT count(*) FROM changes") == 0
