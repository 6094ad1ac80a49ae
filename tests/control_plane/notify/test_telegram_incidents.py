"""Incident messages through python-telegram-bot and a local Bot API server: one message, edited in place."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from datetime import timedelta
from uuid import uuid4

import asyncpg

from agents.sdk import BrokerSettings
from control_plane.service import ControlPlane
from tests.support.system import client, fast_settings, make_token, serve_api, wait_for
from tests.telegram_fake.fixtures import (
    APPROVER,
    GROUP,
    PRIVATE,
    buttons,
    notify_settings,
    open_incident,
    sent,
    store_rca,
)
from tests.telegram_fake.server import FakeTelegramServer


async def test_an_incident_is_one_message_edited_when_its_rca_lands(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str
) -> None:
    fake = telegram.fake
    incident_id = await open_incident(database_url)
    calls = await wait_for(lambda: sent(fake, "sendMessage"), what="sendMessage")
    assert len(calls) == 1 and fake.calls_of("getMe")
    params = calls[0].params
    assert params["chat_id"] == GROUP and params["message_thread_id"] == 7 and params["parse_mode"] == "HTML"
    assert not params.get("disable_notification")  # 0.9 is above the chat's 0.5
    (message,) = fake.messages[GROUP].values()
    assert "critical" in message["text"] and "checkout" in message["text"]
    assert "p95 latency up on GET /checkout" in message["text"]
    keys = buttons(message)
    assert set(keys) == {"Acknowledge", "Silence 1h", "Open in console"}
    assert keys["Open in console"] == f"http://console.test/console/incidents/{incident_id}"
    assert all(len(keys[k].encode()) <= 64 and keys[k].startswith("dv1:") for k in ("Acknowledge", "Silence 1h"))

    await store_rca(database_url, incident_id)
    await wait_for(lambda: sent(fake, "editMessageText"), what="editMessageText")
    assert len(fake.calls_of("sendMessage")) == 1
    (message,) = fake.messages[GROUP].values()
    assert "Root cause: payments (dependency), confidence 82%" in message["text"]
    assert buttons(message) == keys  # the same references, still valid


async def test_acknowledge_from_the_chat_goes_through_the_incident_path_and_edits_the_message(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    incident_id = await open_incident(database_url)
    await wait_for(lambda: sent(fake, "sendMessage"), what="the incident message")
    (message,) = fake.messages[GROUP].values()
    fake.press(GROUP, message["message_id"], buttons(message)["Acknowledge"], user_id=APPROVER, username="ana")

    await wait_for(lambda: _async(fake.answers), what="the callback answer")
    assert fake.answers[0]["text"] == "Acknowledged." and not fake.answers[0]["show_alert"]
    row = await db.fetchrow("SELECT status, acknowledged_by FROM incidents WHERE id = $1", incident_id)
    assert (row["status"], row["acknowledged_by"]) == ("acknowledged", "ana")
    audit = await db.fetchrow("SELECT actor, detail::text FROM audit_log WHERE action = 'incident.acknowledge'")
    assert audit["actor"] == "ana" and json.loads(audit["detail"])["via"] == "telegram"

    def edited() -> Awaitable[bool]:
        return _async("acknowledged by @ana at" in fake.messages[GROUP][message["message_id"]]["text"])

    await wait_for(edited, what="the message to show who acknowledged")
    after = fake.messages[GROUP][message["message_id"]]
    assert set(buttons(after)) == {"Silence 1h", "Open in console"}
    assert len(fake.calls_of("sendMessage")) == 1


async def test_silence_from_the_chat_silences_the_incident_services_for_an_hour(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    await open_incident(database_url, services=["checkout", "payments"])
    await wait_for(lambda: sent(fake, "sendMessage"), what="the incident message")
    (message,) = fake.messages[GROUP].values()
    fake.press(GROUP, message["message_id"], buttons(message)["Silence 1h"], user_id=APPROVER)
    await wait_for(lambda: _async(fake.answers), what="the callback answer")
    assert fake.answers[0]["text"] == "Silenced for 1 hour."
    rows = await db.fetch("SELECT service, expires_at - created_at AS span FROM incident_silences ORDER BY service")
    assert [r["service"] for r in rows] == ["checkout", "payments"]
    assert all(r["span"] == timedelta(hours=1) for r in rows)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'incident.silence.create'") == 2


async def test_below_the_chat_severity_the_message_is_quiet(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str
) -> None:
    await open_incident(database_url, severity=0.3)
    (call,) = await wait_for(lambda: sent(telegram.fake, "sendMessage"), what="the incident message")
    assert call.params["disable_notification"] is True
    assert "minor" in telegram.fake.last_text(GROUP)


async def test_a_burst_of_incidents_becomes_a_digest(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    for n in range(6):
        await open_incident(database_url, services=[f"svc{n}"], title=f"errors up on svc{n}")
    await wait_for(lambda: db.fetchval("SELECT count(*) = 6 FROM notify_subjects"), what="six incidents told")
    await wait_for(lambda: db.fetchval("SELECT bool_and(delivered_revision = revision) FROM telegram_messages "
                                       "WHERE digest_id IS NULL"), what="every message delivered")
    texts = [m["text"] for m in fake.messages[GROUP].values()]
    assert len(texts) == 4, texts  # three on their own, then one digest for the rest of the burst
    digest = texts[-1]
    assert digest.startswith("3 incidents opened in a burst")
    assert all(f"errors up on svc{n}" in digest for n in (3, 4, 5))


async def test_429_retry_after_is_honoured_and_nothing_is_sent_twice(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    fake.throttle("sendMessage", retry_after=2)
    await open_incident(database_url)
    calls = await wait_for(lambda: sent(fake, "sendMessage", 2), what="the retried sendMessage")
    assert calls[1].at - calls[0].at >= 2.0  # not before Telegram said it may
    await wait_for(lambda: db.fetchval("SELECT state = 'sent' AND last_error IS NULL FROM telegram_messages"),
                   what="the message recorded as sent")
    assert len(fake.messages[GROUP]) == 1


async def test_a_rejected_message_is_recorded_and_does_not_block_other_chats(
    database_url: str, broker_settings: BrokerSettings, telegram: FakeTelegramServer, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    fake.blocked.add(PRIVATE)
    chats = [{"chat_id": 31337}, {"chat_id": PRIVATE}, {"chat_id": GROUP}]
    settings = notify_settings(fake, telegram.url, chats=chats)
    async with ControlPlane(fast_settings(database_url, broker_settings), notify=settings) as cp:
        await open_incident(database_url, title="<script>alert(1)</script> & " + "x" * 5000)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 3 FROM telegram_messages WHERE state <> 'pending'"),
                       what="all three chats tried")
        async with serve_api(cp) as base_url, client(base_url, await make_token(database_url, "viewer")) as viewer:
            listed = (await viewer.get("/api/v1/telegram/messages", params={"state": "rejected"})).json()
            assert sorted(m["chat_id"] for m in listed) == sorted([31337, PRIVATE])
            assert all(m["last_error"] for m in listed)
            bad = await viewer.get("/api/v1/telegram/messages", params={"state": "lost"})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "query.state"
    rows = {r["chat_id"]: r for r in await db.fetch("SELECT chat_id, state, last_error FROM telegram_messages")}
    assert rows[31337]["state"] == "rejected" and "chat not found" in rows[31337]["last_error"].lower()
    assert rows[PRIVATE]["state"] == "rejected" and "bot was blocked" in rows[PRIVATE]["last_error"]
    assert rows[GROUP]["state"] == "sent"
    text = fake.last_text(GROUP)  # the fake parsed the HTML: escaping held, and the cut kept it valid
    assert "<script>alert(1)</script> &" in text and len(text) <= 4096


async def _async(value: object) -> object:
    return value


async def test_the_incident_message_follows_its_remediation(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    incident_id = await open_incident(database_url)
    await wait_for(lambda: sent(fake, "sendMessage"), what="the incident message")
    remediation_id = uuid4()
    # the rows the remediation pipeline writes as it proposes, then verifies, a restart
    await db.execute(
        """INSERT INTO remediations (id, action, target, incident_id, origin, proposed_by, mode, state, state_reason)
           VALUES ($1, 'restart', 'shop/checkout', $2, 'rca', 'policy', 'approve', 'awaiting_approval',
                   'policy asks for approval')""",
        remediation_id, incident_id,
    )
    await wait_for(lambda: _async("Remediation restart shop/checkout: awaiting_approval" in fake.last_text(GROUP)),
                   what="the remediation line")
    await db.execute("UPDATE remediations SET state = 'successful', state_reason = 'verified' WHERE id = $1",
                     remediation_id)
    await wait_for(lambda: _async("Remediation restart shop/checkout: successful — verified" in fake.last_text(GROUP)),
                   what="the verified remediation")
    assert len(fake.calls_of("sendMessage")) == 1 and len(fake.messages[GROUP]) == 1
