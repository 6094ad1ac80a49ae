"""Button presses coming in: long polling (``getUpdates``) by default, or the webhook endpoint.

Polling keeps its offset in Postgres and moves it only after the updates before it were handled;
an update handled twice (a crash before the offset moved, Telegram retrying a webhook, a replay) is
recognised by its ``update_id`` and changes nothing.
"""

from __future__ import annotations

import logging

import asyncpg
from telegram import Bot, Update
from telegram.error import TelegramError

from control_plane.loops import LoopService
from control_plane.notify.settings import NotifySettings
from control_plane.notify.telegram_callbacks import Answer, Press, handle_press

log = logging.getLogger("devart.telegram")

ALLOWED_UPDATES = ["callback_query"]


async def handle_update(pool: asyncpg.Pool, bot: Bot, settings: NotifySettings, update: Update,
                        *, remote: str = "telegram") -> Answer | None:
    """Act on one update and answer its callback query; other kinds of update are ignored."""
    query = update.callback_query
    if query is None or query.from_user is None:
        return None
    user = query.from_user
    press = Press(update_id=update.update_id, query_id=query.id, data=query.data or "", user_id=user.id,
                  user=f"@{user.username}" if user.username else user.first_name)
    answer = await handle_press(pool, settings, press, remote=remote)
    try:
        await bot.answer_callback_query(query.id, text=answer.text, show_alert=answer.alert)
    except TelegramError as exc:  # a replayed or stale query cannot be answered again
        log.info("could not answer callback query %s: %s", query.id, exc)
    return answer


class TelegramPoller(LoopService):
    """Long-polls ``getUpdates`` and hands each update to :func:`handle_update`."""

    name = "telegram-poller"

    def __init__(self, pool: asyncpg.Pool, bot: Bot, settings: NotifySettings) -> None:
        # A poll lasts up to poll_timeout_s and the next one starts at once (wake); the interval is
        # only the pause after a failed poll.
        super().__init__(settings.telegram.poll_timeout_s + settings.telegram.request_timeout_s, jitter=0.0)
        self._pool = pool
        self._bot = bot
        self._settings = settings
        self._webhook_cleared = False

    async def run_once(self) -> None:
        try:
            if not self._webhook_cleared:
                await self._bot.delete_webhook()  # getUpdates is refused while a webhook is set
                self._webhook_cleared = True
            offset = await self._offset()
            updates = await self._bot.get_updates(offset=offset, timeout=self._settings.telegram.poll_timeout_s,
                                                  allowed_updates=ALLOWED_UPDATES)
        except TelegramError as exc:
            log.warning("telegram getUpdates failed: %s", exc)
            return
        self.wake()
        for update in updates:
            await handle_update(self._pool, self._bot, self._settings, update)
            await self._save_offset(update.update_id + 1)

    async def _offset(self) -> int | None:
        async with self._pool.acquire() as conn:
            return await conn.fetchval("SELECT next_offset FROM telegram_poll_offset WHERE bot_id = $1", self._bot.id)

    async def _save_offset(self, offset: int) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO telegram_poll_offset (bot_id, next_offset) VALUES ($1, $2)
                   ON CONFLICT (bot_id) DO UPDATE SET next_offset = greatest(telegram_poll_offset.next_offset, $2),
                       updated_at = now()""",
                self._bot.id, offset,
            )
