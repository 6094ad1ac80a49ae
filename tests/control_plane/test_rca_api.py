"""/api/v1/incidents/{id}/rca through the real API with a running RCA worker: auth, 404s, pending,
feedback into the similar-incident memory, the audit log and the calibration set."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

import asyncpg
import httpx

from aiops.rca import normalise_service
from tests.aiops.rca.test_worker import finished, incident_for, load_scenario, open_incident, running_worker
from tests.support.system import client, make_token


async def test_rca_routes_need_a_token_and_the_right_role(base_url: str, database_url: str, db: asyncpg.Pool) -> None:
    incident_id = await open_incident(db, 10**18, None, notify=False)
    viewer_token = await make_token(database_url, "viewer")
    async with client(base_url, None) as anonymous, client(base_url, viewer_token) as viewer:
        response = await anonymous.get(f"/api/v1/incidents/{incident_id}/rca")
        assert response.status_code == 401 and response.json()["error"]["field"] == "Authorization"
        response = await viewer.post(f"/api/v1/incidents/{incident_id}/rca/feedback", json={"service": "db"})
        assert response.status_code == 403 and "incidents:operate" in response.json()["error"]["message"]
        response = await viewer.get(f"/api/v1/incidents/{incident_id}/rca")
        assert response.status_code == 202
        assert response.json()["status"] == "pending" and response.json()["result"] is None


async def test_unknown_incident_is_404_and_unfinished_rca_refuses_feedback(
    admin: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    unknown = uuid4()
    response = await admin.get(f"/api/v1/incidents/{unknown}/rca")
    assert response.status_code == 404 and response.json()["error"]["field"] == "incident_id"
    response = await admin.post(f"/api/v1/incidents/{unknown}/rca/feedback", json={"service": "db"})
    assert response.status_code == 404
    response = await admin.get("/api/v1/incidents/not-a-uuid/rca")
    assert response.status_code == 422 and response.json()["error"]["field"] == "path.incident_id"
    pending = await open_incident(db, 10**18, None, notify=False)
    response = await admin.post(f"/api/v1/incidents/{pending}/rca/feedback", json={"service": "db"})
    assert response.status_code == 409 and "not finished" in response.json()["error"]["message"]
    response = await admin.post(f"/api/v1/incidents/{pending}/rca/feedback", json={"service": ""})
    assert response.status_code == 422 and response.json()["error"]["field"] == "body.service"


async def test_confirmed_causes_feed_similar_incidents_audit_and_calibration(
    base_url: str, database_url: str, admin: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    supervisor_token = await make_token(database_url, "supervisor")
    slow_db = await load_scenario(db, "chain", "db_slowdown", 0)
    failing = await load_scenario(db, "chain", "exception", 1)
    slow_db_again = await load_scenario(db, "chain", "db_slowdown", 2)
    async with client(base_url, supervisor_token) as supervisor, running_worker(db):
        first = await _analysed(db, admin, await incident_for(db, slow_db))
        top = first["result"]["causes"][0]["service"]
        assert normalise_service(top) == normalise_service(slow_db.root_cause)
        response = await supervisor.post(
            f"/api/v1/incidents/{first['incident_id']}/rca/feedback",
            json={"service": top, "resolving_action": "scaled the database", "note": "disk was full"},
        )
        assert response.status_code == 200, response.text
        feedback = response.json()["feedback"]
        assert feedback["service"] == top and feedback["confirmed_by"] == "supervisor-token"
        assert feedback["category"] == first["result"]["causes"][0]["category"]

        second = await _analysed(db, admin, await incident_for(db, failing))
        # the supervisor corrects the RCA: the real cause is another service, of a category they name
        response = await supervisor.post(
            f"/api/v1/incidents/{second['incident_id']}/rca/feedback",
            json={"service": "svc9"},
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "body.category"
        response = await supervisor.post(
            f"/api/v1/incidents/{second['incident_id']}/rca/feedback",
            json={"service": "svc9", "category": "configuration/deployment change", "resolving_action": "rollback"},
        )
        assert response.status_code == 200, response.text

        third = await _analysed(db, admin, await incident_for(db, slow_db_again))
    assert [s["incident_id"] for s in third["similar"]][:1] == [first["incident_id"]]
    nearest = third["similar"][0]
    assert nearest["cause_service"] == top and nearest["remediation"] == "scaled the database"
    assert {s["cause_service"] for s in third["similar"]} == {top, "svc9"}

    memory = await db.fetch("SELECT incident_id, cause_service, category FROM rca_memory ORDER BY id")
    assert [(r["incident_id"], r["cause_service"]) for r in memory] == [
        (first["incident_id"], top), (second["incident_id"], "svc9")
    ]
    samples = {
        str(r["incident_id"]): r
        for r in await db.fetch("SELECT incident_id, features, correct, confidence FROM rca_calibration_samples")
    }
    assert samples[first["incident_id"]]["correct"] is True
    assert samples[second["incident_id"]]["correct"] is False
    assert len(samples[first["incident_id"]]["features"]) == 4 and samples[first["incident_id"]]["features"][0] == 1
    audited = await db.fetch(
        "SELECT actor, target, detail::text AS detail FROM audit_log WHERE action = 'incident.rca.feedback' ORDER BY id"
    )
    assert [(r["actor"], r["target"]) for r in audited] == [
        ("supervisor-token", first["incident_id"]), ("supervisor-token", second["incident_id"])
    ]
    assert json.loads(audited[1]["detail"])["rca_was_right"] is False


async def test_a_second_feedback_replaces_the_first(admin: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    scenario = await load_scenario(db, "chain", "db_slowdown", 0)
    async with running_worker(db):
        rca = await _analysed(db, admin, await incident_for(db, scenario))
    url = f"/api/v1/incidents/{rca['incident_id']}/rca/feedback"
    top = rca["result"]["causes"][0]
    assert (await admin.post(url, json={"service": "svc0", "category": "application code"})).status_code == 200
    response = await admin.post(url, json={"service": top["service"]})
    assert response.status_code == 200 and response.json()["feedback"]["category"] == top["category"]
    rows = await db.fetch("SELECT cause_service FROM rca_memory WHERE incident_id = $1", rca["incident_id"])
    assert [r["cause_service"] for r in rows] == [top["service"]]
    assert await db.fetchval("SELECT correct FROM rca_calibration_samples") is True


async def _analysed(db: asyncpg.Pool, admin: httpx.AsyncClient, incident_id: UUID) -> dict:
    await finished(db, incident_id)
    response = await admin.get(f"/api/v1/incidents/{incident_id}/rca")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done"
    return body
