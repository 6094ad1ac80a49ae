"""Workflow runs, agents, traces and tokens in the console, in a real browser, checked against the API."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import expect

from agents.noop import build_agent as noop_agent
from tests.aiops.rca.test_worker import load_scenario
from tests.control_plane.test_dead_letters_api import _dead_task
from tests.support.system import StartAgent, client, wait_for

WORKFLOW = {
    "name": "console-demo",
    "inputs": {"docs": {"type": "boolean", "default": False}},
    "steps": {
        "build": {"type": "noop", "requires": ["noop"]},
        "test": {"type": "noop", "requires": ["noop"], "needs": ["build"]},
        "docs": {"type": "noop", "requires": ["noop"], "needs": ["build"], "if": "${{ inputs.docs }}"},
        "report": {"type": "noop", "requires": ["noop"], "needs": {"test": "succeeded", "docs": "succeeded|skipped"}},
    },
}


async def test_a_run_shows_its_dag_and_skip_reasons(
    sign_in, admin: httpx.AsyncClient, base_url: str, start_agent: StartAgent
) -> None:
    await start_agent(noop_agent(skills=["noop"]))
    assert (await admin.post("/api/v1/workflows", json=WORKFLOW)).status_code == 201
    run = (await admin.post("/api/v1/workflows/console-demo/runs", json={})).json()

    async def ended() -> bool:
        return (await admin.get(f"/api/v1/runs/{run['id']}")).json()["state"] == "succeeded"

    page, _ = await sign_in("viewer")
    await page.goto(f"{base_url}/runs")
    await expect(page.locator(f"#run-{run['id']}")).to_be_visible()
    await wait_for(ended, what="the run")
    await page.goto(f"{base_url}/runs/{run['id']}")
    await expect(page.locator("#run-status")).to_have_text("succeeded")
    steps = page.locator("figure.dag svg g.step")
    await expect(steps).to_have_count(4)
    await expect(page.locator("svg g.step[data-step=docs]")).to_have_attribute("data-state", "skipped")
    await expect(page.locator("svg g.step[data-step=report]")).to_have_attribute("data-state", "succeeded")
    await expect(page.locator("figure.dag svg line")).to_have_count(4)  # build->test, build->docs, test->report, docs->report
    await expect(page.locator("#steps tr[data-job=docs]")).to_contain_text("skipped: if_false")
    detail = (await admin.get(f"/api/v1/runs/{run['id']}")).json()
    build_task = next(s["task_id"] for s in detail["steps"] if s["job"] == "build")
    await expect(page.locator(f"svg a[href='/tasks/{build_task}']")).to_have_count(1)
    # a viewer may not cancel or re-run
    await expect(page.get_by_role("button", name="Re-run from the failed steps")).to_have_count(0)


async def test_pausing_an_agent_from_the_page_pauses_it(
    sign_in, admin: httpx.AsyncClient, base_url: str, start_agent: StartAgent
) -> None:
    runtime = await start_agent(noop_agent(skills=["noop"]))
    agent_id = runtime.agent.agent_id
    page, _ = await sign_in("supervisor")
    await page.goto(f"{base_url}/agents")
    row = page.locator(f"#agent-{agent_id}")
    await expect(row).to_contain_text("online")
    await row.get_by_role("button", name=f"Pause {agent_id}").click()

    async def paused() -> bool:
        return (await admin.get(f"/api/v1/agents/{agent_id}")).json()["state"] == "paused"

    await wait_for(paused, what="the agent to pause")
    await expect(row).to_contain_text("paused")  # the page caught up by itself
    await row.get_by_role("button", name=f"Resume {agent_id}").click()
    await wait_for(lambda: _state_is(admin, agent_id, "active"), what="the agent to resume")


async def _state_is(admin: httpx.AsyncClient, agent_id: str, state: str) -> bool:
    return (await admin.get(f"/api/v1/agents/{agent_id}")).json()["state"] == state


async def test_a_trace_is_shown_as_a_waterfall(sign_in, admin: httpx.AsyncClient, base_url: str, db) -> None:
    scenario = await load_scenario(db, "chain", "db_slowdown", 0)
    trace_id = scenario.incident[0].trace_id
    spans = (await admin.get(f"/api/v1/traces/{trace_id}")).json()["spans"]
    page, _ = await sign_in("viewer")
    await page.goto(f"{base_url}/traces")
    await page.get_by_label("Trace id").fill(trace_id)
    await page.get_by_role("button", name="Open").click()
    await expect(page.locator("figure.waterfall svg g.span")).to_have_count(len(spans))
    await expect(page.locator("#spans tbody tr")).to_have_count(len(spans))
    root = next(s for s in spans if s["parent_id"] not in {x["span_id"] for x in spans})
    await expect(page.locator("#spans tbody tr").first).to_contain_text(root["name"])


@pytest.mark.parametrize("role", ["admin"])
async def test_an_admin_creates_and_revokes_a_token(sign_in, base_url: str, role: str) -> None:
    page, _ = await sign_in(role)
    await page.goto(f"{base_url}/tokens")
    await page.get_by_label("Name").fill("ci-bot")
    await page.get_by_label("Role").select_option("ci")
    await page.get_by_role("button", name="Create token").click()
    secret = await page.get_by_label("Secret").input_value()
    async with client(base_url, secret) as bot:
        assert (await bot.get("/api/v1/tasks")).status_code == 200
        await page.get_by_role("button", name="Revoke ci-bot").click()
        await expect(page.locator("#tokens")).to_contain_text("revoked")

        async def refused() -> bool:  # the API's token cache forgets it within seconds
            return (await bot.get("/api/v1/tasks")).status_code == 401

        await wait_for(refused, what="the revoked token to be refused")


async def test_an_admin_creates_an_agent_token_scoped_to_pools(
    sign_in, admin: httpx.AsyncClient, base_url: str
) -> None:
    page, _ = await sign_in("admin")
    await page.goto(f"{base_url}/tokens")
    await page.get_by_label("Name").fill("builders")
    await page.get_by_label("Role").select_option("agent")
    await page.get_by_label("Pools").fill("pool-a, pool-b")
    await page.get_by_role("button", name="Create token").click()
    secret = await page.get_by_label("Secret").input_value()
    listed = next(t for t in (await admin.get("/api/v1/tokens")).json() if t["name"] == "builders")
    assert listed["pools"] == ["pool-a", "pool-b"]
    await expect(page.locator(f"#token-{listed['id']}")).to_contain_text("pool-a, pool-b")
    async with client(base_url, secret) as agent:
        inside = await agent.post("/api/v1/agents/register", json={"agent_id": "builder-1", "pool_id": "pool-a"})
        assert inside.status_code == 200
        outside = await agent.post("/api/v1/agents/register", json={"agent_id": "builder-2", "pool_id": "pool-c"})
        assert outside.status_code == 403 and "pool-c" in outside.json()["error"]["message"]


@pytest.mark.parametrize(("role", "pools", "says"), [
    ("viewer", "pool-a", "only an agent token is scoped to pools"),
    ("agent", "pool-a no/such/pool", "'no/such/pool' is not a pool id"),
])
async def test_a_bad_pools_field_is_named_on_the_page(
    sign_in, admin: httpx.AsyncClient, base_url: str, role: str, pools: str, says: str
) -> None:
    page, _ = await sign_in("admin")
    await page.goto(f"{base_url}/tokens")
    await page.get_by_label("Name").fill("refused")
    await page.get_by_label("Role").select_option(role)
    await page.get_by_label("Pools").fill(pools)
    async with page.expect_response(f"{base_url}/tokens") as answer:
        await page.get_by_role("button", name="Create token").click()
    assert (await answer.value).status == 422
    await expect(page.get_by_role("alert")).to_contain_text(says)
    await expect(page.get_by_role("alert")).to_contain_text("field: pools")
    assert "refused" not in [t["name"] for t in (await admin.get("/api/v1/tokens")).json()]


async def test_a_viewer_cannot_open_the_tokens_page(sign_in, base_url: str) -> None:
    page, _ = await sign_in("viewer")
    await expect(page.get_by_role("link", name="Tokens")).to_have_count(0)
    answer = await page.goto(f"{base_url}/tokens")
    assert answer is not None and answer.status == 403


async def test_a_dead_letter_is_replayed_from_the_page(sign_in, admin: httpx.AsyncClient, base_url: str, cp) -> None:
    task_id, dead_letter_id = await _dead_task(admin, cp)
    viewer, _ = await sign_in("viewer")
    await expect(viewer.get_by_role("link", name="Dead letters")).to_have_count(0)
    page, _ = await sign_in("supervisor")
    await page.get_by_role("link", name="Dead letters").click()
    row = page.locator(f"#dead-letter-{dead_letter_id}")
    await expect(row).to_contain_text("poison: unknown task type")
    await expect(row).to_contain_text("dead")
    await row.get_by_role("button", name=f"Replay dead letter {dead_letter_id}").click()
    await page.wait_for_url(f"{base_url}/tasks/{task_id}")
    await expect(page.locator("#task-status")).to_have_text("pending")
    task = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
    assert task["transitions"][-1]["reason"] == "retry requested"
    assert task["transitions"][-1]["actor"].startswith("supervisor-")
