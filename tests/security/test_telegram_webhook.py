"""Attacks on POST /api/v1/telegram/webhook: no secret, a wrong secret, replays of a real update."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from agents.sdk import BrokerSettings
from control_plane.api.app import create_app
from control_plane.service import ControlPlane
from control_plane.serving import free_port, serve_in_process
from tests.support.system import fast_settings, make_token, wait_for
from tests.telegram_fake.fixtures import (
    APPROVER,
    GROUP,
    buttons,
    message_with,
    notify_settings,
    request_approval,
    telegram,
)
from tests.telegram_fake.server import FakeTelegramServer

__all__ = ["telegram"]
SECRET = "s3cret-webhook_token-0123456789"


@pytest.fixture
async def webhook_url(database_url: str, broker_settings: BrokerSettings,
                      telegram: FakeTelegramServer) -> AsyncIterator[str]:
    """A control plane in webhook mode behind a real HTTP server; yields the webhook's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/telegram/webhook"
    settings = notify_settings(telegram.fake, telegram.url, mode="webhook", webhook_url=url, webhook_secret=SECRET)
    async with ControlPlane(fast_settings(database_url, broker_settings), notify=settings) as cp:
        async with serve_in_process(create_app(control_plane=cp), port=port):
            yield url


async def test_webhook_mode_registers_and_refuses_calls_without_the_secret(
    webhook_url: str, telegram: FakeTelegramServer, database_url: str, db: asyncpg.Pool
) -> None:
    fake = telegram.fake
    await wait_for(lambda: _async(fake.webhook), what="setWebhook")
    assert fake.webhook["url"] == webhook_url and fake.webhook["secret_token"] == SECRET
    assert fake.webhook["allowed_updates"] == ["callback_query"]
    assert not fake.calls_of("getUpdates")

    await make_token(database_url, "supervisor", name="ana")
    approval_id = await request_approval(database_url)
    message = await wait_for(lambda: message_with(fake, GROUP, "Approval pending"), what="the approval message")
    update = fake.press(GROUP, message["message_id"], buttons(message)["Approve"], user_id=APPROVER)

    for secret in (None, "", "wrong", SECRET[:-1], SECRET + "x"):
        refused = await fake.push_to_webhook(update, secret=secret)
        assert refused.status_code == 403, secret
        assert refused.json()["error"]["field"] == "header.X-Telegram-Bot-Api-Secret-Token"
    assert await db.fetchval("SELECT count(*) FROM approval_decisions") == 0
    assert fake.answers == []

    accepted = await fake.push_to_webhook(update)
    assert accepted.status_code == 200
    assert await db.fetchval("SELECT state FROM approvals WHERE id = $1", approval_id) == "approved"
    assert fake.answers[0]["text"] == "Approved."
    # Telegram retrying the same update (it did not see our 200): acknowledged, nothing decided twice
    fake.redeliver(update)
    again = await fake.push_to_webhook(update)
    assert again.status_code == 200 and fake.answers[1]["text"] == "Already handled."
    assert await db.fetchval("SELECT count(*) FROM approval_decisions") == 1


async def test_webhook_rejects_a_body_that_is_not_an_update(webhook_url: str) -> None:
    async with httpx.AsyncClient() as client:
        bad = await client.post(webhook_url, content=b"{not json", headers={
            "X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "body"
        bad = await client.post(webhook_url, json={"update_id": "1"},
                                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "body.update_id"


async def _async(value: object) -> object:
    return value
