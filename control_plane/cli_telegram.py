"""``devart telegram test``: a test message to every configured chat, straight from this machine."""

from __future__ import annotations

import argparse
from typing import Any

from agents.sdk import eventloop
from control_plane.cli_common import CliError, Exit, command, emit, group
from control_plane.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    telegram = group(sub, "telegram", help="the Telegram bot: check its set-up")
    command(telegram, "test", run=_test,
            help="send a test message to every chat in DEVART_TELEGRAM_CHATS and print what Telegram answered "
                 "(uses this shell's DEVART_TELEGRAM_* settings; needs no running devart)")


def _test(args: argparse.Namespace) -> int:
    from control_plane.notify import TelegramSettings

    settings = TelegramSettings()
    if settings.bot_token is None or not settings.chats:
        raise CliError("Telegram is not configured: set DEVART_TELEGRAM_BOT_TOKEN and DEVART_TELEGRAM_CHATS "
                       "(see docs/telegram.md)", Exit.USAGE)
    from control_plane.notify.telegram_channel import send_test

    results: list[dict[str, Any]] = eventloop.run(send_test(settings), Settings().event_loop)
    emit(args, results, _text)
    return int(Exit.OK if all(r["ok"] for r in results) else Exit.REFUSED)


def _text(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if r["ok"]:
            lines.append(f"chat {r['chat_id']}: sent, message_id {r['message_id']}; Telegram answered {r['answer']}")
        else:
            lines.append(f"chat {r['chat_id']}: FAILED: {r['error']}")
    return "\n".join(lines)
