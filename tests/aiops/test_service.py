"""The AIOps service end to end: spans in Postgres -> signals -> detectors -> incidents, time driven."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import asyncpg
import pytest

from aiops.incidents import get_incident
from aiops.service import AiopsService
from aiops.settings import AiopsSettings
from aiops.simulation import Fault
from aiops.traces import Span, store
from tests.aiops.incidents.workload import DAY_STEPS, Workload
from tests.support.system import wait_for


def _settings() -> AiopsSettings:
    return AiopsSettings(
        signal_step_s=1,
        incident_lag_s=0,
        incident_warmup_steps=DAY_STEPS,
        incident_correlation_window_s=10,
        incident_excerpt_points=10,
    )


def _service(db: asyncpg.Pool) -> AiopsService:
    return AiopsService(_settings(), pool=db)


class _Driver:
    """Emits one step of spans, then lets the service process it; collects NOTIFY payloads."""

    def __init__(self, db: asyncpg.Pool, workload: Workload) -> None:
        self.db, self.workload, self.step = db, workload, DAY_STEPS
        self.notes: list[dict[str, str]] = []

    def listener(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notes.append(json.loads(payload))

    async def run(self, service: AiopsService, steps: int, fault: Fault | None = None) -> list[str]:
        events: list[str] = []
        for _ in range(steps):
            async with self.db.acquire() as conn:
                await self.workload.emit(conn, self.step, self.step + 1, fault)
            self.step += 1
            results = await service.run_once(self.workload.step_start_ns(self.step))
            assert [r.step_start_ns for r in results] == [self.workload.step_start_ns(self.step - 1)]
            events += [event for r in results for event in r.report.events.values()]
        return events


    async def run_until_resolved(self, service: AiopsService, max_steps: int = 40) -> list[str]:
        """Calm steps until an incident resolves (at most ``max_steps``). The detector's slow
        statistics span 24 steps, so a series is calm again about 24 + recovery_points (5) steps
        after its fault ends."""
        events: list[str] = []
        for _ in range(max_steps):
            events += await self.run(service, 1)
            if "resolved" in events:
                break
        return events


async def _incidents(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT id, status, services FROM incidents ORDER BY opened_at")


@pytest.fixture
async def driver(db: asyncpg.Pool) -> _Driver:
    workload = Workload()
    async with db.acquire() as conn:
        await workload.emit(conn, 0, DAY_STEPS)
    return _Driver(db, workload)


async def test_latency_regression_opens_one_incident_survives_restart_and_auto_resolves(
    db: asyncpg.Pool, database_url: str, driver: _Driver
) -> None:
    listen = await asyncpg.connect(database_url)
    await listen.add_listener("devart_incidents", driver.listener)
    try:
        async with _service(db) as service:
            assert await driver.run(service, 40) == []  # a steady stretch of the day: nothing opens
            assert await _incidents(db) == []
            events = await driver.run(service, 3, Fault("db_slowdown", "svc2"))
            assert "opened" in events
        [incident] = await _incidents(db)
        stored = await db.fetchval("SELECT count(*) FROM aiops_series_state")

        async with _service(db) as restarted:  # a new process: resumes the stored detectors
            events = await driver.run(restarted, 10, Fault("db_slowdown", "svc2"))
            assert "opened" not in events
            assert restarted.pipeline.tracked == stored
            assert [r["id"] for r in await _incidents(db)] == [incident["id"]]
            assert "resolved" in await driver.run_until_resolved(restarted)
        found = await get_incident(db, incident["id"])
    finally:
        await listen.close()
    assert found.status == "resolved" and found.resolved_by == "aiops"
    assert "svc2" in found.services
    assert any(a.service == "svc2" and a.signal == "p95" and a.direction == "up" for a in found.anomalies)
    assert found.ended_ns is not None and found.ended_ns > found.started_ns
    assert found.started_ns >= driver.workload.step_start_ns(DAY_STEPS + 40)
    p95 = next(a for a in found.anomalies if a.service == "svc2" and a.signal == "p95")
    assert p95.relative_change is not None and p95.relative_change > 1.0
    assert len(p95.excerpt.values) > 10  # lead-in plus the anomalous stretch
    async def resolved_heard() -> bool:
        return bool(driver.notes) and driver.notes[-1]["event"] == "resolved"

    await wait_for(resolved_heard, timeout_s=10, what="the resolved notification")
    events = [n["event"] for n in driver.notes]
    assert events == ["opened", *["updated"] * (len(events) - 2), "resolved"]
    assert {n["incident_id"] for n in driver.notes} == {str(incident["id"])}


async def test_error_burst_opens_one_incident_and_auto_resolves(db: asyncpg.Pool, driver: _Driver) -> None:
    async with _service(db) as service:
        assert await driver.run(service, 30) == []
        events = await driver.run(service, 10, Fault("exception", "svc1"))
        [incident] = await _incidents(db)
        assert events.count("opened") == 1
        assert events.index("opened") <= 2
        assert "resolved" in await driver.run_until_resolved(service)
    found = await get_incident(db, incident["id"])
    assert found.status == "resolved"
    assert any(a.service == "svc1" and a.signal == "error_ratio" and a.direction == "up" for a in found.anomalies)
    assert 0 < found.severity <= 1


@pytest.mark.parametrize(("kind", "service", "signal"), [("db_slowdown", "svc2", "p95"), ("exception", "svc1", "error_ratio")])
async def test_a_lasting_fault_stays_one_open_incident_until_its_signal_is_back_near_its_baseline(
    db: asyncpg.Pool, driver: _Driver, kind: str, service: str, signal: str
) -> None:
    """The detector learns the fault as it goes on (on this short history its scores are quiet
    again within a few steps), so only the return to the lead-in baseline may resolve the incident,
    and the detector's view of that return (a move the other way) must not raise the signal again."""
    async with _service(db) as aiops:
        assert await driver.run(aiops, 30) == []
        events = await driver.run(aiops, 120, Fault(kind, service))
        assert events.count("opened") == 1 and "resolved" not in events
        [incident] = await _incidents(db)
        assert incident["status"] == "open"
        events = await driver.run_until_resolved(aiops, max_steps=15)  # 5 steps back near the baseline
        assert "resolved" in events and "opened" not in events
        await driver.run(aiops, 60)
    found = await get_incident(db, incident["id"])
    assert found.status == "resolved" and found.resolved_by == "aiops"
    anomaly = next(a for a in found.anomalies if (a.service, a.signal) == (service, signal))
    assert anomaly.baseline is not None and anomaly.occurrences == 1 and not anomaly.active
    later = [await get_incident(db, r["id"]) for r in await _incidents(db) if r["id"] != incident["id"]]
    # the return swing raises nothing on the fault's signal (an unrelated chance blip elsewhere may)
    assert not [a for i in later for a in i.anomalies if (a.service, a.signal) == (service, signal)]


