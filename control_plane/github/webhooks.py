"""Incoming GitHub webhooks: the signature check and the delivery inbox.

GitHub signs the raw body with HMAC-SHA256 under the webhook secret and sends
``X-Hub-Signature-256: sha256=<hex>``. The check compares against every configured secret in
constant time (no early exit), so two secrets work during a rotation. A verified delivery is
stored once per ``X-GitHub-Delivery`` id; a redelivery only counts as a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import SecretStr

INBOX_CHANNEL = "devart_github_inbox"
_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secrets: list[SecretStr]) -> bool:
    if not header or not header.startswith(_PREFIX) or not secrets:
        return False
    given = header.encode("latin-1", errors="replace")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(secret.get_secret_value(), body).encode(), given)
    return matched


def _repo(payload: dict[str, Any]) -> str | None:
    repository = payload.get("repository")
    return str(repository.get("full_name")) if isinstance(repository, dict) and repository.get("full_name") else None


def _installation(payload: dict[str, Any]) -> int | None:
    installation = payload.get("installation")
    if isinstance(installation, dict) and isinstance(installation.get("id"), int):
        return int(installation["id"])
    return None


async def record(conn: asyncpg.Connection, delivery_id: str, event: str, payload: dict[str, Any]) -> bool:
    """Store a verified delivery for the processor; False when that delivery id was stored before."""
    action = payload.get("action")
    inserted = await conn.fetchval(
        """INSERT INTO github_deliveries (delivery_id, event, action, repo, installation_id, payload)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (delivery_id) DO UPDATE SET duplicates = github_deliveries.duplicates + 1,
               last_received_at = now()
           RETURNING xmax = 0""",
        delivery_id, event, str(action) if isinstance(action, str) else None, _repo(payload),
        _installation(payload), payload,
    )
    if inserted:
        await conn.execute("SELECT pg_notify($1, '')", INBOX_CHANNEL)
    return bool(inserted)


async def list_deliveries(conn: asyncpg.Connection, *, event: str | None, repo: str | None,
                          before: datetime | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT delivery_id, event, action, repo, installation_id, state, outcome, runs, duplicates, received_at,
                  processed_at
           FROM github_deliveries
           WHERE ($1::text IS NULL OR event = $1) AND ($2::text IS NULL OR repo = $2)
             AND ($3::timestamptz IS NULL OR received_at < $3)
           ORDER BY received_at DESC LIMIT $4""",
        event, repo, before, limit,
    )
