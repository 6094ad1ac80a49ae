"""/api/v1/workflows: bad definitions are refused with the path named; versions; roles; events."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.control_plane.workflows.conftest import apply, as_yaml
from tests.support.system import client, make_token

GOOD = {"name": "ok", "steps": {"build": {"input": {"script": "true"}}}}


BAD = [
    ({"name": "x", "steps": {"build": {}, "test": {"needs": ["biuld"]}}},
     "body.steps.test.needs[0]", "steps.test.needs[0]: unknown step 'biuld'"),
    ({"name": "x", "steps": {"a": {"needs": ["c"]}, "b": {"needs": ["a"]}, "c": {"needs": ["b"]}}},
     "body.steps.a.needs", "cycle: a -> c -> b -> a"),
    ({"name": "x", "steps": {"a": {"needs": {"b": "succeeded|maybe"}}, "b": {}}},
     "body.steps.a.needs.b", "must be results joined by '|'"),
    ({"name": "x", "steps": {"a": {"if": "${{ inputs.x == }}"}}}, "body.steps.a.if", "bad expression"),
    ({"name": "x", "steps": {"a": {"input": {"s": "${{ eval('1') }}"}}}}, "body.steps.a.input.s", "bad expression"),
    ({"name": "x", "steps": {"a": {"input": {"s": "${{ inputs.nope }}"}}}}, "body.steps.a.input", "unknown input 'nope'"),
    ({"name": "x", "steps": {"a": {"input": {"s": "${{ steps.b.outputs.x }}"}}, "b": {"outputs": {"x": "$.a"}}}},
     "body.steps.a.input", "step 'b' is not upstream of 'a'"),
    ({"name": "x", "steps": {"a": {"matrix": {"x": list(range(16)), "y": list(range(17))}}}},
     "body.steps.a.matrix", "expands to 272 jobs, more than the 256 allowed"),
    ({"name": "x", "steps": {"a": {"outputs": {"o": "artifacts[0]"}}}}, "body.steps.a.outputs.o", "starts with '$'"),
    ({"name": "x", "steps": {"a": {"timeout": "soon"}}}, "body.steps.a.timeout", "cannot read 'soon'"),
    ({"name": "x", "steps": {"a": {"retry": {"max_attempts": 99}}}}, "body.steps.a.retry.max_attempts", "from 1 to 20"),
    ({"name": "x", "steps": {"a": {"max_parallel": 0}}}, "body.steps.a.max_parallel", "at least 1"),
    ({"name": "x", "steps": {"a": {"bogus": 1}}}, "body.steps.a.bogus", "unknown key"),
    ({"name": "x", "concurrency": {"group": "g", "on_conflict": "smash"}, "steps": {"a": {}}},
     "body.concurrency.on_conflict", "queue, cancel_pending, cancel_running"),
    ({"name": "x", "on": {"schedule": "61 * * * *"}, "steps": {"a": {}}}, "body.on.schedule", "outside 0-59"),
    ({"name": "x", "steps": {}}, "body.steps", "non-empty"),
    ({"steps": {"a": {}}}, "body.name", "is required"),
    ({"name": "x", "steps": {"a": {}}, "finally": {"a": {}}}, "body.finally.a", "already a main step"),
    ({"name": "x", "steps": {"a": {}}, "finally": {"f": {"needs": ["a"]}}}, "body.finally.f.needs", "take no needs"),
]


async def test_bad_definitions_are_422_naming_the_path(admin: httpx.AsyncClient) -> None:
    for document, field, message in BAD:
        response = await admin.post("/api/v1/workflows", json=document)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field, error
        assert message in error["message"], error
    assert (await admin.get("/api/v1/workflows")).json()["items"] == []


async def test_too_many_steps_and_bad_yaml(admin: httpx.AsyncClient) -> None:
    many = {"name": "many", "steps": {f"s{i}": {} for i in range(501)}}
    response = await admin.post("/api/v1/workflows", json=many)
    assert response.status_code == 422 and "at most 500 steps" in response.text
    response = await admin.post("/api/v1/workflows", content="name: [unclosed",
                                headers={"Content-Type": "application/yaml"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "body"
    response = await admin.post("/api/v1/workflows", content="{", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    response = await admin.post("/api/v1/workflows", content="x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "Content-Type"


async def test_versions_yaml_and_json_alike(admin: httpx.AsyncClient) -> None:
    created = await admin.post("/api/v1/workflows", content=as_yaml(GOOD), headers={"Content-Type": "application/yaml"})
    assert created.status_code == 201 and created.json()["version"] == 1
    same = await admin.post("/api/v1/workflows", json=GOOD)  # the same definition in JSON: no new version
    assert same.status_code == 200 and same.json()["version"] == 1
    changed = await apply(admin, GOOD | {"description": "second"})
    assert changed["version"] == 2
    detail = (await admin.get("/api/v1/workflows/ok")).json()
    assert detail["version"] == 2 and [v["version"] for v in detail["versions"]] == [1, 2]
    assert (await admin.get("/api/v1/workflows/ok", params={"version": 1})).json()["definition"] == GOOD
    assert [w["name"] for w in (await admin.get("/api/v1/workflows")).json()["items"]] == ["ok"]
    assert (await admin.get("/api/v1/workflows/missing")).status_code == 404
    # a run keeps the version it started with
    run = (await admin.post("/api/v1/workflows/ok/runs", json={"version": 1})).json()
    assert run["version"] == 1
    await apply(admin, GOOD | {"description": "third"})
    assert (await admin.get(f"/api/v1/runs/{run['id']}")).json()["version"] == 1


async def test_roles(base_url: str, database_url: str, admin: httpx.AsyncClient) -> None:
    await apply(admin, GOOD)
    async with client(base_url, await make_token(database_url, "ci")) as ci, \
            client(base_url, await make_token(database_url, "viewer")) as viewer, client(base_url, None) as nobody:
        assert (await ci.post("/api/v1/workflows/ok/runs", json={})).status_code == 201
        assert (await ci.get("/api/v1/runs")).status_code == 200
        assert (await ci.post("/api/v1/workflows", json=GOOD)).status_code == 403
        assert (await viewer.post("/api/v1/workflows/ok/runs", json={})).status_code == 403
        assert (await viewer.get("/api/v1/workflows/ok")).status_code == 200
        assert (await nobody.get("/api/v1/runs")).status_code == 401
        run_id = (await ci.get("/api/v1/runs")).json()["items"][0]["id"]
        assert (await ci.post(f"/api/v1/runs/{run_id}/cancel")).status_code == 403


async def test_list_filters_cursor_and_events(admin: httpx.AsyncClient) -> None:
    await apply(admin, GOOD)
    await apply(admin, GOOD | {"name": "other"})
    seen: list[dict] = []
    connected = asyncio.Event()

    async def listen() -> None:
        async with admin.stream("GET", "/api/v1/events") as stream:
            event = ""
            async for line in stream.aiter_lines():
                if line == ": connected":
                    connected.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("run", "run_step"):
                    seen.append(json.loads(line[6:]) | {"event": event})
                    if len(seen) >= 2:
                        return

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(connected.wait(), timeout=10)
    ids = [(await admin.post(f"/api/v1/workflows/{name}/runs", json={})).json()["id"]
           for name in ("ok", "ok", "other")]
    await asyncio.wait_for(listener, timeout=10)
    assert seen[0]["event"] == "run" and seen[0]["run_id"] == ids[0] and seen[0]["to"] == "queued"
    page = (await admin.get("/api/v1/runs", params={"limit": 2})).json()
    assert [r["id"] for r in page["items"]] == ids[::-1][:2]
    rest = (await admin.get("/api/v1/runs", params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [r["id"] for r in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    only = (await admin.get("/api/v1/runs", params={"workflow": "other"})).json()["items"]
    assert [r["id"] for r in only] == [ids[2]]
    assert (await admin.get("/api/v1/runs", params={"trigger": "schedule"})).json()["items"] == []
    assert (await admin.get("/api/v1/runs", params={"state": "bogus"})).status_code == 422
    assert (await admin.get("/api/v1/runs", params={"cursor": "zz"})).status_code == 422
