"""The webhook boundary, attacked: signatures, replays, sizes and content types, each done for real
over HTTP against the running API; every verified delivery is recorded with its outcome."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx

from control_plane.service import ControlPlane
from tests.control_plane.github.conftest import OLD_SECRET, REPO, SECRET
from tests.control_plane.workflows.conftest import apply
from tests.github_fake.server import pull_request_payload, send_webhook, sign
from tests.support.system import client, make_token, wait_for

PIPELINE = {"name": "pr-pipeline", "inputs": {"repo": {"type": "string"}, "ref": {"type": "string"},
                                              "number": {"type": "number"}},
            "steps": {"build": {"requires": ["nobody-has-this"], "input": {"script": "true"}}}}
SHA = "1" * 40


def url(base_url: str) -> str:
    return f"{base_url}/api/v1/github/webhook"


async def deliveries(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM github_deliveries ORDER BY received_at")


async def processed(db: asyncpg.Pool, delivery: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM github_deliveries WHERE delivery_id = $1 AND state = 'done'", delivery)


async def test_bad_or_missing_signature_is_401_and_nothing_is_stored(base_url: str, db: asyncpg.Pool) -> None:
    payload = pull_request_payload(REPO, 1, SHA)
    for signature in (None, "sha256=" + "0" * 64, sign("not-the-secret", b"{}"), "sha1=abc", "sha256=zz\u00e9"):
        response = await send_webhook(url(base_url), "pull_request", payload, SECRET, signature=signature)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["field"] == "X-Hub-Signature-256"
    # a valid signature of another body: the body was tampered with
    body = b'{"action": "opened"}'
    async with httpx.AsyncClient() as client:
        tampered = await client.post(url(base_url), content=body + b" ", headers={
            "Content-Type": "application/json", "X-GitHub-Event": "ping", "X-GitHub-Delivery": "t1",
            "X-Hub-Signature-256": sign(SECRET, body)})
    assert tampered.status_code == 401
    assert await deliveries(db) == []


async def test_both_rotation_secrets_are_accepted_and_a_redelivery_starts_no_second_run(
    base_url: str, admin: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    await apply(admin, PIPELINE)
    payload = pull_request_payload(REPO, 7, SHA, clone_url="https://example.com/acme/calc.git")
    first = await send_webhook(url(base_url), "pull_request", payload, SECRET, delivery="d-1")
    assert first.status_code == 202 and first.json() == {"delivery": "d-1", "event": "pull_request", "duplicate": False}
    again = await send_webhook(url(base_url), "pull_request", payload, OLD_SECRET, delivery="d-1")
    assert again.status_code == 202 and again.json()["duplicate"] is True
    row = await wait_for(lambda: processed(db, "d-1"), what="the delivery processed")
    assert row["duplicates"] == 1 and row["event"] == "pull_request" and row["action"] == "opened"
    assert row["repo"] == REPO and row["installation_id"] == 77 and row["outcome"].startswith("started run")
    runs = await db.fetch("SELECT * FROM workflow_runs")
    assert len(runs) == 1 and runs[0]["trigger"] == "webhook"
    assert json.loads(runs[0]["inputs"]) == {"repo": "https://example.com/acme/calc.git", "ref": SHA, "number": 7}
    assert runs[0]["concurrency_group"] == f"github:{REPO}#7"
    assert row["runs"] == [runs[0]["id"]]


async def test_oversized_body_is_413_naming_the_limit(base_url: str, cp: ControlPlane, db: asyncpg.Pool) -> None:
    limit = cp.github.max_webhook_bytes
    payload: dict[str, Any] = pull_request_payload(REPO, 1, SHA) | {"padding": "x" * (limit + 1)}
    response = await send_webhook(url(base_url), "pull_request", payload, SECRET)
    assert response.status_code == 413
    assert "DEVART_GITHUB_MAX_WEBHOOK_BYTES" in response.json()["error"]["message"]
    assert response.json()["error"]["field"] == "body"
    # without Content-Length (chunked): refused as the bytes arrive
    async def chunks() -> Any:
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    async with httpx.AsyncClient() as client:
        chunked = await client.post(url(base_url), content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert await deliveries(db) == []


async def test_wrong_content_type_or_headers_or_json_are_refused_naming_them(base_url: str, db: asyncpg.Pool) -> None:
    async def post(body: bytes, **headers: str) -> httpx.Response:
        base = {"Content-Type": "application/json", "X-GitHub-Event": "ping", "X-GitHub-Delivery": "h1",
                "X-Hub-Signature-256": sign(SECRET, body)}
        async with httpx.AsyncClient() as client:
            return await client.post(url(base_url), content=body, headers=base | headers)

    form = await post(b"payload=%7B%7D", **{"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and form.json()["error"]["field"] == "Content-Type"
    no_delivery = await post(b"{}", **{"X-GitHub-Delivery": ""})
    assert no_delivery.status_code == 422 and no_delivery.json()["error"]["field"] == "X-GitHub-Delivery"
    not_json = await post(b"{nope")
    assert not_json.status_code == 422 and not_json.json()["error"]["field"] == "body"
    not_object = await post(b"[1]")
    assert not_object.status_code == 422
    assert await deliveries(db) == []


async def test_every_delivery_is_recorded_with_its_outcome(
    base_url: str, admin: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    await apply(admin, PIPELINE)
    sent = {
        "ping": ("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}),
        "draft": ("pull_request", pull_request_payload(REPO, 2, SHA, draft=True)),
        "bot": ("pull_request", pull_request_payload(REPO, 3, SHA, login="dependabot[bot]", user_type="Bot")),
        "label": ("pull_request", pull_request_payload(REPO, 4, SHA, labels=("devart:skip",))),
        "title": ("pull_request", pull_request_payload(REPO, 5, SHA, title="WIP: not yet")),
        "closed": ("pull_request", pull_request_payload(REPO, 6, SHA, action="closed")),
        "issue": ("issues", {"action": "opened", "repository": {"full_name": REPO}}),
    }
    for delivery, (event, payload) in sent.items():
        response = await send_webhook(url(base_url), event, payload, SECRET, delivery=delivery)
        assert response.status_code == 202
    for delivery in sent:
        await wait_for(lambda d=delivery: processed(db, d), what=f"delivery {delivery}")
    outcomes = {r["delivery_id"]: r["outcome"] for r in await deliveries(db)}
    assert outcomes == {
        "ping": "pong", "draft": "ignored: draft pull request", "bot": "ignored: opened by the bot dependabot[bot]",
        "label": "ignored: label devart:skip", "title": "ignored: title matches '^\\\\s*(WIP\\\\b|\\\\[WIP\\\\])'",
        "closed": "no trigger for pull_request.closed", "issue": "no trigger for issues.opened",
    }
    assert await db.fetchval("SELECT count(*) FROM workflow_runs") == 0


async def test_deliveries_are_listed_for_readers_without_their_payloads(
    base_url: str, database_url: str, db: asyncpg.Pool,
) -> None:
    for i in range(3):
        response = await send_webhook(url(base_url), "ping", {"zen": "z", "hook_id": i}, SECRET, delivery=f"l-{i}")
        assert response.status_code == 202
    await wait_for(lambda: processed(db, "l-2"), what="the deliveries processed")
    async with client(base_url, await make_token(database_url, "viewer")) as viewer:
        page = (await viewer.get("/api/v1/github/deliveries", params={"limit": 2})).json()
        assert [d["delivery_id"] for d in page["items"]] == ["l-2", "l-1"]
        assert page["items"][0]["outcome"] == "pong" and "payload" not in page["items"][0]
        rest = (await viewer.get("/api/v1/github/deliveries", params={"before": page["next_before"]})).json()
        assert [d["delivery_id"] for d in rest["items"]] == ["l-0"] and rest["next_before"] is None
        assert (await viewer.get("/api/v1/github/deliveries", params={"event": "push"})).json()["items"] == []
        bad = await viewer.get("/api/v1/github/deliveries", params={"limit": 501})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "query.limit"
    async with client(base_url, None) as anonymous:
        assert (await anonymous.get("/api/v1/github/deliveries")).status_code == 401
