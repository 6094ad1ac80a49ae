"""The console's promises about sign-in and tasks, each shown in a real browser."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from playwright.async_api import expect
from pydantic import BaseModel, ConfigDict

from agents.sdk import Agent, TaskContext, task_handler
from dashboard.sessions import COOKIE
from tests.support.system import StartAgent, wait_for

LET_GO = asyncio.Event()


class ChattyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


@task_handler("chatty", input=ChattyInput)
async def chatty(ctx: TaskContext, data: ChattyInput) -> dict[str, str]:
    """Logs a few lines, waits for the test to let go, then logs the lines the test searches for."""
    for i in range(5):
        await ctx.log(f"warming up {i}")
    await LET_GO.wait()
    await ctx.log("found the needle in the haystack")
    await ctx.log("nothing to see here", stream="stderr")
    await ctx.log("a second NEEDLE, upper case")
    return {"ok": "yes"}


async def test_sign_in_and_out(sign_in, base_url: str, database_url: str, browser) -> None:
    page = await (await browser.new_page()).goto(f"{base_url}/tasks")
    assert page is not None and "/login" in page.url  # not signed in: the sign-in form, remembering where to go
    page, _ = await sign_in("supervisor")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.get_by_text("supervisor-")).to_be_visible()
    cookie = next(c for c in await browser.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain http here
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT id_hash FROM console_sessions WHERE revoked_at IS NULL")
        assert stored != cookie["value"] and len(stored) == 64  # only the digest is kept
    finally:
        await conn.close()

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base_url}/login")
    async with httpx.AsyncClient(base_url=base_url, cookies={COOKIE: cookie["value"]}) as replay:
        answer = await replay.get("/tasks")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")  # the session is dead


async def test_a_revoked_token_ends_its_sessions(sign_in, admin: httpx.AsyncClient, base_url: str) -> None:
    page, token = await sign_in("viewer")
    token_id = next(t["id"] for t in (await admin.get("/api/v1/tokens")).json() if t["name"].startswith("viewer-"))
    assert (await admin.delete(f"/api/v1/tokens/{token_id}")).status_code == 204
    await page.goto(f"{base_url}/tasks")
    assert "/login" in page.url


async def test_a_task_submitted_over_rest_appears_live(sign_in, admin: httpx.AsyncClient, base_url: str) -> None:
    page, _ = await sign_in("viewer")
    await page.goto(f"{base_url}/tasks")
    await expect(page.locator("#live-state")).to_have_text("live")
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    submitted = time.monotonic()
    await expect(page.locator(f"#task-{created['id']}")).to_be_visible(timeout=2000)
    print(f"row shown {time.monotonic() - submitted:.2f} s after the REST call returned")
    await expect(page.locator(f"#task-{created['id']}")).to_contain_text("pending")
    # and it changes live too: cancelled over REST, the row says so without a reload
    await admin.post(f"/api/v1/tasks/{created['id']}/cancel")
    await expect(page.locator(f"#task-{created['id']}")).to_contain_text("cancelled", timeout=2000)


async def test_logs_stream_and_are_searchable(
    sign_in, admin: httpx.AsyncClient, base_url: str, start_agent: StartAgent
) -> None:
    LET_GO.clear()
    await start_agent(Agent("chatty", skills=["chatty"], slots=1, handlers=[chatty]))
    created = (await admin.post("/api/v1/tasks", json={"type": "chatty", "requires": ["chatty"]})).json()
    page, _ = await sign_in("viewer")
    await page.goto(f"{base_url}/tasks/{created['id']}")
    lines = page.locator("#log-lines li")
    await expect(lines).to_have_count(5, timeout=20_000)
    await expect(page.locator("#log-stream-state")).to_have_text("streaming")
    LET_GO.set()  # the rest is logged while the page is open
    await expect(lines).to_have_count(8, timeout=20_000)
    await expect(page.locator("#task-status")).to_have_text("succeeded", timeout=20_000)
    await page.get_by_label("Search the logs").fill("needle")
    await expect(page.locator("#log-lines li:visible")).to_have_count(2)
    await expect(page.locator("#log-count")).to_have_text("2 of 8 lines match")
    await expect(page.locator("#log-lines li:visible").first).to_contain_text("found the needle in the haystack")


async def test_cancel_from_the_page_cancels(sign_in, admin: httpx.AsyncClient, base_url: str) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    page, _ = await sign_in("supervisor")
    await page.goto(f"{base_url}/tasks/{created['id']}")
    await page.get_by_role("button", name="Cancel task").click()
    await expect(page.locator("#task-status")).to_have_text("cancelled")
    task = (await admin.get(f"/api/v1/tasks/{created['id']}")).json()
    assert task["status"] == "cancelled" and task["status_reason"].startswith("cancelled by supervisor-")
    assert [t["actor"] for t in task["transitions"]][-1].startswith("supervisor-")


async def test_a_viewer_sees_no_write_button_and_a_forged_post_is_refused(
    sign_in, admin: httpx.AsyncClient, base_url: str
) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    page, _ = await sign_in("viewer")
    for path in ("/", "/tasks", f"/tasks/{created['id']}"):
        await page.goto(f"{base_url}{path}")
        # the only form that writes is signing out
        assert await page.locator("form[method=post]").count() == 1, path
        await expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    csrf = await page.locator("form[action='/logout'] input[name=csrf_token]").input_value()
    forged = await page.request.post(f"{base_url}/tasks/{created['id']}/cancel", form={"csrf_token": csrf},
                                     max_redirects=0)
    assert forged.status == 403 and "may not do this" in await forged.text()
    assert (await admin.get(f"/api/v1/tasks/{created['id']}")).json()["status"] == "pending"


async def test_a_post_without_the_csrf_token_is_refused(sign_in, admin: httpx.AsyncClient, base_url: str) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    page, _ = await sign_in("supervisor")
    await page.goto(f"{base_url}/tasks/{created['id']}")
    url = f"{base_url}/tasks/{created['id']}/cancel"
    for form in ({}, {"csrf_token": "not-the-token"}):
        refused = await page.request.post(url, form=form, max_redirects=0)
        assert refused.status == 403 and "CSRF" in await refused.text()
    refused = await page.request.post(url, headers={"X-CSRF-Token": "forged"}, max_redirects=0)
    assert refused.status == 403
    assert (await admin.get(f"/api/v1/tasks/{created['id']}")).json()["status"] == "pending"
    # the same request with the page's token goes through: the refusal was the missing token
    csrf = await page.locator("form[action='/logout'] input[name=csrf_token]").input_value()
    accepted = await page.request.post(url, form={"csrf_token": csrf}, max_redirects=0)
    assert accepted.status == 303
    await wait_for(lambda: _status_is(admin, created["id"], "cancelled"), what="the cancel")


async def _status_is(admin: httpx.AsyncClient, task_id: str, status: str) -> bool:
    return (await admin.get(f"/api/v1/tasks/{task_id}")).json()["status"] == status


async def test_a_reconnecting_log_stream_resumes_after_the_last_event_id(
    sign_in, browser, admin: httpx.AsyncClient, base_url: str, start_agent: StartAgent
) -> None:
    LET_GO.set()
    await start_agent(Agent("chatty", skills=["chatty"], slots=1, handlers=[chatty]))
    created = (await admin.post("/api/v1/tasks", json={"type": "chatty", "requires": ["chatty"]})).json()
    await wait_for(lambda: _status_is(admin, created["id"], "succeeded"), what="the task")
    lines = (await admin.get(f"/api/v1/tasks/{created['id']}/logs")).json()["lines"]
    assert len(lines) == 8
    await sign_in("viewer")
    cookie = next(c["value"] for c in await browser.cookies() if c["name"] == COOKIE)
    async with httpx.AsyncClient(base_url=base_url, cookies={COOKIE: cookie}, timeout=20) as console:
        # what a browser sends when it reconnects after the fifth line
        headers = {"Last-Event-ID": str(lines[4]["position"]), "Accept": "text/event-stream"}
        async with console.stream("GET", f"/tasks/{created['id']}/logs", headers=headers) as stream:
            assert stream.status_code == 200
            body = (await stream.aread()).decode()
    ids = [int(line[4:]) for line in body.splitlines() if line.startswith("id: ")]
    assert ids == [line["position"] for line in lines[5:]]  # the last three lines, none again
    assert body.rstrip().endswith('data: {"status":"succeeded"}')


async def test_auto_refresh_off_holds_the_list_and_on_catches_up(
    sign_in, admin: httpx.AsyncClient, base_url: str
) -> None:
    page, _ = await sign_in("viewer")
    await page.goto(f"{base_url}/tasks")
    await expect(page.locator("#live-state")).to_have_text("live")
    await page.get_by_label("Auto-refresh").uncheck()
    await expect(page.locator("#live-state")).to_have_text("paused")
    held = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    # the page heard of the change, and held it back
    await expect(page.locator("#live-state")).to_have_text("paused, 1 change not shown")
    await expect(page.locator(f"#task-{held['id']}")).to_have_count(0)
    await page.reload()  # the switch is remembered by the browser
    await expect(page.get_by_label("Auto-refresh")).not_to_be_checked()
    await page.get_by_label("Auto-refresh").check()
    late = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    await expect(page.locator(f"#task-{late['id']}")).to_be_visible(timeout=2000)


async def test_the_list_filters_by_creation_time_in_the_url(sign_in, admin: httpx.AsyncClient, base_url: str) -> None:
    created = (await admin.post("/api/v1/tasks", json={"type": "noop", "requires": ["nobody-has-this"]})).json()
    at = datetime.fromisoformat(created["created_at"]).astimezone(UTC)
    api = await admin.get("/api/v1/tasks", params={"created_since": created["created_at"]})
    assert [t["id"] for t in api.json()["items"]] == [created["id"]]
    api = await admin.get("/api/v1/tasks", params={"created_before": created["created_at"]})
    assert created["id"] not in [t["id"] for t in api.json()["items"]]
    api = await admin.get("/api/v1/tasks", params={"created_since": "2026-01-01T00:00:00"})
    assert api.status_code == 422 and api.json()["error"]["field"] == "query.created_since"  # no time zone

    page, _ = await sign_in("viewer")
    minute = (at - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
    await page.goto(f"{base_url}/tasks?before={minute}")
    await expect(page.locator(f"#task-{created['id']}")).to_have_count(0)
    await page.goto(f"{base_url}/tasks?since={minute}")
    await expect(page.locator(f"#task-{created['id']}")).to_be_visible()
    await expect(page.get_by_label("Created since (UTC)")).to_have_value(minute)
    answer = await page.goto(f"{base_url}/tasks?since=yesterday")
    assert answer is not None and answer.status == 422
    await expect(page.get_by_role("alert")).to_contain_text("query.since")
