"""Remediations in Postgres: plain SQL, the caller owns the transaction.

Each state change updates the row, appends a ``remediation_steps`` row and an ``audit_log`` row
(actor: the principal, ``policy`` or ``remediation-worker``), and notifies ``devart_events``
(``kind: remediation``), all in the caller's transaction. JSON is written as text cast to jsonb and
read back as text, so this works on pools with or without a JSON codec.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg

State = Literal[
    "proposed", "preflight", "dry_run", "awaiting_approval", "applying", "verifying", "successful", "failed",
    "inconclusive", "refused", "expired", "error", "suggested",
]
ACTIVE: tuple[State, ...] = ("proposed", "preflight", "dry_run", "applying", "verifying")
"""States the worker advances (``awaiting_approval`` moves on an approval's outcome)."""
TERMINAL: tuple[State, ...] = ("successful", "failed", "inconclusive", "refused", "expired", "error", "suggested")
SUBJECT_KIND = "remediation"
EVENTS_CHANNEL = "devart_events"
_JSON = ("input", "preflight", "dry_run", "apply_result", "verification")
_COLUMNS = ", ".join(
    [f"{c}::text AS {c}" for c in _JSON]
    + ["id", "action", "target", "namespace", "reason", "incident_id", "category", "confidence", "origin",
       "proposed_by", "mode", "state", "state_reason", "approval_id", "warnings", "apply_started_at", "applied_at",
       "next_at", "created_at", "updated_at", "finished_at"]
)


def _decode(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for column in _JSON:
        out[column] = json.loads(out[column]) if out[column] is not None else None
    return out


async def propose(
    conn: asyncpg.Connection, *, action: str, target: str, namespace: str, input: dict[str, Any], reason: str,
    origin: Literal["rca", "manual", "escalation"], proposed_by: str, mode: str, incident_id: UUID | None = None,
    category: str | None = None, confidence: float | None = None,
) -> tuple[UUID, bool]:
    """A new remediation in ``proposed``; returns ``(id, created)``. One per incident and action:
    proposing again returns the existing one."""
    remediation_id = uuid4()
    row = await conn.fetchrow(
        """INSERT INTO remediations (id, action, target, namespace, input, reason, incident_id, category,
               confidence, origin, proposed_by, mode, state, state_reason)
           VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9, $10, $11, $12, 'proposed', $6)
           ON CONFLICT (incident_id, action) WHERE incident_id IS NOT NULL DO NOTHING
           RETURNING id""",
        remediation_id, action, target, namespace, json.dumps(input), reason[:1000], incident_id, category,
        confidence, origin, proposed_by, mode,
    )
    if row is None:
        existing = await conn.fetchval(
            "SELECT id FROM remediations WHERE incident_id = $1 AND action = $2", incident_id, action
        )
        return existing, False
    await _record(conn, remediation_id, "proposed", reason, proposed_by,
                  {"action": action, "target": target, "namespace": namespace, "origin": origin, "mode": mode})
    return remediation_id, True


async def transition(
    conn: asyncpg.Connection, remediation_id: UUID, state: State, reason: str, *, actor: str,
    next_in_s: float = 0.0, **columns: Any,
) -> None:
    """Move to ``state`` with ``reason``; ``columns`` (preflight, dry_run, apply_result, verification,
    approval_id, mode, warnings, apply_started_at, applied_at) are written with it."""
    sets = ["state = $2", "state_reason = $3", "updated_at = now()", "next_at = now() + make_interval(secs => $4)"]
    values: list[Any] = [remediation_id, state, reason[:1000], next_in_s]
    for name, value in columns.items():
        values.append(json.dumps(value) if name in _JSON else value)
        sets.append(f"{name} = ${len(values)}{'::text::jsonb' if name in _JSON else ''}")
    if state in TERMINAL:
        sets.append("finished_at = now()")
    await conn.execute(f"UPDATE remediations SET {', '.join(sets)} WHERE id = $1", *values)
    await _record(conn, remediation_id, state, reason, actor, {})


async def update(conn: asyncpg.Connection, remediation_id: UUID, *, next_in_s: float, **columns: Any) -> None:
    """Change columns without a new step (verification points, a wait's reason, the next check)."""
    sets, values = ["updated_at = now()", "next_at = now() + make_interval(secs => $2)"], [remediation_id, next_in_s]
    for name, value in columns.items():
        values.append(json.dumps(value) if name in _JSON else value)
        sets.append(f"{name} = ${len(values)}{'::text::jsonb' if name in _JSON else ''}")
    await conn.execute(f"UPDATE remediations SET {', '.join(sets)} WHERE id = $1", *values)


async def note(conn: asyncpg.Connection, remediation_id: UUID, step: str, reason: str, *, actor: str) -> None:
    """A step that is not a state change (an escalation, a hand-over to a person)."""
    await _record(conn, remediation_id, step, reason, actor, {})


async def _record(conn: asyncpg.Connection, remediation_id: UUID, state: str, reason: str, actor: str,
                  detail: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO remediation_steps (remediation_id, state, reason, actor) VALUES ($1, $2, $3, $4)",
        remediation_id, state, reason[:1000], actor,
    )
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4::text::jsonb)",
        actor, f"remediation.{state}", str(remediation_id), json.dumps({"reason": reason[:1000], **detail}),
    )
    row = await conn.fetchrow("SELECT action, target, namespace, incident_id FROM remediations WHERE id = $1",
                              remediation_id)
    payload = {"kind": "remediation", "remediation_id": str(remediation_id), "state": state,
               "reason": reason[:300], "action": row["action"], "target": row["target"],
               "namespace": row["namespace"], "incident_id": str(row["incident_id"]) if row["incident_id"] else None}
    await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, json.dumps(payload))


