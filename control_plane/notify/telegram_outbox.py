"""The Telegram outbox: one ``telegram_messages`` row per (chat, subject), written in the transaction
that records what changed, and rendered from the subject's facts.

A row carries the text and buttons Telegram should show and a ``revision``; the sender brings
Telegram up to it (``sendMessage`` the first time, an edit afterwards), so a burst of changes
becomes one edit and a restart resends nothing already delivered. Buttons carry an opaque
reference to a ``telegram_callbacks`` row, never the action.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from control_plane.notify import telegram_text as text
from control_plane.notify.settings import NotifySettings, TelegramChat
from control_plane.notify.subjects import Change, told_facts

CALLBACK_PREFIX = "dv1:"
NOTIFY_CHANNEL = "devart_notify"


def console_link(settings: NotifySettings, kind: str, subject_id: str) -> str | None:
    if not settings.console_url:
        return None
    return f"{settings.console_url.rstrip('/')}/{kind}s/{subject_id}"


async def project(conn: asyncpg.Connection, settings: NotifySettings, change: Change) -> None:
    """Create or re-render the subject's message in every configured chat."""
    for chat in settings.telegram.chats:
        row = await conn.fetchrow(
            """SELECT id, digest_id FROM telegram_messages
               WHERE chat_id = $1 AND subject_kind = $2 AND subject_id = $3 FOR UPDATE""",
            chat.chat_id, change.kind, change.subject_id,
        )
        if row is None:
            digest_id = await _digest_for(conn, settings, chat) if change.kind == "incident" else None
            quiet = change.kind == "incident" and float(change.facts["severity"]) < chat.min_severity
            row_id = await conn.fetchval(
                """INSERT INTO telegram_messages (chat_id, thread_id, subject_kind, subject_id, digest_id, text,
                       quiet, revision)
                   VALUES ($1, $2, $3, $4, $5, '', $6, 0) RETURNING id""",
                chat.chat_id, chat.message_thread_id, change.kind, change.subject_id, digest_id, quiet,
            )
        else:
            row_id, digest_id = row["id"], row["digest_id"]
        await render(conn, settings, digest_id or row_id)
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


async def _digest_for(conn: asyncpg.Connection, settings: NotifySettings, chat: TelegramChat) -> int | None:
    """The chat's digest message for a new incident during a burst, or None while it is no burst."""
    tg = settings.telegram
    window = timedelta(seconds=tg.digest_window_s)
    digest = await conn.fetchval(
        """SELECT id FROM telegram_messages WHERE chat_id = $1 AND subject_kind = 'digest'
           AND created_at > now() - $2::interval ORDER BY created_at DESC LIMIT 1""",
        chat.chat_id, window,
    )
    if digest is not None:
        return digest
    recent = await conn.fetchval(
        """SELECT count(*) FROM telegram_messages WHERE chat_id = $1 AND subject_kind = 'incident'
           AND digest_id IS NULL AND created_at > now() - $2::interval""",
        chat.chat_id, window,
    )
    if recent < tg.digest_after:
        return None
    return await conn.fetchval(
        """INSERT INTO telegram_messages (chat_id, thread_id, subject_kind, subject_id, text, revision)
           VALUES ($1, $2, 'digest', $3, '', 0) RETURNING id""",
        chat.chat_id, chat.message_thread_id, secrets.token_hex(8),
    )


async def render(conn: asyncpg.Connection, settings: NotifySettings, row_id: int) -> None:
    """Recompute a message's text and buttons; a difference is a new revision for the sender."""
    row = await conn.fetchrow(
        "SELECT id, subject_kind, subject_id, text, reply_markup FROM telegram_messages WHERE id = $1 FOR UPDATE",
        row_id,
    )
    notes = [r["note"] for r in await conn.fetch(
        "SELECT note FROM telegram_notes WHERE message_row = $1 ORDER BY id", row_id
    )]
    kind, subject_id = row["subject_kind"], row["subject_id"]
    if kind == "digest":
        ids = [r["subject_id"] for r in await conn.fetch(
            "SELECT subject_id FROM telegram_messages WHERE digest_id = $1 ORDER BY id", row_id
        )]
        facts = await told_facts(conn, "incident", ids)
        body, markup = text.digest_text([facts[i] for i in ids if i in facts]), _markup([], None)
    else:
        facts = (await told_facts(conn, kind, [subject_id])).get(subject_id)
        if facts is None:
            return
        buttons = await _buttons(conn, settings, row_id, kind, subject_id, facts)
        link = console_link(settings, kind, subject_id)
        if kind == "incident":
            body = text.incident_text(facts, notes)
        else:
            body = text.approval_text(facts, notes, settings.telegram.may_decide_in_chat(str(facts.get("risk"))))
        markup = _markup(buttons, link)
    if body == row["text"] and markup == row["reply_markup"]:
        return
    await conn.execute(
        """UPDATE telegram_messages SET text = $2, reply_markup = $3, revision = revision + 1,
               available_at = least(available_at, now()), updated_at = now()
           WHERE id = $1""",
        row_id, body, markup,
    )


async def add_note(conn: asyncpg.Connection, settings: NotifySettings, row_id: int, note: str) -> None:
    await conn.execute("INSERT INTO telegram_notes (message_row, note) VALUES ($1, $2)", row_id, note)
    await render(conn, settings, row_id)
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


def _markup(buttons: list[tuple[str, str]], link: str | None) -> dict[str, Any] | None:
    rows: list[list[dict[str, str]]] = []
    if buttons:
        rows.append([{"text": label, "callback_data": CALLBACK_PREFIX + ref} for label, ref in buttons])
    if link:
        rows.append([{"text": "Open in console", "url": link}])
    return {"inline_keyboard": rows} if rows else None


async def _buttons(
    conn: asyncpg.Connection, settings: NotifySettings, row_id: int, kind: str, subject_id: str, facts: dict[str, Any]
) -> list[tuple[str, str]]:
    """(label, callback reference) of the buttons the subject's state allows, references reused while valid."""
    tg = settings.telegram
    expires = datetime.now(UTC) + timedelta(seconds=tg.callback_ttl_s)
    if kind == "incident":
        wanted = []
        if facts["status"] == "open":
            wanted.append(("Acknowledge", "acknowledge"))
        if facts["status"] != "resolved":
            wanted.append(("Silence 1h", "silence"))
    else:
        if facts["state"] != "pending" or not tg.may_decide_in_chat(str(facts.get("risk"))):
            return []
        wanted = [("Approve", "approve"), ("Refuse", "refuse")]
        expires = min(expires, datetime.fromisoformat(str(facts["expires_at"])))
    buttons = []
    for label, action in wanted:
        ref = await conn.fetchval(
            """SELECT ref FROM telegram_callbacks WHERE message_row = $1 AND action = $2 AND used_at IS NULL
               AND expires_at > now() + interval '5 minutes' ORDER BY created_at DESC LIMIT 1""",
            row_id, action,
        )
        if ref is None:
            ref = secrets.token_urlsafe(16)
            await conn.execute(
                """INSERT INTO telegram_callbacks (ref, message_row, action, subject_kind, subject_id, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                ref, row_id, action, kind, subject_id, expires,
            )
        buttons.append((label, ref))
    return buttons
