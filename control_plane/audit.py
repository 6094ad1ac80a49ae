"""The audit log: every mutation, who made it, on what, from where (in the mutation's transaction)."""

from __future__ import annotations

from typing import Any

import asyncpg


async def audit(
    conn: asyncpg.Connection, *, actor: str, action: str, target: str = "", detail: dict[str, Any] | None = None,
    remote: str = "",
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail, remote) VALUES ($1, $2, $3, $4, $5)",
        actor, action, target, detail or {}, remote,
    )
