"""Cron triggers: the control plane's loop starts scheduled runs; missed fire times follow the policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from control_plane.service import ControlPlane
from control_plane.workflows.scheduler import WorkflowScheduler, fire_times
from tests.control_plane.workflows.conftest import apply
from tests.support.system import wait_for


def scheduled(name: str, cron: str = "*/15 * * * *", missed: str = "skip") -> dict:
    return {"name": name, "inputs": {"who": {"type": "string"}},
            "on": {"schedule": cron, "missed": missed, "inputs": {"who": "cron"}},
            "steps": {"a": {"requires": ["nobody-has-this"], "input": {"script": "echo ${{ inputs.who }}"}}}}


def test_missed_run_policies() -> None:
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    due = [now - timedelta(minutes=m) for m in (45, 30, 15, 0)]
    assert fire_times(due, now, missed="skip", grace_s=60, catch_up=10) == [now]
    assert fire_times(due[:3], now, missed="skip", grace_s=60, catch_up=10) == []
    assert fire_times(due[:3], now, missed="run_once", grace_s=60, catch_up=10) == [due[2]]
    assert fire_times(due, now, missed="run_all", grace_s=60, catch_up=10) == due
    assert fire_times(due, now, missed="run_all", grace_s=60, catch_up=2) == due[-2:]


async def _runs(db: asyncpg.Pool, name: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM workflow_runs WHERE workflow = $1 ORDER BY created_at", name)


async def test_the_loop_starts_a_due_schedule_once(admin: httpx.AsyncClient, cp: ControlPlane,
                                                   db: asyncpg.Pool) -> None:
    applied = await apply(admin, scheduled("nightly"))
    assert applied["schedule"]["cron"] == "*/15 * * * *"
    next_at = datetime.fromisoformat(applied["schedule"]["next_at"])
    assert next_at > datetime.now(UTC) and next_at.minute % 15 == 0
    # the fire time comes due (as if the clock reached it): the control plane's own loop runs it
    await db.execute("UPDATE workflow_schedules SET next_at = now() WHERE workflow = 'nightly'")
    cp.workers.workflow_scheduler.wake()
    runs = await wait_for(lambda: _runs(db, "nightly"), what="the scheduled run", timeout_s=30)
    assert [(r["trigger"], r["created_by"], json.loads(r["inputs"])) for r in runs] == [
        ("schedule", "schedule", {"who": "cron"})]
    listed = (await admin.get("/api/v1/runs", params={"trigger": "schedule"})).json()["items"]
    assert [r["id"] for r in listed] == [str(runs[0]["id"])]
    row = await db.fetchrow("SELECT * FROM workflow_schedules WHERE workflow = 'nightly'")
    assert row["next_at"] > datetime.now(UTC) and row["last_at"] is not None
    # firing again finds nothing due: still one run
    async with cp.loops_pool.acquire() as conn:
        assert await cp.workers.workflow_scheduler.fire(conn, "nightly") == 0
    assert len(await _runs(db, "nightly")) == 1
    # a new version without `on` removes the schedule
    await apply(admin, {k: v for k, v in scheduled("nightly").items() if k != "on"})
    assert await db.fetchval("SELECT count(*) FROM workflow_schedules") == 0


@pytest.mark.parametrize(("missed", "expected"), [("skip", 0), ("run_once", 1), ("run_all", 3)])
async def test_a_control_plane_down_across_fire_times(
    admin: httpx.AsyncClient, cp: ControlPlane, db: asyncpg.Pool, missed: str, expected: int
) -> None:
    await apply(admin, scheduled(f"m-{missed}", cron="0 0 1 1 *", missed=missed))
    await cp.workers.workflow_scheduler.stop()  # this test drives the loop itself
    # three new years went by while nothing ran the loop (2024, 2025 and 2026; the next is 2027)
    await db.execute("UPDATE workflow_schedules SET next_at = '2024-01-01T00:00:00Z'")
    scheduler = WorkflowScheduler(cp.loops_pool, cp.workflows, interval_s=1)
    async with cp.loops_pool.acquire() as conn:
        assert await scheduler.fire(conn, f"m-{missed}") == expected
    runs = await _runs(db, f"m-{missed}")
    assert len(runs) == expected
    keys = sorted(r["idempotency_key"] for r in runs)  # one transaction: the same created_at
    every = [f"schedule:m-{missed}:{year}-01-01T00:00:00+00:00" for year in (2024, 2025, 2026)]
    assert keys == (every[-expected:] if expected else [])
    assert (await db.fetchval("SELECT next_at FROM workflow_schedules")).year == 2027
