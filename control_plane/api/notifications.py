"""/api/v1/telegram and /api/v1/notifications: Telegram's webhook, the test message, and what could not
be delivered.

The webhook is the one route without a bearer token: Telegram cannot send one. It is authenticated
by the secret registered with ``setWebhook``, which Telegram returns in
``X-Telegram-Bot-Api-Secret-Token`` and which is compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from control_plane.api.deps import ControlPlaneDep, DbConn, Remote, require
from control_plane.audit import audit
from control_plane.auth import READ, Principal
from control_plane.errors import Conflict, Forbidden, InvalidInput, NotFound

router = APIRouter(prefix="/api/v1", tags=["notifications"])
Reader = Annotated[Principal, Depends(require(READ))]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


async def _admin(who: Annotated[Principal, Depends(require(READ))]) -> Principal:
    if who.role != "admin":
        raise Forbidden(f"role '{who.role}' may not do this (needs admin)")
    return who


Admin = Annotated[Principal, Depends(_admin)]


class TelegramMessage(BaseModel):
    id: int
    chat_id: int
    subject_kind: str
    subject_id: str
    state: Literal["pending", "sent", "rejected"]
    revision: int
    delivered_revision: int
    message_id: int | None
    attempts: int
    last_error: str | None = Field(description="Telegram's reason for the last failure")
    updated_at: datetime


class WebhookDelivery(BaseModel):
    id: UUID
    webhook: str
    event: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class TestResult(BaseModel):
    chat_id: int
    ok: bool
    message_id: int | None = None
    answer: dict[str, Any] | None = Field(default=None, description="the Message Telegram returned")
    error: str | None = None


@router.post("/telegram/webhook", operation_id="telegram_webhook", include_in_schema=False)
async def telegram_webhook(
    request: Request, cp: ControlPlaneDep, remote: Remote,
    secret: Annotated[str | None, Header(alias=SECRET_HEADER)] = None,
) -> dict[str, bool]:
    channel = cp.workers.notifications.telegram if cp.workers and cp.workers.notifications else None
    tg = cp.notify.telegram
    if channel is None or tg.mode != "webhook" or tg.webhook_secret is None:
        raise NotFound("the Telegram webhook is not enabled (DEVART_TELEGRAM_MODE=webhook)")
    expected = tg.webhook_secret.get_secret_value().encode()
    if secret is None or not hmac.compare_digest(secret.encode(), expected):
        raise Forbidden("missing or wrong secret token", field=f"header.{SECRET_HEADER}")
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", field="body") from exc
    if not isinstance(body, dict) or not isinstance(body.get("update_id"), int):
        raise InvalidInput("an Update needs an integer update_id", field="body.update_id")
    await channel.handle_webhook(body, remote=remote)
    return {"ok": True}


@router.post("/telegram/test", response_model=list[TestResult], operation_id="telegram_test",
             summary="Send a test message to every configured chat (admin)")
async def telegram_test(cp: ControlPlaneDep, conn: DbConn, who: Admin, remote: Remote) -> list[TestResult]:
    tg = cp.notify.telegram
    if not tg.enabled:
        raise Conflict("Telegram is not configured: set DEVART_TELEGRAM_BOT_TOKEN and DEVART_TELEGRAM_CHATS")
    from control_plane.notify.telegram_channel import send_test  # loads python-telegram-bot only when used

    results = [TestResult(**r) for r in await send_test(tg)]
    await audit(conn, actor=who.name, action="telegram.test", detail={
        "chats": [r.chat_id for r in results], "ok": [r.chat_id for r in results if r.ok]}, remote=remote)
    return results


@router.get("/telegram/messages", response_model=list[TelegramMessage], operation_id="list_telegram_messages",
            summary="Telegram messages, newest first; state=rejected shows what Telegram refused and why")
async def list_telegram_messages(
    conn: DbConn, _: Reader,
    state: Annotated[Literal["pending", "sent", "rejected"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[TelegramMessage]:
    rows = await conn.fetch(
        """SELECT id, chat_id, subject_kind, subject_id, state, revision, delivered_revision, message_id, attempts,
                  last_error, updated_at
           FROM telegram_messages WHERE ($1::text IS NULL OR state = $1) AND digest_id IS NULL
           ORDER BY id DESC LIMIT $2""",
        state, limit,
    )
    return [TelegramMessage(**dict(r)) for r in rows]


@router.get("/notifications/webhook-deliveries", response_model=list[WebhookDelivery],
            operation_id="list_webhook_deliveries", summary="Outgoing webhook deliveries, newest first")
async def list_webhook_deliveries(
    conn: DbConn, _: Reader,
    state: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[WebhookDelivery]:
    rows = await conn.fetch(
        """SELECT id, webhook, event, state, attempts, last_status, last_error, created_at, delivered_at
           FROM webhook_deliveries WHERE ($1::text IS NULL OR state = $1) ORDER BY created_at DESC, id LIMIT $2""",
        state, limit,
    )
    return [WebhookDelivery(**dict(r)) for r in rows]
