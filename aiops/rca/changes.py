"""The change log RCA correlates incidents with: deployments and configuration edits, as recorded
through ``POST /api/v1/changes`` (by CI after a deploy, or by an operator)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from aiops.rca.model import Change

_NS = 1_000_000_000


def to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / _NS, UTC)


def to_ns(at: datetime) -> int:
    return int(at.timestamp() * _NS)


async def record_change(conn: asyncpg.Connection, change: Change, *, recorded_by: str) -> asyncpg.Record:
    """Store ``change``; returns the stored row."""
    return await conn.fetchrow(
        """INSERT INTO changes (id, kind, service, at, detail, recorded_by) VALUES ($1, $2, $3, $4, $5, $6)
           RETURNING *""",
        uuid.uuid4(), change.kind, change.service, to_datetime(change.at_ns), change.detail, recorded_by,
    )


async def recorded_changes(
    conn: asyncpg.Connection, *, since: datetime | None, until: datetime | None, service: str | None, limit: int
) -> list[asyncpg.Record]:
    """Stored changes, newest first, optionally within ``[since, until]`` and of one ``service``."""
    return await conn.fetch(
        """SELECT * FROM changes
           WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at <= $2)
             AND ($3::text IS NULL OR service = $3)
           ORDER BY at DESC, id DESC LIMIT $4""",
        since, until, service, limit,
    )


async def changes_between(conn: asyncpg.Connection, start_ns: int, end_ns: int) -> list[Change]:
    """Changes made at ``start_ns <= at <= end_ns``, oldest first."""
    rows = await conn.fetch(
        "SELECT kind, service, at, detail FROM changes WHERE at BETWEEN $1 AND $2 ORDER BY at, id",
        to_datetime(start_ns), to_datetime(end_ns),
    )
    return [Change(r["kind"], r["service"], to_ns(r["at"]), r["detail"]) for r in rows]
