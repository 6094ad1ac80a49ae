"""The python-telegram-bot ``Bot`` devart talks through, pointed at ``DEVART_TELEGRAM_API_URL``."""

from __future__ import annotations

import datetime as dt
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
    timeout = settings.request_timeout_s
    return Bot(
        settings.bot_token.get_secret_value(),
        base_url=f"{settings.api_url.rstrip('/')}/bot",
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
