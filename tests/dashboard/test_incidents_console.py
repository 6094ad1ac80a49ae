"""Approvals and incidents in the console, in a real browser, checked against the API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import httpx
from playwright.async_api import expect

from aiops.rca import normalise_service
from control_plane.approvals import create_approval
from control_plane.service import ControlPlane
from tests.aiops.rca.test_worker import finished, incident_for, load_scenario, running_worker


async def _approval(cp: ControlPlane, summary: str) -> str:
    async with cp.loops_pool.acquire() as conn:
        approval = await create_approval(
            conn, subject_kind="change_window", subject_id=summary.replace(" ", "-"), summary=summary, risk="high",
            requested_by="ci-pipeline", expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    return approval.id


async def test_an_approval_decided_in_the_console_is_decided_in_the_api(
    sign_in, admin: httpx.AsyncClient, base_url: str, cp: ControlPlane
) -> None:
    page, _ = await sign_in("supervisor")
    await page.goto(f"{base_url}/approvals")
    await expect(page.locator("#live-state")).to_have_text("live")
    approval_id = await _approval(cp, "deploy to production")
    row = page.locator(f"#approval-{approval_id}")
    await expect(row).to_contain_text("deploy to production", timeout=2000)  # the inbox is live
    await row.get_by_role("link").click()
    await page.get_by_label("Comment (kept with the decision)").fill("checked the change log")
    await page.get_by_role("button", name="Approve").click()
    await expect(page.locator("#approval-status")).to_have_text("approved")
    decided = (await admin.get(f"/api/v1/approvals/{approval_id}")).json()
    assert decided["state"] == "approved"
    [decision] = decided["decisions"]
    assert decision["decision"] == "approve" and decision["via"] == "console"
    assert decision["comment"] == "checked the change log" and decision["who"].startswith("supervisor-")

    refused_id = await _approval(cp, "drop the database")
    await page.goto(f"{base_url}/approvals/{refused_id}")
    await page.get_by_role("button", name="Refuse").click()
    await expect(page.locator("#approval-status")).to_have_text("refused")
    assert (await admin.get(f"/api/v1/approvals/{refused_id}")).json()["state"] == "refused"


async def _with_anomaly(db: asyncpg.Pool, incident_id: UUID, started_ns: int) -> None:
    """The anomaly the incidents service records, with its excerpt of the series around it."""
    step = 10 * 10**9
    stamps = [started_ns + (i - 30) * step for i in range(40)]
    values = [12.0 + (i % 3) * 0.5 for i in range(30)] + [95.0 + i for i in range(10)]
    await db.execute(
        """INSERT INTO incident_anomalies (incident_id, fingerprint, service, operation, signal, direction, first_ns,
               last_ns, peak_score, baseline, peak_value, relative_change, excerpt)
           VALUES ($1, 'fp-1', 'svc0', 'GET /', 'latency_p99', 'up', $2, $3, 0.97, 12.5, 104, 7.3, $4::text::jsonb)""",
        incident_id, stamps[30], stamps[-1], json.dumps({"timestamps_ns": stamps, "values": values}),
    )


async def test_an_incident_page_shows_its_rca_and_plot(
    sign_in, admin: httpx.AsyncClient, base_url: str, db: asyncpg.Pool
) -> None:
    scenario = await load_scenario(db, "chain", "db_slowdown", 0)
    async with running_worker(db):
        incident_id = await incident_for(db, scenario)
        await finished(db, incident_id)
    await _with_anomaly(db, incident_id, min(s.start_ns for s in scenario.incident))
    rca = (await admin.get(f"/api/v1/incidents/{incident_id}/rca")).json()
    top = rca["result"]["causes"][0]
    assert normalise_service(top["service"]) == normalise_service(scenario.root_cause)

    page, _ = await sign_in("supervisor")
    await page.goto(f"{base_url}/incidents/{incident_id}")
    await expect(page.locator("#rca-status")).to_have_text("done")
    causes = page.locator("#rca-causes tbody tr")
    await expect(causes).to_have_count(len(rca["result"]["causes"]))
    await expect(causes.first).to_contain_text(top["service"])
    await expect(causes.first).to_contain_text(f"{top['confidence'] * 100:.0f}%")
    await expect(causes.first.get_by_role("link", name="slowest trace")).to_be_visible()
    plot = page.locator(".signal-plot svg")
    await expect(plot).to_have_count(1)
    await expect(plot.locator("title")).to_contain_text("latency_p99 of svc0")
    assert len((await plot.locator("polyline").get_attribute("points") or "").split()) == 40
    await expect(plot.locator("rect.highlight")).to_have_count(1)  # the anomalous stretch is shaded

    # the supervisor confirms the cause from the page: the API has it
    await page.get_by_label("What resolved it").fill("added an index")
    await page.get_by_role("button", name="Confirm cause").click()
    await expect(page.locator("#rca-feedback")).to_contain_text(top["service"])
    feedback = (await admin.get(f"/api/v1/incidents/{incident_id}/rca")).json()["feedback"]
    assert feedback["service"] == normalise_service(top["service"]) and feedback["resolving_action"] == "added an index"

    await page.get_by_role("button", name="Acknowledge").click()
    await expect(page.locator("#incident-status")).to_have_text("acknowledged")
    assert (await admin.get(f"/api/v1/incidents/{incident_id}")).json()["status"] == "acknowledged"