async def test_devart_aiops_runs_the_loop_on_the_wall_clock(db: asyncpg.Pool, database_url: str) -> None:
    env = dict(
        os.environ, DEVART_DATABASE_URL=database_url, DEVART_AIOPS_SIGNAL_STEP_S="1", DEVART_AIOPS_INCIDENT_LAG_S="0"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane.cli", "aiops", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    first: int | None = None
    try:

        async def progressed() -> bool:
            nonlocal first
            now = await db.fetchval("SELECT last_step_ns FROM aiops_progress")
            first = first if first is not None else now
            return now is not None and first is not None and now > first

        await wait_for(progressed, timeout_s=30, what="the AIOps loop to process two steps")
    finally:
        process.terminate()
        await process.wait()


async def test_tracked_series_are_capped_least_recently_seen_evicted(db: asyncpg.Pool) -> None:
    settings = _settings().model_copy(update={"incident_max_series": 4, "incident_warmup_steps": 0})
    workload = Workload()
    async with db.acquire() as conn:
        await workload.emit(conn, 0, 2)
        await store.insert_spans(conn, spans=[
            Span(trace_id=f"{1:032x}", span_id=f"{1:016x}", parent_id=None, service="batch", name="nightly",
                 kind="server", start_ns=workload.step_start_ns(2), end_ns=workload.step_start_ns(2) + 5,
                 status="ok", attributes={})
        ])

    async def stored() -> set[str]:
        return {json.loads(r["series_key"])[0] for r in await db.fetch("SELECT series_key FROM aiops_series_state")}

    async with AiopsService(settings, pool=db) as service:
        await service.run_once(workload.step_start_ns(1))
        assert service.pipeline.tracked == 4  # 9 live series, the first 4 seen are kept: no thrashing
        kept = await stored()
        await service.run_once(workload.step_start_ns(2))
        assert await stored() == kept
        await service.run_once(workload.step_start_ns(3))  # only batch is live: it replaces the stalest series
        assert service.pipeline.tracked == 4
    assert "batch" in await stored()
    assert await db.fetchval("SELECT count(*) FROM aiops_series_state") == 4


async def test_series_stored_by_an_older_default_run_todays_detector_and_rules(db: asyncpg.Pool) -> None:
    from aiops.detection import Alerter, AlerterSettings, RobustDetector
    from aiops.incidents.pipeline import live_rules
    from aiops.incidents.series import TrackedSeries, save_series

    workload = Workload()
    key = ("svc0", "GET /", "p95")
    old = TrackedSeries(key, Alerter(RobustDetector(), AlerterSettings(threshold=0.9, min_points=3)), recent_points=10,
                        rules=live_rules(_settings()).recovery)
    async with db.acquire() as conn:
        await workload.emit(conn, 0, 2)
        await save_series(conn, [old])

    async def stored_state() -> dict:
        row = await db.fetchval("SELECT state::text FROM aiops_series_state WHERE series_key = $1", json.dumps(list(key)))
        return json.loads(row)["alerter"]

    assert (await stored_state())["detector"]["kind"] == "robust"
    async with AiopsService(_settings().model_copy(update={"incident_warmup_steps": 0}), pool=db) as service:
        await service.run_once(workload.step_start_ns(2))
    upgraded = await stored_state()
    assert upgraded["detector"]["kind"] == "conformal"
    assert upgraded["detector"]["settings"]["suppress_points"] == 0  # the live path's rules, not the stored ones
    assert (upgraded["settings"]["threshold"], upgraded["settings"]["min_points"]) == (AlerterSettings().threshold, 1)
