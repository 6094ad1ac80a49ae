"""The bot token is in every Bot API URL: it must never reach a log line, at any level."""

from __future__ import annotations

import logging

import pytest

from control_plane.notify import TelegramSettings
from control_plane.notify.telegram_channel import send_test
from tests.telegram_fake.fixtures import GROUP, telegram
from tests.telegram_fake.server import FakeTelegramServer

__all__ = ["telegram"]


async def test_the_bot_token_is_never_logged(telegram: FakeTelegramServer, caplog: pytest.LogCaptureFixture) -> None:
    settings = TelegramSettings(bot_token=telegram.fake.token, api_url=telegram.url, chats=[{"chat_id": GROUP}])
    with caplog.at_level(logging.DEBUG):
        (result,) = await send_test(settings)
    assert result["ok"]
    lines = [record.getMessage() for record in caplog.records]
    assert any("sendMessage" in line for line in lines)  # httpx did log the request
    assert not any(telegram.fake.token in line for line in lines)
    assert not any(telegram.fake.token.split(":")[1] in line for line in lines)
