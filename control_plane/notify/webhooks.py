"""Outgoing webhooks: each event a JSON body signed like GitHub's (``X-Devart-Signature-256:
sha256=<hex HMAC-SHA256 of the body>``), written to ``webhook_deliveries`` in the transaction that
records the change and POSTed by a loop that retries with exponential backoff.

The stored body is exactly what is signed and sent, so a retry carries the same bytes and the same
``X-Devart-Delivery`` id: receivers deduplicate by it (delivery is at-least-once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx

from control_plane.loops import LoopService
from control_plane.notify.settings import NotifySettings, Webhook
from control_plane.notify.subjects import Change
from control_plane.notify.telegram_outbox import NOTIFY_CHANNEL, console_link

log = logging.getLogger("devart.webhooks")

SIGNATURE_HEADER = "X-Devart-Signature-256"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def enqueue(conn: asyncpg.Connection, settings: NotifySettings, change: Change, events: list[str]) -> int:
    """One delivery per (webhook, event) the webhook asked for; returns how many were written."""
    rows = []
    for event in events:
        for hook in settings.webhooks:
            if not hook.wants(event):
                continue
            delivery = uuid.uuid4()
            body = json.dumps({
                "id": str(delivery), "event": event, "created_at": datetime.now(UTC).isoformat(),
                "subject": {"kind": change.kind, "id": change.subject_id,
                            "url": console_link(settings, change.kind, change.subject_id)},
                "data": change.facts, "previous": change.previous,
            }, separators=(",", ":"), sort_keys=True, default=str)
            rows.append((delivery, hook.label, hook.url, event, body))
    if rows:
        await conn.executemany(
            "INSERT INTO webhook_deliveries (id, webhook, url, event, body) VALUES ($1, $2, $3, $4, $5)", rows
        )
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return len(rows)


class WebhookSender(LoopService):
    """POSTs due deliveries, one transaction each; 2xx is delivered, anything else is retried."""

    name = "webhook-sender"

    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings, *, interval_s: float = 0.5) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._settings = settings
        self._hooks: dict[str, Webhook] = {hook.label: hook for hook in settings.webhooks}
        self._client = httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False,
                                         headers={"User-Agent": "devart-webhooks"})

    async def stop(self) -> None:
        await super().stop()
        await self._client.aclose()

    async def run_once(self) -> None:
        while await self.deliver_one():
            pass

    async def deliver_one(self) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT id, webhook, url, event, body, attempts FROM webhook_deliveries
                   WHERE state = 'pending' AND available_at <= now() AND webhook = ANY($1::text[])
                   ORDER BY available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""",
                list(self._hooks),
            )
            if row is None:
                return False
            await self._deliver(conn, row)
            return True

    async def _deliver(self, conn: asyncpg.Connection, row: asyncpg.Record) -> None:
        hook = self._hooks[row["webhook"]]
        body = row["body"].encode()
        headers = {"Content-Type": "application/json", "X-Devart-Event": row["event"],
                   "X-Devart-Delivery": str(row["id"]),
                   SIGNATURE_HEADER: signature(hook.secret.get_secret_value(), body)}
        status: int | None = None
        try:
            response = await self._client.post(row["url"], content=body, headers=headers)
            status = response.status_code
            error = None if response.is_success else f"HTTP {status}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempts = row["attempts"] + 1
        if error is None:
            await conn.execute(
                """UPDATE webhook_deliveries SET state = 'delivered', attempts = $2, last_status = $3,
                       last_error = NULL, delivered_at = now() WHERE id = $1""",
                row["id"], attempts, status,
            )
            return
        s = self._settings
        failed = attempts >= s.webhook_max_attempts
        delay = min(s.webhook_backoff_s * 2 ** (attempts - 1), s.webhook_backoff_cap_s)
        await conn.execute(
            """UPDATE webhook_deliveries SET state = $2, attempts = $3, last_status = $4, last_error = $5,
                   available_at = now() + make_interval(secs => $6) WHERE id = $1""",
            row["id"], "failed" if failed else "pending", attempts, status, error[:500], delay,
        )
        if failed:
            log.error("webhook %s: delivery %s of %s failed after %d attempts: %s",
                      hook.label, row["id"], row["event"], attempts, error)
        else:
            log.warning("webhook %s: delivery %s of %s failed (%s), retrying in %.1fs",
                        hook.label, row["id"], row["event"], error, delay)