async def get(conn: asyncpg.Connection, remediation_id: UUID, *, lock: bool = False) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM remediations WHERE id = $1{' FOR UPDATE SKIP LOCKED' if lock else ''}",
        remediation_id,
    )
    return _decode(row)


async def steps(conn: asyncpg.Connection, remediation_id: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT state, reason, actor, at FROM remediation_steps WHERE remediation_id = $1 ORDER BY id", remediation_id
    )
    return [dict(r) for r in rows]


async def list_page(
    conn: asyncpg.Connection, *, state: str | None, incident_id: UUID | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    after_at, after_id = _decode_cursor(cursor) if cursor else (None, None)
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM remediations
            WHERE ($1::text IS NULL OR state = $1) AND ($2::uuid IS NULL OR incident_id = $2)
              AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
            ORDER BY created_at DESC, id DESC LIMIT $5""",
        state, incident_id, after_at, after_id, limit + 1,
    )
    page = [_decode(r) for r in rows[:limit]]
    last = page[-1] if len(rows) > limit and page else None
    return page, (_encode_cursor(last["created_at"], last["id"]) if last else None)  # type: ignore[index]


async def due(conn: asyncpg.Connection, *, limit: int) -> list[UUID]:
    rows = await conn.fetch(
        f"""SELECT id FROM remediations WHERE state IN ({", ".join(f"'{s}'" for s in ACTIVE)}) AND next_at <= now()
            ORDER BY next_at LIMIT $1""",
        limit,
    )
    return [r["id"] for r in rows]


async def is_paused(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT paused FROM remediation_control"))


async def control(conn: asyncpg.Connection) -> dict[str, Any]:
    return dict(await conn.fetchrow("SELECT paused, changed_by, reason, changed_at FROM remediation_control"))


async def set_paused(conn: asyncpg.Connection, *, paused: bool, by: str, reason: str) -> dict[str, Any]:
    await conn.execute(
        "UPDATE remediation_control SET paused = $1, changed_by = $2, reason = $3, changed_at = now()",
        paused, by, reason[:500],
    )
    await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL,
                       json.dumps({"kind": "remediation_control", "paused": paused, "by": by, "reason": reason[:300]}))
    return await control(conn)


def _encode_cursor(at: datetime, remediation_id: UUID) -> str:
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), str(remediation_id)]).encode()).decode()


class BadCursor(ValueError):
    pass


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        at, remediation_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(at), UUID(remediation_id)
    except (ValueError, TypeError) as exc:
        raise BadCursor("cursor is not one this API returned") from exc
