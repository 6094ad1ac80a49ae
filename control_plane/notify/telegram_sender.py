"""Delivers the Telegram outbox: brings each due ``telegram_messages`` row up to its revision.

One row per transaction: the row is locked, sent (``sendMessage``) or edited (``editMessageText``,
or ``editMessageReplyMarkup`` when only the buttons changed), and its delivered revision and
Telegram's ``message_id`` committed with it. A process that dies before the commit leaves the row
due, so the message is sent after the restart; only a death in the instant between Telegram's
answer and the commit can send a message twice. Chats waiting out a rate limit are skipped, not
waited for, so one slow chat never holds the others; a message Telegram refuses is marked
``rejected`` with its reason and the rest go on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from telegram import Bot, InlineKeyboardMarkup
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from control_plane.loops import ListeningLoop
from control_plane.notify.ratelimit import TelegramLimits
from control_plane.notify.settings import TelegramSettings
from control_plane.notify.telegram_bot import retry_after_s
from control_plane.notify.telegram_outbox import NOTIFY_CHANNEL

log = logging.getLogger("devart.telegram")

_NOT_MODIFIED = "message is not modified"
_GONE = ("message to edit not found", "message can't be edited")


class TelegramSender(ListeningLoop):
    name = "telegram-sender"

    def __init__(self, pool: asyncpg.Pool, bot: Bot, settings: TelegramSettings, *, interval_s: float = 1.0) -> None:
        super().__init__(pool, NOTIFY_CHANNEL, interval_s)
        self._bot = bot
        self._settings = settings
        self.limits = TelegramLimits(per_chat_per_s=settings.per_chat_per_s,
                                     per_group_per_min=settings.per_group_per_min,
                                     global_per_s=settings.global_per_s)

    async def run_once(self) -> None:
        await self.try_listen()
        while await self.deliver_one():
            pass

    async def deliver_one(self) -> bool:
        """Deliver the next due row whose chat may receive now; False when there is none."""
        pause = self.limits.wait_s(None)
        if pause > 0:
            await asyncio.sleep(min(pause, self.interval_s))
            return self.limits.wait_s(None) == 0
        async with self._pool.acquire() as conn, conn.transaction():
            blocked = await self._blocked_chats(conn)
            row = await conn.fetchrow(
                """SELECT id, chat_id, thread_id, text, reply_markup, quiet, revision, message_id,
                          sent_text, sent_markup, attempts
                   FROM telegram_messages
                   WHERE revision > delivered_revision AND state <> 'rejected' AND digest_id IS NULL
                     AND available_at <= now() AND chat_id <> ALL($1::bigint[])
                   ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED""",
                blocked,
            )
            if row is None:
                return False
            await self._deliver(conn, row)
            return True

    async def _blocked_chats(self, conn: asyncpg.Connection) -> list[int]:
        chats = await conn.fetch(
            """SELECT DISTINCT chat_id FROM telegram_messages
               WHERE revision > delivered_revision AND state <> 'rejected' AND digest_id IS NULL
                 AND available_at <= now()"""
        )
        return [r["chat_id"] for r in chats if self.limits.wait_s(r["chat_id"]) > 0]

    async def _deliver(self, conn: asyncpg.Connection, row: asyncpg.Record) -> None:
        chat_id = row["chat_id"]
        try:
            message_id = await self._call(row)
        except RetryAfter as exc:
            wait = retry_after_s(exc)
            self.limits.pause(chat_id, wait)
            await self._retry(conn, row, wait, f"429: retry after {wait:g}s")
            log.warning("telegram asked to wait %gs before writing to chat %s again", wait, chat_id)
            return
        except BadRequest as exc:
            if _NOT_MODIFIED in exc.message.lower():
                message_id = row["message_id"]
            elif any(gone in exc.message.lower() for gone in _GONE):
                # someone deleted the message: post it anew
                await conn.execute(
                    """UPDATE telegram_messages SET message_id = NULL, sent_text = NULL, sent_markup = NULL,
                           last_error = $2 WHERE id = $1""",
                    row["id"], exc.message[:500],
                )
                return
            else:
                await self._reject(conn, row, exc)
                return
        except (Forbidden, ChatMigrated, InvalidToken) as exc:
            await self._reject(conn, row, exc)
            return
        except (NetworkError, TelegramError) as exc:
            delay = min(self._settings.retry_s * 2 ** min(row["attempts"], 8), 300.0)
            await self._retry(conn, row, delay, f"{type(exc).__name__}: {exc}")
            log.warning("telegram message %s to chat %s not delivered, retrying in %.1fs: %s",
                        row["id"], chat_id, delay, exc)
            return
        self.limits.sent(chat_id)
        await conn.execute(
            """UPDATE telegram_messages SET delivered_revision = $2, message_id = $3, state = 'sent',
                   sent_text = text, sent_markup = reply_markup, sent_at = coalesce(sent_at, now()),
                   last_error = NULL, attempts = 0, updated_at = now()
               WHERE id = $1""",
            row["id"], row["revision"], message_id,
        )

    async def _call(self, row: asyncpg.Record) -> int:
        markup = _markup(row["reply_markup"])
        if row["message_id"] is None:
            message = await self._bot.send_message(
                row["chat_id"], row["text"], parse_mode=ParseMode.HTML, reply_markup=markup,
                disable_notification=row["quiet"], message_thread_id=row["thread_id"],
            )
            return message.message_id
        if row["text"] == row["sent_text"]:
            await self._bot.edit_message_reply_markup(row["chat_id"], row["message_id"], reply_markup=markup)
        else:
            await self._bot.edit_message_text(row["text"], row["chat_id"], row["message_id"],
                                              parse_mode=ParseMode.HTML, reply_markup=markup)
        return row["message_id"]

    async def _retry(self, conn: asyncpg.Connection, row: asyncpg.Record, delay_s: float, error: str) -> None:
        await conn.execute(
            """UPDATE telegram_messages SET attempts = attempts + 1, last_error = $2,
                   available_at = now() + make_interval(secs => $3), updated_at = now()
               WHERE id = $1""",
            row["id"], error[:500], delay_s,
        )

    async def _reject(self, conn: asyncpg.Connection, row: asyncpg.Record, exc: TelegramError) -> None:
        reason = f"{type(exc).__name__}: {exc.message}"
        await conn.execute(
            """UPDATE telegram_messages SET state = 'rejected', attempts = attempts + 1, last_error = $2,
                   updated_at = now() WHERE id = $1""",
            row["id"], reason[:500],
        )
        log.error("telegram refused message %s to chat %s: %s", row["id"], row["chat_id"], reason)


def _markup(value: dict[str, Any] | None) -> InlineKeyboardMarkup | None:
    return InlineKeyboardMarkup.de_json(value, None) if value else None
