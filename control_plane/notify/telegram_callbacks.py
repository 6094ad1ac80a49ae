"""What a button press does: find the reference, check who pressed, act once through devart's own code.

``callback_data`` is ``dv1:<ref>``; the ref names a ``telegram_callbacks`` row holding the action, the
subject, an expiry and whether it was used. The Telegram user must be listed in
``DEVART_TELEGRAM_APPROVERS``, mapped to an active devart principal whose role allows the action;
anyone else is told "not allowed", the attempt is audited, and the button stays usable for those
who may. Each update is handled once (``telegram_updates``), each reference acts once, and the
action, the audit row, the used reference and the message's new text commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from aiops.incidents import store as incident_store
from aiops.incidents.errors import IncidentError, IncidentStateError
from control_plane import approvals
from control_plane.audit import audit
from control_plane.auth import DECIDE_APPROVALS, OPERATE_INCIDENTS, Principal
from control_plane.errors import DomainError, Forbidden
from control_plane.notify import telegram_outbox
from control_plane.notify.notifier import refresh
from control_plane.notify.settings import NotifySettings
from control_plane.notify.telegram_outbox import CALLBACK_PREFIX
from control_plane.notify.telegram_text import decision_note

log = logging.getLogger("devart.telegram")

SILENCE = timedelta(hours=1)


@dataclass(frozen=True)
class Press:
    """One callback query: which update, which button, who."""

    update_id: int
    query_id: str
    data: str
    user_id: int
    user: str
    """``@username``, or the first name of a user without one."""


@dataclass(frozen=True)
class Answer:
    text: str
    alert: bool = False


NOT_ALLOWED = Answer("Not allowed: you are not an approver for this action.", alert=True)


class _Refused(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.text)
        self.answer = answer


Action = Callable[[asyncpg.Connection, Principal, str, Press, str], Awaitable[tuple[str, str]]]
"""(conn, principal, subject id, press, remote) -> (answer text, note verb)."""


async def handle_press(pool: asyncpg.Pool, settings: NotifySettings, press: Press, *, remote: str = "telegram") -> Answer:
    async with pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO telegram_updates (update_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING update_id",
            press.update_id,
        )
        if fresh is None:
            return Answer("Already handled.")
        ref = press.data.removeprefix(CALLBACK_PREFIX) if press.data.startswith(CALLBACK_PREFIX) else None
        button = None if ref is None else await conn.fetchrow(
            """SELECT ref, message_row, action, subject_kind, subject_id, expires_at, used_at, used_by
               FROM telegram_callbacks WHERE ref = $1 FOR UPDATE""",
            ref,
        )
        principal = await _principal(conn, settings, press.user_id)
        action = None if button is None else button["action"]
        if principal is None or (action is not None and not principal.can(_PERMISSION[action])):
            await _refused(conn, press, principal, button, remote)
            return NOT_ALLOWED
        if button is None:
            return Answer("This button is not valid any more.", alert=True)
        if button["used_at"] is not None:
            return Answer(f"Already done by {button['used_by']}.", alert=True)
        if button["expires_at"] <= datetime.now(UTC):
            return Answer("This button has expired.", alert=True)
        try:
            async with conn.transaction():
                reply, verb = await _actions(settings)[action](conn, principal, button["subject_id"], press, remote)
        except _Refused as exc:
            await _refused(conn, press, principal, button, remote, reason=exc.answer.text)
            return exc.answer
        except DomainError as exc:
            return Answer(exc.message, alert=True)
        await conn.execute(
            """UPDATE telegram_callbacks SET used_at = now(), used_by = $2
               WHERE message_row = $1 AND used_at IS NULL AND (ref = $3 OR action IN ('approve', 'refuse') AND $4)""",
            button["message_row"], press.user, button["ref"], action in ("approve", "refuse"),
        )
        await refresh(conn, settings, button["subject_kind"], button["subject_id"])
        await telegram_outbox.add_note(conn, settings, button["message_row"],
                                       decision_note(verb, press.user, datetime.now(UTC)))
        return Answer(reply)


async def _principal(conn: asyncpg.Connection, settings: NotifySettings, user_id: int) -> Principal | None:
    """The devart principal a Telegram user acts as: an active token's name and role, or None."""
    name = settings.telegram.approvers.get(user_id)
    if name is None:
        return None
    row = await conn.fetchrow("SELECT id, name, role FROM devart_token_by_name($1)", name)
    return Principal(row["id"], row["name"], row["role"]) if row else None


