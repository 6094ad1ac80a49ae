"""Incidents, silences and maintenance windows in Postgres: plain SQL, the caller owns the transaction.

JSON columns are written as text cast to jsonb and read back as text, so these functions work on
pools with or without a JSON codec.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg

from aiops.incidents.errors import IncidentNotFound, IncidentStateError, InvalidIncidentInput
from aiops.incidents.model import Anomaly, Excerpt, Incident, IncidentStatus, MaintenanceWindow, Silence

IncidentEvent = Literal["opened", "updated", "acknowledged", "resolved"]
INCIDENTS_CHANNEL = "devart_incidents"
EVENTS_CHANNEL = "devart_events"

_INCIDENT_COLUMNS = """id, status, title, severity, services, opened_at, updated_at, started_ns, ended_ns,
    last_anomaly_ns, acknowledged_at, acknowledged_by, resolved_at, resolved_by"""
_ANOMALY_COLUMNS = """incident_id, fingerprint, service, operation, signal, direction, first_ns, last_ns,
    peak_score, baseline, peak_value, relative_change, active, calm_steps, occurrences, excerpt::text AS excerpt"""
_SILENCE_COLUMNS = "id, service, operation, signal, comment, created_by, created_at, expires_at"
_WINDOW_COLUMNS = "id, service, comment, created_by, created_at, starts_at, ends_at"


async def get_incident(conn: asyncpg.Connection, incident_id: UUID | str) -> Incident:
    """One incident with its anomalies (ordered by first appearance); :class:`IncidentNotFound` if none."""
    key = _uuid(incident_id, "incident_id")
    row = await conn.fetchrow(f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = $1", key)
    if row is None:
        raise IncidentNotFound(f"no incident with id {key}", field="incident_id")
    return (await _with_anomalies(conn, [row]))[0]


async def list_incidents(
    conn: asyncpg.Connection,
    *,
    limit: int,
    cursor: str | None = None,
    status: IncidentStatus | None = None,
    service: str | None = None,
) -> tuple[list[Incident], str | None]:
    """Newest first, without anomalies; returns the page and the cursor of the next one (None at the end)."""
    after_at, after_id = _decode_cursor(cursor) if cursor else (None, None)
    rows = await conn.fetch(
        f"""SELECT {_INCIDENT_COLUMNS} FROM incidents
            WHERE ($1::text IS NULL OR status = $1)
              AND ($2::text IS NULL OR services @> ARRAY[$2::text])
              AND ($3::timestamptz IS NULL OR (opened_at, id) < ($3, $4::uuid))
            ORDER BY opened_at DESC, id DESC LIMIT $5""",
        status, service, after_at, after_id, limit + 1,
    )
    page = [_incident(r, []) for r in rows[:limit]]
    next_cursor = _encode_cursor(page[-1].opened_at, page[-1].id) if len(rows) > limit else None
    return page, next_cursor


async def unresolved_incidents(conn: asyncpg.Connection) -> list[Incident]:
    """Every open or acknowledged incident with its anomalies, locked for the rest of the transaction."""
    rows = await conn.fetch(
        f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE status <> 'resolved' ORDER BY opened_at, id FOR UPDATE"
    )
    return await _with_anomalies(conn, rows)


async def save_incident(conn: asyncpg.Connection, incident: Incident) -> None:
    """Insert or update an incident and all its anomalies (by ``(incident_id, fingerprint)``)."""
    await conn.execute(
        """INSERT INTO incidents (id, status, title, severity, services, opened_at, updated_at, started_ns,
               ended_ns, last_anomaly_ns, acknowledged_at, acknowledged_by, resolved_at, resolved_by)
           VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8, $9, $10, $11, $12, $13)
           ON CONFLICT (id) DO UPDATE SET status = $2, title = $3, severity = $4, services = $5,
               updated_at = now(), started_ns = $7, ended_ns = $8, last_anomaly_ns = $9,
               acknowledged_at = $10, acknowledged_by = $11, resolved_at = $12, resolved_by = $13""",
        incident.id, incident.status, incident.title, incident.severity, incident.services, incident.opened_at,
        incident.started_ns, incident.ended_ns, incident.last_anomaly_ns, incident.acknowledged_at,
        incident.acknowledged_by, incident.resolved_at, incident.resolved_by,
    )
    await conn.executemany(
        """INSERT INTO incident_anomalies (incident_id, fingerprint, service, operation, signal, direction,
               first_ns, last_ns, peak_score, baseline, peak_value, relative_change, active, calm_steps,
               occurrences, excerpt)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::text::jsonb)
           ON CONFLICT (incident_id, fingerprint) DO UPDATE SET last_ns = $8, peak_score = $9, baseline = $10,
               peak_value = $11, relative_change = $12, active = $13, calm_steps = $14, occurrences = $15,
               excerpt = $16::text::jsonb""",
        [
            (
                incident.id, a.fingerprint, a.service, a.operation, a.signal, a.direction, a.first_ns, a.last_ns,
                a.peak_score, a.baseline, a.peak_value, a.relative_change, a.active, a.calm_steps,
                a.occurrences, a.excerpt.model_dump_json(),
            )
            for a in incident.anomalies
        ],
    )


async def acknowledge(conn: asyncpg.Connection, *, incident_id: UUID | str, by: str) -> Incident:
    """``open -> acknowledged``; :class:`IncidentStateError` from any other status."""
    key = _uuid(incident_id, "incident_id")
    updated = await conn.fetchval(
        """UPDATE incidents SET status = 'acknowledged', acknowledged_at = now(), acknowledged_by = $2,
               updated_at = now()
           WHERE id = $1 AND status = 'open' RETURNING id""",
        key, by,
    )
    if updated is None:
        current = await get_incident(conn, key)
        raise IncidentStateError(f"incident {key} is {current.status}; only an open incident can be acknowledged")
    return await get_incident(conn, key)


async def resolve(conn: asyncpg.Connection, *, incident_id: UUID | str, by: str) -> Incident:
    """``open | acknowledged -> resolved`` by hand: its anomalies stop being active, and it ends at the end
    of its latest anomalous step. :class:`IncidentStateError` if it is already resolved."""
    key = _uuid(incident_id, "incident_id")
    updated = await conn.fetchval(
        """UPDATE incidents SET status = 'resolved', resolved_at = now(), resolved_by = $2,
               ended_ns = last_anomaly_ns, updated_at = now()
           WHERE id = $1 AND status <> 'resolved' RETURNING id""",
        key, by,
    )
    if updated is None:
        await get_incident(conn, key)
        raise IncidentStateError(f"incident {key} is already resolved")
    await conn.execute("UPDATE incident_anomalies SET active = false WHERE incident_id = $1", key)
    return await get_incident(conn, key)


async def notify(conn: asyncpg.Connection, incident: Incident, event: IncidentEvent) -> None:
    """Tell listeners (delivered at commit): ``devart_incidents`` carries ``{"incident_id", "event"}``, and
    ``devart_events`` (the live event stream) the same plus ``kind``, status, severity, title and services."""
    short = {"incident_id": str(incident.id), "event": event}
    full = {
        "kind": "incident", **short, "status": incident.status, "severity": incident.severity,
        "title": incident.title, "services": incident.services,
    }
    await conn.execute(
        "SELECT pg_notify($1, $2), pg_notify($3, $4)",
        INCIDENTS_CHANNEL, json.dumps(short), EVENTS_CHANNEL, json.dumps(full),
    )


async def create_silence(
    conn: asyncpg.Connection,
    *,
    service: str | None,
    operation: str | None,
    signal: str | None,
    expires_at: datetime,
    comment: str,
    by: str,
    now: datetime,
) -> Silence:
    """A silence with at least one matcher, expiring after ``now``."""
    if service is None and operation is None and signal is None:
        raise InvalidIncidentInput("a silence needs at least one matcher (service, operation or signal)",
                                   field="service")
    if expires_at <= now:
        raise InvalidIncidentInput("expires_at must be in the future", field="expires_at")
    row = await conn.fetchrow(
        f"""INSERT INTO incident_silences (id, service, operation, signal, comment, created_by, created_at, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_SILENCE_COLUMNS}""",
        uuid4(), service, operation, signal, comment, by, now, expires_at,
    )
    return Silence(**dict(row))


async def list_silences(conn: asyncpg.Connection, *, active_at: datetime | None = None) -> list[Silence]:
    """All silences, or those not yet expired at ``active_at``; soonest expiry first."""
    rows = await conn.fetch(
        f"""SELECT {_SILENCE_COLUMNS} FROM incident_silences
            WHERE $1::timestamptz IS NULL OR expires_at > $1 ORDER BY expires_at, id""",
        active_at,
    )
    return [Silence(**dict(r)) for r in rows]


async def delete_silence(conn: asyncpg.Connection, *, silence_id: UUID | str) -> None:
    """Remove a silence; :class:`IncidentNotFound` if there is none with that id."""
    key = _uuid(silence_id, "silence_id")
    if await conn.fetchval("DELETE FROM incident_silences WHERE id = $1 RETURNING id", key) is None:
        raise IncidentNotFound(f"no silence with id {key}", field="silence_id")


async def create_maintenance_window(
    conn: asyncpg.Connection,
    *,
    service: str | None,
    starts_at: datetime,
    ends_at: datetime,
    comment: str,
    by: str,
    now: datetime,
) -> MaintenanceWindow:
    """A maintenance window for one service (or all when ``service`` is None)."""
    if ends_at <= starts_at:
        raise InvalidIncidentInput("ends_at must be after starts_at", field="ends_at")
    if ends_at <= now:
        raise InvalidIncidentInput("ends_at must be in the future", field="ends_at")
    row = await conn.fetchrow(
        f"""INSERT INTO maintenance_windows (id, service, comment, created_by, created_at, starts_at, ends_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_WINDOW_COLUMNS}""",
        uuid4(), service, comment, by, now, starts_at, ends_at,
    )
    return MaintenanceWindow(**dict(row))


async def list_maintenance_windows(
    conn: asyncpg.Connection, *, active_at: datetime | None = None
) -> list[MaintenanceWindow]:
    """All windows, or those covering ``active_at``; earliest start first."""
    rows = await conn.fetch(
        f"""SELECT {_WINDOW_COLUMNS} FROM maintenance_windows
            WHERE $1::timestamptz IS NULL OR (starts_at <= $1 AND ends_at > $1) ORDER BY starts_at, id""",
        active_at,
    )
    return [MaintenanceWindow(**dict(r)) for r in rows]


async def delete_maintenance_window(conn: asyncpg.Connection, *, window_id: UUID | str) -> None:
    """Remove a maintenance window; :class:`IncidentNotFound` if there is none with that id."""
    key = _uuid(window_id, "window_id")
    if await conn.fetchval("DELETE FROM maintenance_windows WHERE id = $1 RETURNING id", key) is None:
        raise IncidentNotFound(f"no maintenance window with id {key}", field="window_id")


async def _with_anomalies(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[Incident]:
    ids = [r["id"] for r in rows]
    found: dict[UUID, list[Anomaly]] = {key: [] for key in ids}
    for a in await conn.fetch(
        f"SELECT {_ANOMALY_COLUMNS} FROM incident_anomalies WHERE incident_id = ANY($1) ORDER BY first_ns, id",
        ids,
    ):
        found[a["incident_id"]].append(_anomaly(a))
    return [_incident(r, found[r["id"]]) for r in rows]


def _uuid(value: UUID | str, field: str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except ValueError:
        raise IncidentNotFound(f"{field}: {value!r} is not a UUID", field=field) from None


def _encode_cursor(opened_at: datetime, incident_id: UUID) -> str:
    raw = f"{opened_at.isoformat()}|{incident_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, key = raw.split("|")
        return datetime.fromisoformat(at), UUID(key)
    except ValueError as exc:
        raise InvalidIncidentInput("cursor is not a cursor returned by this API", field="cursor") from exc


def _incident(row: asyncpg.Record, anomalies: list[Anomaly]) -> Incident:
    return Incident(**dict(row), anomalies=anomalies)


def _anomaly(row: asyncpg.Record) -> Anomaly:
    fields: dict[str, Any] = dict(row)
    del fields["incident_id"]
    fields["excerpt"] = Excerpt.model_validate_json(fields["excerpt"])
    return Anomaly(**fields)
