"""Stored RCA results become proposals: one per incident and action, under the policy; escalation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from aiops.incidents import Anomaly, Excerpt, Incident
from aiops.incidents.store import save_incident
from tests.aiops.remediation.conftest import drive
from tests.k8s_fake import FakeKubernetes
from tests.support.system import client, make_token, serve_api

TERMINAL = ("successful", "failed", "inconclusive", "refused", "expired", "error", "suggested")


async def _analysed_incident(database_url: str, *, service: str, confidence: float, actions: list[str]) -> UUID:
    now = datetime.now(UTC)
    anomaly = Anomaly(fingerprint=json.dumps([service, "GET /", "p95", "up"]), service=service, operation="GET /",
                      signal="p95", direction="up", first_ns=1_000, last_ns=3_000, peak_score=0.9, baseline=0.1,
                      peak_value=0.4, relative_change=3.0, active=True, calm_steps=0, occurrences=1,
                      excerpt=Excerpt(timestamps_ns=[0], values=[0.1]))
    incident = Incident(id=uuid4(), status="open", title="p95 up", severity=0.5, services=[service], opened_at=now,
                        updated_at=now, started_ns=1_000, ended_ns=None, last_anomaly_ns=3_000, acknowledged_at=None,
                        acknowledged_by=None, resolved_at=None, resolved_by=None, anomalies=[anomaly])
    result = {"status": "ok", "causes": [{
        "service": service, "score": 1.0, "confidence": confidence, "category": "infrastructure/resource",
        "recommendations": [{"action": a, "target": service, "why": "test"} for a in actions]}]}
    conn = await asyncpg.connect(database_url)
    try:
        await save_incident(conn, incident)
        await conn.execute("INSERT INTO rca_results (incident_id, status, result) VALUES ($1, 'done', $2::jsonb)",
                           incident.id, json.dumps(result))
    finally:
        await conn.close()
    return incident.id


async def test_default_policy_turns_rca_into_one_suggestion_per_incident(
    plane: Callable[..., Any], database_url: str
) -> None:
    incident = await _analysed_incident(database_url, service="api", confidence=0.99, actions=["restart", "notify"])
    async with plane("") as cp, serve_api(cp) as url, client(url, await make_token(database_url, "viewer")) as viewer:
        await asyncio.gather(*(cp.remediation.propose_from_rca() for _ in range(5)))
        page = (await viewer.get("/api/v1/remediations", params={"incident_id": str(incident)})).json()
        [proposal] = page["items"]  # restart is outside the (empty) namespace allow-list; notify is next
        assert (proposal["action"], proposal["origin"], proposal["mode"]) == ("notify", "rca", "suggest")
        done = await drive(cp, viewer, proposal["id"], *TERMINAL)
        assert done["state"] == "suggested" and done["approval_id"] is None and done["applied_at"] is None
        await cp.remediation.run_once()
        assert len((await viewer.get("/api/v1/remediations")).json()["items"]) == 1


async def test_a_failed_restart_escalates_up_the_ladder_then_hands_over(
    plane: Callable[..., Any], fake: FakeKubernetes, database_url: str
) -> None:
    fake.workloads.deployment("api")
    fake.workloads.never_available("api")
    policy = """
namespaces: [default]
defaults:
  mode: auto
  min_confidence: 0.9
  cooldown: 0s
  verify: {interval: 0.2s, count: 2, failure_limit: 0, rollout_timeout: 0.5s}
escalation:
  default: [restart, rollback]
"""
    incident = await _analysed_incident(database_url, service="api", confidence=0.95, actions=["restart"])
    async with plane(policy) as cp, serve_api(cp) as url, client(url, await make_token(database_url, "viewer")) as viewer:
        await cp.remediation.propose_from_rca()
        [restart] = (await viewer.get("/api/v1/remediations")).json()["items"]
        assert restart["mode"] == "auto"
        failed = await drive(cp, viewer, restart["id"], *TERMINAL)
        assert failed["state"] == "failed", failed["state_reason"]
        assert failed["steps"][-1]["state"] == "escalated"
        items = (await viewer.get("/api/v1/remediations", params={"incident_id": str(incident)})).json()["items"]
        rollback = next(r for r in items if r["action"] == "rollback")
        assert rollback["origin"] == "escalation"
        last = await drive(cp, viewer, rollback["id"], *TERMINAL)  # back to revision 1, which never comes up either
        assert last["state"] == "failed" and last["preflight"]["to_revision"] == 1
        assert last["steps"][-1]["state"] == "handed_over" and "a person must take over" in last["steps"][-1]["reason"]
        await cp.remediation.run_once()
        assert len((await viewer.get("/api/v1/remediations")).json()["items"]) == 2


async def test_low_confidence_needs_approval_even_under_auto(plane: Callable[..., Any], fake: FakeKubernetes,
                                                             database_url: str) -> None:
    fake.workloads.deployment("api")
    await _analysed_incident(database_url, service="api", confidence=0.5, actions=["restart"])
    async with plane("namespaces: [default]\ndefaults: {mode: auto}\n") as cp, serve_api(cp) as url, \
            client(url, await make_token(database_url, "viewer")) as viewer:
        await cp.remediation.propose_from_rca()
        [restart] = (await viewer.get("/api/v1/remediations")).json()["items"]
        assert restart["mode"] == "approve" and "below 0.9" in restart["reason"]
        waiting = await drive(cp, viewer, restart["id"], "awaiting_approval")
        assert waiting["approval"]["requested_by"] == "policy" and fake.workloads.real_writes() == []