async def _refused(
    conn: asyncpg.Connection, press: Press, principal: Principal | None, button: asyncpg.Record | None, remote: str,
    *, reason: str = "not an approver",
) -> None:
    log.warning("telegram user %s (%s) pressed a button they may not use: %s", press.user_id, press.user, reason)
    await audit(
        conn, actor=principal.name if principal else f"telegram:{press.user_id}", action="telegram.callback.refused",
        target=f"{button['subject_kind']}:{button['subject_id']}" if button else "",
        detail={"via": "telegram", "telegram_user_id": press.user_id, "telegram_user": press.user,
                "action": button["action"] if button else None, "reason": reason,
                "callback_data": press.data[:64]},
        remote=remote,
    )


async def _acknowledge(conn: asyncpg.Connection, who: Principal, incident_id: str, press: Press,
                       remote: str) -> tuple[str, str]:
    try:
        incident = await incident_store.acknowledge(conn, incident_id=incident_id, by=who.name)
    except IncidentStateError as exc:
        raise DomainError(exc.message) from exc
    await incident_store.notify(conn, incident, "acknowledged")
    await audit(conn, actor=who.name, action="incident.acknowledge", target=incident_id,
                detail={"via": "telegram", "telegram_user": press.user}, remote=remote)
    return "Acknowledged.", "acknowledged"


async def _silence(conn: asyncpg.Connection, who: Principal, incident_id: str, press: Press,
                   remote: str) -> tuple[str, str]:
    incident = await incident_store.get_incident(conn, incident_id)
    now = datetime.now(UTC)
    for service in incident.services:
        try:
            silence = await incident_store.create_silence(
                conn, service=service, operation=None, signal=None, expires_at=now + SILENCE,
                comment=f"from Telegram by {press.user}, incident {incident_id}", by=who.name, now=now,
            )
        except IncidentError as exc:
            raise DomainError(exc.message) from exc
        await audit(conn, actor=who.name, action="incident.silence.create", target=str(silence.id),
                    detail={"via": "telegram", "telegram_user": press.user, "service": service,
                            "incident_id": incident_id, "expires_at": silence.expires_at.isoformat()},
                    remote=remote)
    return "Silenced for 1 hour.", "silenced for 1h"


def _decision(decision: approvals.Decision, settings: NotifySettings) -> Action:
    async def decide(conn: asyncpg.Connection, who: Principal, approval_id: str, press: Press,
                     remote: str) -> tuple[str, str]:
        current = await approvals.get_approval(conn, approval_id)
        if not settings.telegram.may_decide_in_chat(current.risk):
            raise _Refused(Answer(f"A {current.risk}-risk approval cannot be decided from the chat.", alert=True))
        try:
            await approvals.decide(conn, approval_id, who, decision, "telegram",
                                   comment=f"from Telegram by {press.user}", remote=remote)
        except Forbidden as exc:
            raise _Refused(Answer(f"Not allowed: {exc.message}", alert=True)) from exc
        return ("Approved." if decision == "approve" else "Refused."), (
            "approved" if decision == "approve" else "refused")

    return decide


_PERMISSION = {"acknowledge": OPERATE_INCIDENTS, "silence": OPERATE_INCIDENTS, "approve": DECIDE_APPROVALS,
               "refuse": DECIDE_APPROVALS}


def _actions(settings: NotifySettings) -> dict[str, Action]:
    return {"acknowledge": _acknowledge, "silence": _silence, "approve": _decision("approve", settings),
            "refuse": _decision("refuse", settings)}
