"""The notifier: turns changes of incidents and approvals into Telegram messages and webhook deliveries.

Every ``scan_interval_s`` (sooner when an incident notification arrives) it finds the subjects whose
facts differ from those last told (:mod:`control_plane.notify.subjects`) and, per subject in one
transaction, records the new facts, writes the webhook deliveries of its events and re-renders its
Telegram messages. With no channel configured the events are only logged.
"""

from __future__ import annotations

import logging

import asyncpg

from aiops.incidents.store import INCIDENTS_CHANNEL
from control_plane.loops import ListeningLoop
from control_plane.notify import telegram_outbox, webhooks
from control_plane.notify.settings import NotifySettings
from control_plane.notify.subjects import Change, SubjectKind, changed, claim

log = logging.getLogger("devart.notify")


class Notifier(ListeningLoop):
    name = "notifier"

    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings) -> None:
        super().__init__(pool, INCIDENTS_CHANNEL, settings.scan_interval_s)
        self._settings = settings

    async def run_once(self) -> None:
        await self.try_listen()
        async with self._pool.acquire() as conn:
            lookback = self._settings.lookback_s
            changes = await changed(conn, "incident", lookback_s=lookback) + await changed(
                conn, "approval", lookback_s=lookback)
            for change in changes:
                async with conn.transaction():
                    told = await claim(conn, change)
                    if told is not None:
                        await tell(conn, self._settings, told)


async def tell(conn: asyncpg.Connection, settings: NotifySettings, change: Change) -> None:
    """Inside the transaction that recorded ``change``: write what each channel must send."""
    events = change.events
    if events:
        log.info("notify %s %s: %s", change.kind, change.subject_id, ", ".join(events))
    await webhooks.enqueue(conn, settings, change, events)
    if settings.telegram.enabled:
        await telegram_outbox.project(conn, settings, change)


async def refresh(conn: asyncpg.Connection, settings: NotifySettings, kind: SubjectKind, subject_id: str) -> None:
    """Inside the transaction that changed a subject: tell the change now rather than at the next scan."""
    told = await claim(conn, Change(kind, subject_id, {}, None))
    if told is not None:
        await tell(conn, settings, told)
