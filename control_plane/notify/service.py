"""The notification channels of one control plane, started and stopped with it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg

from control_plane.notify.notifier import Notifier
from control_plane.notify.settings import NotifySettings
from control_plane.notify.webhooks import WebhookSender

if TYPE_CHECKING:
    from control_plane.notify.telegram_channel import TelegramChannel

log = logging.getLogger("devart.notify")


class Notifications:
    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings) -> None:
        self.settings = settings
        self.notifier = Notifier(pool, settings)
        self.webhooks = WebhookSender(pool, settings) if settings.webhooks else None
        self.telegram: TelegramChannel | None = None
        if settings.telegram.enabled:
            # Imported here: only a control plane with a bot loads python-telegram-bot.
            from control_plane.notify.telegram_channel import TelegramChannel

            self.telegram = TelegramChannel(pool, settings)

    async def start(self) -> None:
        tg = self.settings.telegram
        if self.telegram is not None:
            self.telegram.start()
        elif tg.bot_token is not None:
            log.warning("DEVART_TELEGRAM_BOT_TOKEN is set but DEVART_TELEGRAM_CHATS is empty: Telegram is off")
        else:
            log.info("Telegram is not configured: incident notifications are logged only")
        self.notifier.start()
        if self.webhooks is not None:
            self.webhooks.start()

    async def stop(self) -> None:
        await self.notifier.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.telegram is not None:
            await self.telegram.stop()
