"""Attack: a viewer (or a ci token) reads another submitter's task to learn the values of its plain
``env``. Only supervisors and admins see them, and each such read is audited; ``secret_env`` holds
only references to the agent's secret store, never values."""

from __future__ import annotations

import asyncpg
import httpx

from tests.support.system import client, make_token

INPUT = {"script": "deploy", "env": {"API_KEY": "s3cret-value", "REGION": "eu"},
         "secret_env": {"DB_PASSWORD": {"name": "db", "key": "password"}}}


async def test_viewer_and_ci_see_env_keys_not_values(admin: httpx.AsyncClient, base_url: str, database_url: str) -> None:
    created = await admin.post("/api/v1/tasks", json={"type": "shell", "input": INPUT, "requires": ["shell"]})
    assert created.status_code == 201, created.text
    url = f"/api/v1/tasks/{created.json()['id']}"
    for role in ("viewer", "ci"):
        async with client(base_url, await make_token(database_url, role)) as reader:
            response = await reader.get(url)
        assert response.status_code == 200, response.text
        shown = response.json()["input"]
        assert shown["env"] == {"API_KEY": "***", "REGION": "***"}, role
        assert "s3cret-value" not in response.text
        assert shown["secret_env"] == INPUT["secret_env"]

    async with client(base_url, await make_token(database_url, "supervisor", "lead")) as lead:
        assert (await lead.get(url)).json()["input"]["env"] == INPUT["env"]
    conn = await asyncpg.connect(database_url)
    try:
        audited = await conn.fetch("SELECT actor, action, target FROM audit_log WHERE action = 'task.read_env'")
    finally:
        await conn.close()
    assert [(r["actor"], r["target"]) for r in audited] == [("lead", created.json()["id"])]
