"""Attacks on the Telegram buttons: strangers, wrong roles, replays, double taps, forged and expired references."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from control_plane import approvals, identity
from control_plane.auth import Principal
from control_plane.service import ControlPlane
from tests.support.system import make_token, wait_for
from tests.telegram_fake.fixtures import (
    APPROVER,
    GROUP,
    STRANGER,
    buttons,
    message_with,
    request_approval,
    telegram,
    tg_cp,
)
from tests.telegram_fake.server import FakeTelegram, FakeTelegramServer

__all__ = ["telegram", "tg_cp"]


async def _approval_message(fake: FakeTelegram, database_url: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    approval_id = await request_approval(database_url, **kwargs)
    message = await wait_for(lambda: message_with(fake, GROUP, "Approval pending"), what="the approval message")
    return approval_id, message


async def _answers(fake: FakeTelegram, count: int) -> list[dict[str, Any]]:
    return await wait_for(lambda: _async(fake.answers if len(fake.answers) >= count else []),
                          what=f"{count} callback answer(s)")


async def _decisions(db: asyncpg.Pool, approval_id: str) -> list[approvals.ApprovalDecision]:
    async with db.acquire() as conn:
        return (await approvals.get_approval(conn, approval_id)).decisions


async def test_a_stranger_is_refused_audited_and_the_button_still_works_for_an_approver(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    approval_id, message = await _approval_message(fake, database_url)
    approve = buttons(message)["Approve"]

    fake.press(GROUP, message["message_id"], approve, user_id=STRANGER, username="mallory")
    (answer,) = await _answers(fake, 1)
    assert answer["show_alert"] is True and answer["text"].startswith("Not allowed")
    assert await _decisions(db, approval_id) == []
    audit = await db.fetchrow("SELECT actor, target, detail::text FROM audit_log WHERE action = 'telegram.callback.refused'")
    detail = json.loads(audit["detail"])
    assert audit["actor"] == f"telegram:{STRANGER}" and audit["target"] == f"approval:{approval_id}"
    assert detail["telegram_user"] == "@mallory" and detail["action"] == "approve"

    fake.press(GROUP, message["message_id"], approve, user_id=APPROVER, username="ana")
    await _answers(fake, 2)
    assert fake.answers[1]["text"] == "Approved."
    assert [d.who for d in await _decisions(db, approval_id)] == ["ana"]


async def test_a_mapped_user_whose_role_cannot_decide_is_refused(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "viewer", name="ana")  # APPROVER maps to ana, a viewer
    approval_id, message = await _approval_message(fake, database_url)
    fake.press(GROUP, message["message_id"], buttons(message)["Approve"], user_id=APPROVER)
    (answer,) = await _answers(fake, 1)
    assert answer["show_alert"] is True and answer["text"].startswith("Not allowed")
    assert await _decisions(db, approval_id) == []
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'telegram.callback.refused'") == 1


async def test_a_revoked_principal_is_refused(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = 'ana'")
    approval_id, message = await _approval_message(fake, database_url)
    fake.press(GROUP, message["message_id"], buttons(message)["Approve"], user_id=APPROVER)
    (answer,) = await _answers(fake, 1)
    assert answer["text"].startswith("Not allowed") and await _decisions(db, approval_id) == []


async def test_a_replayed_update_and_a_double_tap_decide_once(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    approval_id, message = await _approval_message(fake, database_url)
    keys = buttons(message)  # read now: the fake edits the message dict in place once it is decided
    approve = keys["Approve"]
    update = fake.press(GROUP, message["message_id"], approve, user_id=APPROVER)
    await _answers(fake, 1)
    # the very same update again (a replay), then a second tap on the same button
    fake.press(GROUP, message["message_id"], approve, user_id=APPROVER, update_id=update["update_id"] + 100,
               query_id="replayed-1")
    refuse_after = fake.press(GROUP, message["message_id"], keys["Refuse"], user_id=APPROVER,
                              query_id="late-refuse")
    await _answers(fake, 3)
    texts = [a["text"] for a in fake.answers]
    assert texts[0] == "Approved."
    assert texts[1].startswith("Already done by @ana") and texts[2].startswith("Already done by @ana")
    assert refuse_after["callback_query"]["id"] == fake.answers[2]["callback_query_id"]
    decisions = await _decisions(db, approval_id)
    assert [(d.who, d.decision) for d in decisions] == [("ana", "approve")]
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'approval.approve'") == 1


async def test_the_same_update_id_twice_is_handled_once(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    approval_id, message = await _approval_message(fake, database_url)
    pressed = fake.press(GROUP, message["message_id"], buttons(message)["Refuse"], user_id=APPROVER)
    await _answers(fake, 1)
    offset_moved = "SELECT next_offset > $1 FROM telegram_poll_offset"
    await wait_for(lambda: db.fetchval(offset_moved, pressed["update_id"]), what="the poll offset to move")
    # Telegram delivering the same update again (e.g. the offset was lost in a crash)
    await db.execute("UPDATE telegram_poll_offset SET next_offset = $1", pressed["update_id"])
    fake.redeliver(pressed)
    await _answers(fake, 2)
    assert fake.answers[1]["text"] == "Already handled."
    assert [d.decision for d in await _decisions(db, approval_id)] == ["refuse"]


async def test_forged_callback_data_does_nothing(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    approval_id, message = await _approval_message(fake, database_url)
    for data in (f"approve:{approval_id}", "dv1:AAAAAAAAAAAAAAAAAAAAAA", "dv1:' OR 1=1 --", "x" * 64):
        fake.press(GROUP, message["message_id"], data, user_id=APPROVER)
    answers = await _answers(fake, 4)
    assert all(a["show_alert"] and a["text"] == "This button is not valid any more." for a in answers)
    assert await _decisions(db, approval_id) == []


async def test_an_expired_approval_cannot_be_decided(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    approval_id, message = await _approval_message(fake, database_url, expires_in_s=1.5)
    await wait_for(lambda: db.fetchval("SELECT expires_at < now() FROM approvals WHERE id = $1", approval_id),
                   what="the approval to pass its expiry")
    fake.press(GROUP, message["message_id"], buttons(message)["Approve"], user_id=APPROVER)
    (answer,) = await _answers(fake, 1)
    assert answer["show_alert"] and ("expired" in answer["text"])
    assert await _decisions(db, approval_id) == []
    await wait_for(lambda: message_with(fake, GROUP, "Approval expired"), what="the message to show the expiry")


async def test_an_approval_decided_elsewhere_is_not_decided_again(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await make_token(database_url, "supervisor", name="ana")
    await make_token(database_url, "admin", name="bob")
    approval_id, message = await _approval_message(fake, database_url)
    bob = await db.fetchrow("SELECT id, name, role FROM api_tokens WHERE name = 'bob'")
    as_bob = Principal(bob["id"], bob["name"], bob["role"])
    async with identity.acting_as(tg_cp.pool, as_bob) as conn:  # as the API would decide
        await approvals.decide(conn, approval_id, as_bob, "refuse", "api")
    fake.press(GROUP, message["message_id"], buttons(message)["Approve"], user_id=APPROVER)
    (answer,) = await _answers(fake, 1)
    assert answer["show_alert"] and "already refused" in answer["text"]
    assert [(d.who, d.via) for d in await _decisions(db, approval_id)] == [("bob", "api")]


async def _async(value: object) -> object:
    await asyncio.sleep(0)
    return value
