"""Workflow definitions and runs in Postgres: applying versions, reading and listing (plain SQL)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from control_plane.errors import InvalidInput, NotFound
from control_plane.workflows.definition import Definition


def digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def apply_workflow(
    conn: asyncpg.Connection, definition: Definition, *, created_by: str
) -> tuple[asyncpg.Record, bool]:
    """Store ``definition`` as the workflow's next version; the same document as the latest version
    returns that version (``created`` false). Keeps the cron schedule row in step (caller's tx)."""
    document = definition.document
    digest_ = digest(document)
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('devart.workflow:' || $1, 0))",
                       definition.name)
    latest = await conn.fetchrow(
        "SELECT * FROM workflows WHERE name = $1 ORDER BY version DESC LIMIT 1", definition.name
    )
    if latest is not None and latest["digest"] == digest_:
        return latest, False
    version = (latest["version"] if latest else 0) + 1
    row = await conn.fetchrow(
        """INSERT INTO workflows (name, version, document, digest, created_by) VALUES ($1, $2, $3, $4, $5)
           RETURNING *""",
        definition.name, version, document, digest_, created_by,
    )
    if definition.schedule is None:
        await conn.execute("DELETE FROM workflow_schedules WHERE workflow = $1", definition.name)
    else:
        schedule = definition.schedule
        await conn.execute(
            """INSERT INTO workflow_schedules (workflow, version, cron, missed, next_at) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (workflow) DO UPDATE SET version = EXCLUDED.version, cron = EXCLUDED.cron,
                   missed = EXCLUDED.missed,
                   next_at = CASE WHEN workflow_schedules.cron = EXCLUDED.cron THEN workflow_schedules.next_at
                                  ELSE EXCLUDED.next_at END""",
            definition.name, version, schedule.cron_text, schedule.missed,
            schedule.cron.next_after(datetime.now(UTC)),
        )
    return row, True


async def get_workflow(conn: asyncpg.Connection, name: str, version: int | None = None) -> asyncpg.Record:
    if version is None:
        row = await conn.fetchrow("SELECT * FROM workflows WHERE name = $1 ORDER BY version DESC LIMIT 1", name)
    else:
        row = await conn.fetchrow("SELECT * FROM workflows WHERE name = $1 AND version = $2", name, version)
    if row is None:
        what = f"workflow {name!r}" + (f" version {version}" if version is not None else "")
        raise NotFound(f"{what} does not exist", field="name")
    return row


async def list_workflows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The latest version of every workflow, by name."""
    return await conn.fetch(
        """SELECT DISTINCT ON (name) * FROM workflows ORDER BY name, version DESC"""
    )


async def workflow_versions(conn: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT version, digest, created_by, created_at FROM workflows WHERE name = $1 ORDER BY version", name
    )


async def schedule_of(conn: asyncpg.Connection, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM workflow_schedules WHERE workflow = $1", name)


async def get_run(conn: asyncpg.Connection, run_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM workflow_runs WHERE id = $1", run_id)
    if row is None:
        raise NotFound(f"run {run_id} does not exist", field="run_id")
    return row


async def run_jobs(conn: asyncpg.Connection, run_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT s.*, t.status AS task_status, t.started_at AS task_started_at, t.finished_at AS task_finished_at
           FROM run_steps s LEFT JOIN tasks t ON t.id = s.task_id
           WHERE s.run_id = $1 ORDER BY s.position, s.job""",
        run_id,
    )


async def run_transitions(conn: asyncpg.Connection, run_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM run_transitions WHERE run_id = $1 ORDER BY id", run_id)


def _encode_cursor(created_at: datetime, run_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(run_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created_at, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), UUID(run_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is not a cursor returned by this API", field="query.cursor") from exc


async def list_runs(
    conn: asyncpg.Connection, *, limit: int, cursor: str | None = None, workflow: str | None = None,
    state: str | None = None, trigger: str | None = None,
) -> tuple[list[asyncpg.Record], str | None]:
    """Newest first; the page and the cursor of the next one (None at the end)."""
    after = _decode_cursor(cursor) if cursor else (None, None)
    rows = await conn.fetch(
        """SELECT * FROM workflow_runs
           WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR state = $2)
             AND ($3::text IS NULL OR trigger = $3)
             AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
           ORDER BY created_at DESC, id DESC LIMIT $6""",
        workflow, state, trigger, after[0], after[1], limit + 1,
    )
    next_cursor = _encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return rows[:limit], next_cursor
