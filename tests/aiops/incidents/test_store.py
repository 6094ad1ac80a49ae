import uuid

import asyncpg
import pytest

from aiops.incidents import IncidentNotFound, get_incident


async def test_get_incident_returns_the_row_and_its_anomalies(db: asyncpg.Pool) -> None:
    incident_id = uuid.uuid4()
    async with db.acquire() as conn:
        await conn.execute(
            """INSERT INTO incidents (id, status, title, severity, services, started_ns, last_anomaly_ns)
               VALUES ($1, 'open', 't', 0.4, ARRAY['api', 'db'], 1000, 2000)""",
            incident_id,
        )
        await conn.execute(
            """INSERT INTO incident_anomalies (incident_id, fingerprint, service, operation, signal, direction,
                   first_ns, last_ns, peak_score, baseline, peak_value, relative_change, excerpt)
               VALUES ($1, 'f', 'db', 'query', 'p95', 'up', 1000, 2000, 0.9, 0.1, 0.5, 4.0,
                   '{"timestamps_ns": [1000], "values": [null]}')""",
            incident_id,
        )
        incident = await get_incident(conn, incident_id)
    assert incident.status == "open" and incident.services == ["api", "db"]
    assert incident.started_ns == 1000 and incident.ended_ns is None and incident.resolved_at is None
    assert [(a.service, a.signal, a.direction) for a in incident.anomalies] == [("db", "p95", "up")]
    assert incident.anomalies[0].excerpt.values == [None]


async def test_get_incident_of_unknown_id_raises(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        with pytest.raises(IncidentNotFound, match="no incident"):
            await get_incident(conn, uuid.uuid4())
        with pytest.raises(IncidentNotFound, match="not a UUID"):
            await get_incident(conn, "nope")
