"""/api/v1/incidents against a real control plane: reading, lifecycle, silences, windows, audit, events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import httpx

from aiops.incidents import Anomaly, Excerpt, Incident
from aiops.incidents.store import save_incident
from tests.support.system import client, make_token, wait_for


async def _incident(database_url: str, *, services: list[str], opened_at: datetime) -> UUID:
    anomalies = [
        Anomaly(
            fingerprint=json.dumps([s, "GET /", "p95", "up"]), service=s, operation="GET /", signal="p95",
            direction="up", first_ns=1_000, last_ns=3_000, peak_score=0.9, baseline=0.1, peak_value=0.4,
            relative_change=3.0, active=True, calm_steps=0, occurrences=1,
            excerpt=Excerpt(timestamps_ns=[0, 1_000, 2_000], values=[0.1, None, 0.4]),
        )
        for s in services
    ]
    incident = Incident(
        id=uuid4(), status="open", title="p95 up", severity=0.5, services=services, opened_at=opened_at,
        updated_at=opened_at, started_ns=1_000, ended_ns=None, last_anomaly_ns=3_000, acknowledged_at=None,
        acknowledged_by=None, resolved_at=None, resolved_by=None, anomalies=anomalies,
    )
    conn = await asyncpg.connect(database_url)
    try:
        await save_incident(conn, incident)
    finally:
        await conn.close()
    return incident.id


async def test_list_filters_and_pages_get_shows_anomalies(admin: httpx.AsyncClient, database_url: str) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = await _incident(database_url, services=["api"], opened_at=t0)
    second = await _incident(database_url, services=["api", "db"], opened_at=t0 + timedelta(minutes=1))
    third = await _incident(database_url, services=["db"], opened_at=t0 + timedelta(minutes=2))

    page = (await admin.get("/api/v1/incidents", params={"limit": 2})).json()
    assert [i["id"] for i in page["items"]] == [str(third), str(second)]
    rest = (await admin.get("/api/v1/incidents", params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [i["id"] for i in rest["items"]] == [str(first)] and rest["next_cursor"] is None
    by_service = (await admin.get("/api/v1/incidents", params={"service": "api"})).json()
    assert {i["id"] for i in by_service["items"]} == {str(first), str(second)}
    assert (await admin.get("/api/v1/incidents", params={"status": "resolved"})).json()["items"] == []

    detail = (await admin.get(f"/api/v1/incidents/{second}")).json()
    assert detail["services"] == ["api", "db"] and len(detail["anomalies"]) == 2
    assert detail["anomalies"][0]["excerpt"] == {"timestamps_ns": [0, 1000, 2000], "values": [0.1, None, 0.4]}

    bad = await admin.get("/api/v1/incidents", params={"status": "closed"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "query.status"
    bad = await admin.get("/api/v1/incidents", params={"cursor": "garbage"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"
    missing = await admin.get(f"/api/v1/incidents/{uuid4()}")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "incident_id"


async def test_acknowledge_and_resolve_are_audited_notified_and_streamed(
    base_url: str, admin: httpx.AsyncClient, database_url: str
) -> None:
    incident_id = await _incident(database_url, services=["api"], opened_at=datetime.now(UTC))
    heard: list[dict[str, str]] = []
    listen = await asyncpg.connect(database_url)
    await listen.add_listener("devart_incidents", lambda *args: heard.append(json.loads(args[3])))
    streamed: list[dict[str, object]] = []
    try:
        async with admin.stream("GET", "/api/v1/events") as events:
            lines = events.aiter_lines()
            assert await anext(lines) == ": connected"
            async with client(base_url, await make_token(database_url, "viewer")) as viewer:
                refused = await viewer.post(f"/api/v1/incidents/{incident_id}/acknowledge")
                assert refused.status_code == 403
                assert (await viewer.get(f"/api/v1/incidents/{incident_id}")).status_code == 200

            acked = await admin.post(f"/api/v1/incidents/{incident_id}/acknowledge")
            assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
            assert acked.json()["acknowledged_by"] == "admin-token"
            assert (await admin.post(f"/api/v1/incidents/{incident_id}/acknowledge")).status_code == 409
            resolved = (await admin.post(f"/api/v1/incidents/{incident_id}/resolve")).json()
            assert resolved["status"] == "resolved" and resolved["ended_ns"] == 3_000
            assert all(not a["active"] for a in resolved["anomalies"])
            again = await admin.post(f"/api/v1/incidents/{incident_id}/resolve")
            assert again.status_code == 409 and "already resolved" in again.json()["error"]["message"]

            async for line in lines:
                if line.startswith("data: ") and '"kind": "incident"' in line:
                    streamed.append(json.loads(line.removeprefix("data: ")))
                    if len(streamed) == 2:
                        break

        async def both_heard() -> bool:
            return len(heard) == 2

        await wait_for(both_heard, timeout_s=10, what="two incident notifications")
    finally:
        await listen.close()
    assert heard == [{"incident_id": str(incident_id), "event": e} for e in ("acknowledged", "resolved")]
    assert [(s["event"], s["status"]) for s in streamed] == [("acknowledged", "acknowledged"), ("resolved", "resolved")]
    conn = await asyncpg.connect(database_url)
    try:
        actions = await conn.fetch("SELECT action, actor FROM audit_log WHERE target = $1 ORDER BY id", str(incident_id))
    finally:
        await conn.close()
    assert [(r["action"], r["actor"]) for r in actions] == [
        ("incident.acknowledge", "admin-token"), ("incident.resolve", "admin-token")
    ]


async def test_silences_and_maintenance_windows(admin: httpx.AsyncClient) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    no_matcher = await admin.post("/api/v1/incidents/silences", json={"expires_at": soon})
    assert no_matcher.status_code == 422 and no_matcher.json()["error"]["field"] == "service"
    naive = await admin.post("/api/v1/incidents/silences", json={"service": "db", "expires_at": "2030-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["error"]["field"] == "body.expires_at"
    past = await admin.post("/api/v1/incidents/silences", json={"service": "db", "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 422 and past.json()["error"]["field"] == "expires_at"

    created = await admin.post("/api/v1/incidents/silences", json={"service": "db", "signal": "p95", "expires_at": soon})
    assert created.status_code == 201
    silence = created.json()
    assert silence["service"] == "db" and silence["operation"] is None and silence["created_by"] == "admin-token"
    assert [s["id"] for s in (await admin.get("/api/v1/incidents/silences")).json()] == [silence["id"]]
    assert (await admin.delete(f"/api/v1/incidents/silences/{silence['id']}")).status_code == 204
    assert (await admin.delete(f"/api/v1/incidents/silences/{silence['id']}")).status_code == 404
    assert (await admin.get("/api/v1/incidents/silences")).json() == []

    backwards = await admin.post("/api/v1/incidents/maintenance-windows", json={"starts_at": later, "ends_at": soon})
    assert backwards.status_code == 422 and backwards.json()["error"]["field"] == "ends_at"
    window = await admin.post(
        "/api/v1/incidents/maintenance-windows", json={"service": "db", "starts_at": soon, "ends_at": later}
    )
    assert window.status_code == 201
    listed = (await admin.get("/api/v1/incidents/maintenance-windows")).json()
    assert [(w["id"], w["service"]) for w in listed] == [(window.json()["id"], "db")]
    assert (await admin.delete(f"/api/v1/incidents/maintenance-windows/{window.json()['id']}")).status_code == 204
    assert (await admin.get("/api/v1/incidents/maintenance-windows")).json() == []
