"""Helpers the Telegram tests share: the fake server, notification settings pointing at it, incidents."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from agents.sdk import BrokerSettings
from aiops.incidents import Anomaly, Excerpt, Incident
from aiops.incidents.store import notify, save_incident
from control_plane import approvals
from control_plane.db import connect
from control_plane.notify import NotifySettings, TelegramSettings
from control_plane.service import ControlPlane
from tests.support.system import fast_settings
from tests.telegram_fake.server import FakeTelegram, FakeTelegramServer

GROUP = -1001234567890
PRIVATE = 4242
APPROVER = 9001
STRANGER = 6666


def notify_settings(fake: FakeTelegram, api_url: str, **telegram: Any) -> NotifySettings:
    values: dict[str, Any] = dict(
        bot_token=fake.token, api_url=api_url,
        chats=[{"chat_id": GROUP, "min_severity": 0.5, "message_thread_id": 7}],
        approvers={APPROVER: "ana"}, poll_timeout_s=1, per_chat_per_s=50.0, retry_s=0.2,
    )
    values.update(telegram)
    return NotifySettings(scan_interval_s=0.2, console_url="http://console.test/console",
                          telegram=TelegramSettings(**values))


async def open_incident(database_url: str, *, services: list[str] | None = None, severity: float = 0.9,
                        title: str = "p95 latency up on GET /checkout") -> UUID:
    services = services or ["checkout"]
    now = datetime.now(UTC)
    incident = Incident(
        id=uuid4(), status="open", title=title, severity=severity, services=services, opened_at=now,
        updated_at=now, started_ns=1_000, ended_ns=None, last_anomaly_ns=3_000, acknowledged_at=None,
        acknowledged_by=None, resolved_at=None, resolved_by=None,
        anomalies=[Anomaly(
            fingerprint=json.dumps([s, "GET /checkout", "p95", "up"]), service=s, operation="GET /checkout",
            signal="p95", direction="up", first_ns=1_000, last_ns=3_000, peak_score=0.9, baseline=0.1,
            peak_value=0.4, relative_change=3.0, active=True, calm_steps=0, occurrences=1,
            excerpt=Excerpt(timestamps_ns=[0, 1_000], values=[0.1, 0.4]),
        ) for s in services],
    )
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await save_incident(conn, incident)
            await notify(conn, incident, "opened")
    finally:
        await conn.close()
    return incident.id


async def store_rca(database_url: str, incident_id: UUID, *, service: str = "payments", confidence: float = 0.82,
                    summary: str = "payments is slow: p95 up 4x since the deploy") -> None:
    result = {"status": "ok", "summary": summary, "reason": "", "stats": {},
              "causes": [{"service": service, "score": 3.1, "confidence": confidence, "category": "dependency",
                          "recommendations": []}]}
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """INSERT INTO rca_results (incident_id, status, result, updated_at) VALUES ($1, 'done', $2::jsonb, now())
               ON CONFLICT (incident_id) DO UPDATE SET status = 'done', result = $2::jsonb, updated_at = now()""",
            incident_id, json.dumps(result),
        )
    finally:
        await conn.close()


async def request_approval(database_url: str, *, risk: approvals.Risk = "medium", expires_in_s: float = 3600.0,
                           kind: str = "remediation", summary: str = "restart deployment shop/checkout") -> str:
    """A pending approval created through the approvals module, as a remediation would."""
    conn = await connect(database_url)
    try:
        approval = await approvals.create_approval(
            conn, subject_kind=kind, subject_id=str(uuid4()), summary=summary, link="/api/v1/remediations/r1",
            risk=risk, requested_by="policy", expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s),
        )
    finally:
        await conn.close()
    return approval.id


async def message_with(fake: FakeTelegram, chat_id: int, needle: str) -> dict[str, Any] | None:
    """The chat's message whose text contains ``needle`` (for ``wait_for``)."""
    return next((m for m in fake.messages[chat_id].values() if needle in m["text"]), None)


def buttons(message: dict[str, Any]) -> dict[str, str]:
    """label -> callback_data (or url) of a message's inline keyboard."""
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return {b["text"]: b.get("callback_data") or b.get("url") for row in rows for b in row}


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramServer]:
    """The fake Bot API on a loopback port, knowing a supergroup and a private chat."""
    server = FakeTelegramServer(FakeTelegram(chats={GROUP: "supergroup", PRIVATE: "private"}))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def tg_cp(database_url: str, broker_settings: BrokerSettings,
                telegram: FakeTelegramServer) -> AsyncIterator[ControlPlane]:
    """A control plane (long polling) whose notifications go to the fake Bot API."""
    async with ControlPlane(fast_settings(database_url, broker_settings),
                            notify=notify_settings(telegram.fake, telegram.url)) as plane:
        yield plane


async def sent(fake: FakeTelegram, method: str, count: int = 1) -> list[Any]:
    """Calls of ``method`` once there are at least ``count`` (for ``wait_for``)."""
    calls = fake.calls_of(method)
    return calls if len(calls) >= count else []
