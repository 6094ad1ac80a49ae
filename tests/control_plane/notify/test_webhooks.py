"""The outgoing webhook notifier: signed JSON events, retried with backoff from the outbox table, filtered."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from agents.sdk import BrokerSettings
from control_plane.notify import NotifySettings
from control_plane.service import ControlPlane
from tests.support import loopback
from tests.support.system import client, fast_settings, make_token, serve_api, wait_for
from tests.telegram_fake.fixtures import open_incident, request_approval, store_rca

SECRET = "whsec-0123456789abcdef"


@dataclass
class Receiver:
    """An HTTP receiver that checks each delivery's signature the way a user's would (GitHub style)."""

    secret: str
    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        given = request.headers.get("X-Devart-Signature-256", "")
        if not hmac.compare_digest(expected, given):
            self.refused.append(request.headers.get("X-Devart-Delivery", ""))
            return web.Response(status=401, text="bad signature")
        if self.fail_first > 0:
            self.fail_first -= 1
            self.refused.append(request.headers["X-Devart-Delivery"])
            return web.Response(status=503, text="try later")
        self.received.append({"delivery": request.headers["X-Devart-Delivery"],
                              "event": request.headers["X-Devart-Event"], "body": json.loads(body)})
        return web.Response(status=204)

    def events(self) -> list[str]:
        return [r["event"] for r in self.received]


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    made = [Receiver(SECRET, fail_first=1), Receiver(SECRET), Receiver("not-the-secret-at-all")]
    app = web.Application()
    for n, receiver in enumerate(made):
        app.router.add_post(f"/hook/{n}", receiver.handle)
    async with loopback.serve(app) as origin:
        for n, receiver in enumerate(made):
            receiver.url = f"{origin}/hook/{n}"
        yield made


@pytest.fixture
async def hooked_cp(database_url: str, broker_settings: BrokerSettings,
                    receivers: list[Receiver]) -> AsyncIterator[ControlPlane]:
    incidents, approvals, wrong = receivers
    settings = NotifySettings(
        scan_interval_s=0.2, webhook_backoff_s=0.2, webhook_max_attempts=3, console_url="http://console.test",
        webhooks=[{"url": incidents.url, "secret": SECRET, "events": ["incident.*"], "name": "incidents"},
                  {"url": approvals.url, "secret": SECRET, "events": ["approval.*"]},
                  {"url": wrong.url, "secret": SECRET, "events": ["incident.opened"], "name": "misconfigured"}],
    )
    async with ControlPlane(fast_settings(database_url, broker_settings), notify=settings) as plane:
        yield plane


async def test_signed_events_are_delivered_retried_and_filtered(
    hooked_cp: ControlPlane, receivers: list[Receiver], database_url: str, db: asyncpg.Pool
) -> None:
    incidents, approvals, _ = receivers
    incident_id = await open_incident(database_url)
    await wait_for(lambda: _async(incidents.events() == ["incident.opened"]), what="incident.opened")
    (opened,) = incidents.received
    assert incidents.refused == [opened["delivery"]]  # the 503 was retried with the same delivery id
    body = opened["body"]
    assert body["event"] == "incident.opened" and body["id"] == opened["delivery"]
    assert body["subject"] == {"kind": "incident", "id": str(incident_id),
                               "url": f"http://console.test/incidents/{incident_id}"}
    assert body["data"]["status"] == "open" and body["data"]["services"] == ["checkout"] and body["previous"] is None
    delivered = "SELECT state = 'delivered' FROM webhook_deliveries WHERE id = $1::uuid"
    await wait_for(lambda: db.fetchval(delivered, opened["delivery"]), what="the delivery recorded")
    row = await db.fetchrow("SELECT attempts, last_status FROM webhook_deliveries WHERE id = $1::uuid",
                            opened["delivery"])
    assert (row["attempts"], row["last_status"]) == (2, 204)

    await store_rca(database_url, incident_id)
    await wait_for(lambda: _async("incident.rca_ready" in incidents.events()), what="incident.rca_ready")
    assert incidents.received[-1]["body"]["data"]["rca"]["service"] == "payments"
    async with serve_api(hooked_cp) as base_url, client(base_url, await make_token(database_url, "admin")) as admin:
        assert (await admin.post(f"/api/v1/incidents/{incident_id}/acknowledge")).status_code == 200
        await wait_for(lambda: _async("incident.acknowledged" in incidents.events()), what="incident.acknowledged")

        await request_approval(database_url)
        await wait_for(lambda: _async(approvals.events() == ["approval.requested"]), what="approval.requested")
        assert approvals.received[0]["body"]["data"]["state"] == "pending"
        assert not any(e.startswith("approval.") for e in incidents.events())

        # a receiver whose secret differs refuses every delivery: retried, then failed and listed
        failed = await wait_for(lambda: _failed(admin), what="the misconfigured webhook's delivery to fail")
        assert failed[0]["webhook"] == "misconfigured" and failed[0]["attempts"] == 3
        assert failed[0]["last_status"] == 401 and "bad signature" in failed[0]["last_error"]


async def _failed(admin: Any) -> list[dict[str, Any]]:
    response = await admin.get("/api/v1/notifications/webhook-deliveries", params={"state": "failed"})
    return response.json()


async def _async(value: object) -> object:
    return value
