"""A fake Bot API server and a control plane whose notifications point at it."""

from tests.telegram_fake.fixtures import telegram, tg_cp

__all__ = ["telegram", "tg_cp"]
