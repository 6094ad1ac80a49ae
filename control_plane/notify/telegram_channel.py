"""The Telegram channel of a running control plane: the bot, the outbox sender, and the source of
button presses (the poller, or the webhook registered with ``setWebhook``)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import asyncpg
from telegram import Update
from telegram.constants import ParseMode
from telegram.error import TelegramError

from control_plane.notify.settings import NotifySettings, TelegramSettings
from control_plane.notify.telegram_bot import make_bot
from control_plane.notify.telegram_callbacks import Answer
from control_plane.notify.telegram_sender import TelegramSender
from control_plane.notify.telegram_updates import ALLOWED_UPDATES, TelegramPoller, handle_update

log = logging.getLogger("devart.telegram")


class TelegramChannel:
    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings) -> None:
        self._pool = pool
        self._settings = settings
        self.bot = make_bot(settings.telegram)
        self.sender = TelegramSender(pool, self.bot, settings.telegram)
        self.poller = TelegramPoller(pool, self.bot, settings) if settings.telegram.mode == "polling" else None
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background (``getMe``, then ``setWebhook`` in webhook mode), retrying while the
        Bot API cannot be reached, then start sending and receiving."""
        self._starting = asyncio.create_task(self._start(), name="telegram-start")

    async def _start(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.bot.initialize()
                if self.poller is None:
                    tg = self._settings.telegram
                    assert tg.webhook_url is not None and tg.webhook_secret is not None
                    await self.bot.set_webhook(tg.webhook_url, secret_token=tg.webhook_secret.get_secret_value(),
                                               allowed_updates=ALLOWED_UPDATES)
                break
            except TelegramError as exc:
                log.warning("cannot reach the Telegram Bot API (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        log.info("telegram bot @%s ready (%s)", self.bot.username, self._settings.telegram.mode)
        self.sender.start()
        if self.poller is not None:
            self.poller.start()

    async def handle_webhook(self, body: dict[str, Any], *, remote: str) -> Answer | None:
        update = Update.de_json(body, self.bot)
        if update is None:
            return None
        return await handle_update(self._pool, self.bot, self._settings, update, remote=remote)

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            try:
                await self._starting
            except asyncio.CancelledError:
                pass
        if self.poller is not None:
            await self.poller.stop()
        await self.sender.stop()
        try:
            await self.bot.shutdown()
        except TelegramError as exc:
            log.info("telegram bot shutdown: %s", exc)


async def send_test(settings: TelegramSettings) -> list[dict[str, Any]]:
    """Send a test message to every configured chat, directly (not through the outbox); one result per
    chat with what Telegram answered."""
    results: list[dict[str, Any]] = []
    async with make_bot(settings) as bot:
        for chat in settings.chats:
            try:
                message = await bot.send_message(
                    chat.chat_id, f"✅ devart test message from <b>{socket.gethostname()}</b> (bot @{bot.username})",
                    parse_mode=ParseMode.HTML, message_thread_id=chat.message_thread_id,
                )
                results.append({"chat_id": chat.chat_id, "ok": True, "message_id": message.message_id,
                                "answer": message.to_dict()})
            except TelegramError as exc:
                results.append({"chat_id": chat.chat_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return results
