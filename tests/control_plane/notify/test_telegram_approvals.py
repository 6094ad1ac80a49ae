"""Approvals in the chat: buttons on a pending approval, a decision through the approvals module with
``via: telegram``, the message edited to say who decided.

Here the approval is created through the approvals module directly, with an outcome handler of the
test's own, to check the chat's side alone; ``test_telegram_remediation.py`` approves a real
remediation from the chat and follows it through the pipeline.
"""

from __future__ import annotations

import asyncpg

from control_plane import approvals
from control_plane.service import ControlPlane
from tests.support.system import make_token, wait_for
from tests.telegram_fake.fixtures import APPROVER, GROUP, buttons, message_with, request_approval
from tests.telegram_fake.server import FakeTelegramServer


async def test_an_allowed_user_approves_from_the_chat(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    outcomes: list[tuple[str, str]] = []

    async def proceed(_conn: asyncpg.Connection, approval: approvals.Approval) -> None:
        outcomes.append((approval.id, approval.state))

    approvals.register_outcome_handler("remediation-test", proceed)
    await make_token(database_url, "supervisor", name="ana")
    approval_id = await request_approval(database_url, kind="remediation-test")
    message = await wait_for(lambda: message_with(fake, GROUP, "restart deployment shop/checkout"),
                             what="the approval message")
    assert "Approval pending" in message["text"] and "risk medium" in message["text"]
    keys = buttons(message)
    assert set(keys) == {"Approve", "Refuse", "Open in console"}
    assert keys["Open in console"] == f"http://console.test/console/approvals/{approval_id}"
    assert all(len(keys[k].encode()) <= 64 and approval_id not in keys[k] for k in ("Approve", "Refuse"))

    fake.press(GROUP, message["message_id"], keys["Approve"], user_id=APPROVER, username="ana")
    await wait_for(lambda: _async(fake.answers), what="the callback answer")
    assert fake.answers == [{"callback_query_id": fake.answers[0]["callback_query_id"], "text": "Approved.",
                             "show_alert": False}]
    decided = await _approval(db, approval_id)
    assert decided.state == "approved"
    assert [(d.who, d.decision, d.via) for d in decided.decisions] == [("ana", "approve", "telegram")]
    assert outcomes == [(approval_id, "approved")]  # the owner reacted in the deciding transaction

    edited = await wait_for(lambda: message_with(fake, GROUP, "approved by @ana at"), what="the edited message")
    assert edited["message_id"] == message["message_id"] and set(buttons(edited)) == {"Open in console"}
    assert "Approval approved" in edited["text"]
    assert len(fake.calls_of("sendMessage")) == 1


async def test_refuse_from_the_chat(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "admin", name="ana")
    approval_id = await request_approval(database_url, risk="low")
    message = await wait_for(lambda: message_with(fake, GROUP, "Approval pending"), what="the approval message")
    fake.press(GROUP, message["message_id"], buttons(message)["Refuse"], user_id=APPROVER)
    await wait_for(lambda: message_with(fake, GROUP, "refused by @ana at"), what="the edited message")
    assert (await _approval(db, approval_id)).state == "refused"


async def test_a_high_risk_approval_has_no_buttons(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str
) -> None:
    await request_approval(database_url, risk="high")
    message = await wait_for(lambda: message_with(telegram.fake, GROUP, "Approval pending"),
                             what="the approval message")
    assert set(buttons(message)) == {"Open in console"}
    assert "Risk too high to decide from the chat" in message["text"]


async def _approval(db: asyncpg.Pool, approval_id: str) -> approvals.Approval:
    async with db.acquire() as conn:
        return await approvals.get_approval(conn, approval_id)


async def _async(value: object) -> object:
    return value
