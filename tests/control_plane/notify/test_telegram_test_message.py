"""`devart telegram test` and POST /api/v1/telegram/test: a test message per chat, Telegram's answer printed."""

from __future__ import annotations

import json
from pathlib import Path

from control_plane.service import ControlPlane
from tests.support.cli import devart
from tests.support.system import client, make_token, serve_api
from tests.telegram_fake.fixtures import GROUP, PRIVATE
from tests.telegram_fake.server import FakeTelegramServer


async def test_cli_sends_to_every_chat_and_prints_the_answers(telegram: FakeTelegramServer, tmp_path: Path) -> None:
    env = {"DEVART_TELEGRAM_BOT_TOKEN": telegram.fake.token, "DEVART_TELEGRAM_API_URL": telegram.url,
           "DEVART_TELEGRAM_CHATS": json.dumps([{"chat_id": GROUP, "message_thread_id": 3}, {"chat_id": 999}])}
    code, out, err = await devart("telegram", "test", "--output", "json", env=env, home=tmp_path)
    assert code == 3, err  # one chat failed
    results = json.loads(out)
    assert results[0]["ok"] and results[0]["answer"]["chat"]["id"] == GROUP
    assert results[0]["answer"]["text"].startswith("✅ devart test message from")
    assert results[1] == {"chat_id": 999, "ok": False, "error": "BadRequest: Chat not found"}
    (sent,) = [c for c in telegram.fake.calls_of("sendMessage") if c.params["chat_id"] == GROUP]
    assert sent.params["message_thread_id"] == 3

    code, out, _ = await devart("telegram", "test", env={**env, "DEVART_TELEGRAM_CHATS": json.dumps(
        [{"chat_id": PRIVATE}])}, home=tmp_path)
    assert code == 0 and out.startswith(f"chat {PRIVATE}: sent, message_id")


async def test_cli_without_settings_says_what_to_set(tmp_path: Path) -> None:
    code, out, err = await devart("telegram", "test", env={}, home=tmp_path)
    assert code == 2 and out == "" and "DEVART_TELEGRAM_BOT_TOKEN" in err


async def test_api_test_message_is_admin_only_and_audited(
    tg_cp: ControlPlane, telegram: FakeTelegramServer, database_url: str
) -> None:
    async with serve_api(tg_cp) as base_url:
        async with client(base_url, await make_token(database_url, "supervisor")) as supervisor:
            assert (await supervisor.post("/api/v1/telegram/test")).status_code == 403
        async with client(base_url, None) as anonymous:
            assert (await anonymous.post("/api/v1/telegram/test")).status_code == 401
        async with client(base_url, await make_token(database_url, "admin")) as admin:
            response = await admin.post("/api/v1/telegram/test")
            assert response.status_code == 200
            (result,) = response.json()
            assert result["ok"] and result["chat_id"] == GROUP and result["answer"]["message_id"] == result["message_id"]
    async with tg_cp.owner_connection() as conn:
        row = await conn.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'telegram.test'")
    assert row["actor"] == "admin-token" and row["detail"]["ok"] == [GROUP]
