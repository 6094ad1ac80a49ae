"""The python-telegram-bot ``Bot`` devart talks through, pointed at ``DEVART_TELEGRAM_API_URL``."""

from __future__ import annotations

import datetime as dt
import logging
import os
import warnings

from telegram import Bot
from telegram.error import RetryAfter
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from control_plane.notify.settings import TelegramSettings


def make_bot(settings: TelegramSettings) -> Bot:
    """A Bot on its own HTTP connections: one pool for calls, one for the long poll.

    Opts in to python-telegram-bot's time periods as ``timedelta`` (``PTB_TIMEDELTA``), the behaviour
    of its next major version; otherwise every 429 warns that ``retry_after`` will change type.
    """
    assert settings.bot_token is not None
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    _redact_everywhere(settings.bot_token.get_secret_value())
    timeout = settings.request_timeout_s
    return Bot(
        settings.bot_token.get_secret_value(),
        base_url=f"{settings.api_url.rstrip('/')}/bot",
        base_file_url=f"{settings.api_url.rstrip('/')}/file/bot",
        request=HTTPXRequest(connection_pool_size=8, read_timeout=timeout, write_timeout=timeout,
                             connect_timeout=timeout),
        get_updates_request=HTTPXRequest(connection_pool_size=1, read_timeout=timeout, connect_timeout=timeout),
    )


def retry_after_s(exc: RetryAfter) -> float:
    """The pause a 429 asks for, in seconds, whichever type this PTB version returns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class _RedactToken(logging.Filter):
    """The token is part of every Bot API URL, which httpx logs at INFO and python-telegram-bot at DEBUG."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "<bot token>"), None
        return True


_LOGGERS = ("httpx", "httpcore", "telegram", "telegram.Bot")
"""Where a record carrying a URL is made (a logger's filters see only its own records, not its children's)."""


def _redact_everywhere(token: str) -> None:
    known = [name for name in logging.root.manager.loggerDict if name.startswith(("httpx", "httpcore", "telegram"))]
    for name in {*_LOGGERS, *known}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactToken) and f.token == token for f in logger.filters):
            logger.addFilter(_RedactToken(token))
