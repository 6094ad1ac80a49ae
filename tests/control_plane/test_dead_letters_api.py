"""/api/v1/dead-letters: list and replay, supervisors and admins only."""

from __future__ import annotations

import json

import httpx

from control_plane.dead_letters import record_dead_letter
from control_plane.service import ControlPlane
from tests.support.system import client, make_token


async def _dead_task(admin: httpx.AsyncClient, cp: ControlPlane) -> tuple[str, int]:
    """A pending task whose attempt an agent refused as poison, recorded as the dead-letter consumer does."""
    task = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    async with cp.loops_pool.acquire() as conn:  # as the dead-letter consumer records them
        await record_dead_letter(conn, json.dumps({"task_id": task["id"], "attempt": 1}).encode(),
                                 {"x-devart-dead-reason": "poison: unknown task type"})
        dead_letter_id = await conn.fetchval("SELECT max(id) FROM dead_letters")
    return task["id"], dead_letter_id


async def test_list_and_replay(admin: httpx.AsyncClient, cp: ControlPlane, base_url: str, database_url: str) -> None:
    task_id, dead_letter_id = await _dead_task(admin, cp)
    async with cp.loops_pool.acquire() as conn:  # as the dead-letter consumer records them
        await record_dead_letter(conn, b"\xff not json", {})
    page = (await admin.get("/api/v1/dead-letters")).json()
    unreadable, named = page["items"]
    assert named["id"] == dead_letter_id and named["task_id"] == task_id and named["task_status"] == "dead"
    assert named["reason"] == "poison: unknown task type"
    assert unreadable["task_id"] is None and unreadable["body"] == "\ufffd not json"
    response = await admin.post(f"/api/v1/dead-letters/{unreadable['id']}/replay")
    assert response.status_code == 409 and response.json()["error"]["field"] == "dead_letter_id"
    assert (await admin.post("/api/v1/dead-letters/999999/replay")).status_code == 404

    async with client(base_url, await make_token(database_url, "viewer")) as viewer:
        assert (await viewer.get("/api/v1/dead-letters")).status_code == 403
        assert (await viewer.post(f"/api/v1/dead-letters/{dead_letter_id}/replay")).status_code == 403
    replayed = await admin.post(f"/api/v1/dead-letters/{dead_letter_id}/replay")
    assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
    assert (await admin.post(f"/api/v1/dead-letters/{dead_letter_id}/replay")).status_code == 409  # not dead now
