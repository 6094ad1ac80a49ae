"""A control plane killed between writing a Telegram message to the outbox and sending it sends it once
after the restart: done for real, with SIGKILL on a `devart serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import asyncpg
import pytest

from agents.sdk import BrokerSettings
from control_plane.serving import free_port
from tests.support.system import wait_for
from tests.telegram_fake.fixtures import GROUP, open_incident
from tests.telegram_fake.server import FakeTelegram, FakeTelegramServer


def _serve(database_url: str, broker: BrokerSettings, telegram_url: str, token: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **broker.environment(), DATABASE_URL=database_url, DEVART_PORT=str(free_port()),
               DEVART_EMBEDDED_BROKER="false", DEVART_LOG_LEVEL="WARNING",
               DEVART_TELEGRAM_BOT_TOKEN=token, DEVART_TELEGRAM_API_URL=telegram_url,
               DEVART_TELEGRAM_CHATS=json.dumps([{"chat_id": GROUP}]), DEVART_TELEGRAM_POLL_TIMEOUT_S="1",
               DEVART_NOTIFY_SCAN_INTERVAL_S="0.2")
    return subprocess.Popen([sys.executable, "-m", "control_plane.cli", "serve"], env=env)


@pytest.mark.slow
async def test_killed_between_outbox_write_and_send_the_message_goes_exactly_once(
    database_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool
) -> None:
    fake = FakeTelegram(chats={GROUP: "supergroup"})
    server = FakeTelegramServer(fake, port=free_port())  # not started yet: the Bot API is unreachable
    process = _serve(database_url, broker_settings, server.url, fake.token)
    try:
        first = await open_incident(database_url, title="first incident")
        written = "SELECT revision = 1 AND delivered_revision = 0 FROM telegram_messages WHERE subject_id = $1"
        await wait_for(lambda: db.fetchval(written, str(first)), timeout_s=60, what="the message in the outbox")
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        assert fake.calls == []  # nothing reached Telegram before the kill

        await server.start()
        process = _serve(database_url, broker_settings, server.url, fake.token)
        delivered = "SELECT delivered_revision = revision AND state = 'sent' FROM telegram_messages WHERE subject_id = $1"
        await wait_for(lambda: db.fetchval(delivered, str(first)), timeout_s=60, what="the message delivered")
        # a later incident delivered too means the restarted process has gone round its loops again
        second = await open_incident(database_url, title="second incident")
        await wait_for(lambda: db.fetchval(delivered, str(second)), timeout_s=60, what="the second message")
        texts = [c.params["text"] for c in fake.calls_of("sendMessage")]
        assert sum("first incident" in t for t in texts) == 1 and sum("second incident" in t for t in texts) == 1
        assert len(fake.messages[GROUP]) == 2
    finally:
        process.kill()
        await asyncio.to_thread(process.wait)
        await server.stop()
