"""Row-level security at the SQL level: every identity x every table x SELECT/INSERT/UPDATE/DELETE.

Each table gets a row (written as the superuser), then each identity tries each command inside a
savepoint that is rolled back. The expected matrix below is the product's rule, written here
independently of the migrations: viewers read; ci also creates tasks, workflow runs and changes;
supervisors operate tasks, runs, agents, incidents, approvals and remediations; admins also tokens
and policy; the token table and the audit log are read by admins only; the audit log is append-only
for everyone; background loops (devart_service) get the commands listed per table; devart_app, anon
and a request without claims get nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.support.supabase_shape import SupabaseShapedPostgres

READERS = {"viewer", "ci", "supervisor", "admin"}
OPERATORS = {"supervisor", "admin"}
CREATORS = {"ci", "supervisor", "admin"}
ADMIN = {"admin"}
SEL, INS, UPD, DEL = "SELECT", "INSERT", "UPDATE", "DELETE"


def _operated(read: set[str] = READERS, create: set[str] = OPERATORS, change: set[str] = OPERATORS,
              service: str = "") -> dict[str, Any]:
    return {SEL: read, INS: create, UPD: change, DEL: change, "service": set(service.split())}


EXPECTED: dict[str, dict[str, Any]] = {
    "schema_migrations": _operated(ADMIN, ADMIN, ADMIN),
    "pools": _operated(service="SELECT INSERT UPDATE"),
    "agents": _operated(service="SELECT INSERT UPDATE"),
    "tasks": _operated(create=CREATORS, service="SELECT INSERT UPDATE"),
    "task_transitions": _operated(create=CREATORS, service="SELECT INSERT"),
    "attempts": _operated(create=CREATORS, service="SELECT INSERT UPDATE"),
    "task_logs": _operated(service="SELECT INSERT"),
    "outbox": _operated(OPERATORS, CREATORS, service="SELECT INSERT UPDATE DELETE"),
    "dead_letters": _operated(OPERATORS, service="SELECT INSERT"),
    "api_tokens": _operated(ADMIN, ADMIN, ADMIN),
    "audit_log": {SEL: ADMIN, INS: READERS | {"agent"}, UPD: set(), DEL: set(), "service": {INS}},
    "spans": {SEL: READERS, INS: {"agent", "admin"}, UPD: ADMIN, DEL: ADMIN, "service": {SEL, INS, DEL}},
    "rca_memory": _operated(service="SELECT INSERT"),
    "incidents": _operated(service="SELECT INSERT UPDATE"),
    "incident_anomalies": _operated(service="SELECT INSERT UPDATE"),
    "incident_silences": _operated(service="SELECT INSERT"),
    "maintenance_windows": _operated(service="SELECT"),
    "aiops_series_state": _operated(service="SELECT INSERT UPDATE DELETE"),
    "aiops_progress": _operated(service="SELECT INSERT UPDATE"),
    "rca_results": _operated(service="SELECT INSERT UPDATE"),
    "rca_calibration_samples": _operated(service="SELECT INSERT"),
    "changes": _operated(create=CREATORS, service="SELECT"),
    "signing_keys": _operated(ADMIN, ADMIN, ADMIN, service="SELECT INSERT"),
    "agent_keys": _operated(ADMIN, ADMIN, ADMIN),
    "installation": _operated(create=ADMIN, change=ADMIN, service="SELECT"),
    "approvals": _operated(service="SELECT INSERT UPDATE"),
    "approval_decisions": _operated(service="SELECT INSERT"),
    "remediations": _operated(service="SELECT INSERT UPDATE"),
    "remediation_steps": _operated(service="SELECT INSERT"),
    "remediation_control": _operated(create=ADMIN, change=ADMIN, service="SELECT INSERT UPDATE"),
    "workflows": _operated(service="SELECT"),
    # a run started by ci is moved on by the engine in ci's own request
    "workflow_runs": {**_operated(create=CREATORS, service="SELECT INSERT UPDATE"), UPD: CREATORS},
    "run_steps": {**_operated(create=CREATORS, service="SELECT INSERT UPDATE"), UPD: CREATORS},
    "run_transitions": _operated(create=CREATORS, service="SELECT INSERT"),
    "workflow_schedules": _operated(service="SELECT UPDATE"),
    "notify_subjects": _operated(service="SELECT INSERT UPDATE"),
    "telegram_messages": _operated(service="SELECT INSERT UPDATE"),
    "telegram_notes": _operated(service="SELECT INSERT"),
    "telegram_callbacks": _operated(OPERATORS, service="SELECT INSERT UPDATE"),
    "telegram_updates": _operated(OPERATORS, service="SELECT INSERT"),
    "telegram_poll_offset": _operated(OPERATORS, ADMIN, ADMIN, service="SELECT INSERT UPDATE"),
    "webhook_deliveries": _operated(service="SELECT INSERT UPDATE"),
    "github_deliveries": _operated(create=ADMIN, change=ADMIN, service="SELECT INSERT UPDATE"),
    "github_pulls": _operated(create=ADMIN, change=ADMIN, service="SELECT INSERT UPDATE"),
    "github_checks": _operated(create=ADMIN, change=ADMIN, service="SELECT INSERT UPDATE"),
    "github_review_comments": _operated(create=ADMIN, change=ADMIN, service="SELECT INSERT"),
    "console_sessions": _operated(ADMIN, ADMIN, ADMIN),
}

CLAIM_ROLES = ("viewer", "ci", "supervisor", "admin", "agent")
IDENTITIES = (*CLAIM_ROLES, "devart_service", "no claims", "anon", "devart_app")

_SAMPLE = {"text": "'x'", "uuid": "gen_random_uuid()", "integer": "1", "bigint": "1", "smallint": "1",
           "boolean": "true", "double precision": "1", "real": "1", "jsonb": "'{}'", "json": "'{}'",
           "bytea": "'\\x00'", "timestamp with time zone": "now()", "interval": "'1 second'", "date": "now()",
           "numeric": "1", "text[]": "'{}'", "inet": "'127.0.0.1'"}

_TABLE = {"incident_silences": {"service": "'x'"}, "approvals": {"approver_roles": "'{admin}'"}, "rca_calibration_samples": {"features": "'{1,2,3,4}'"},
          "maintenance_windows": {"starts_at": "now()", "ends_at": "now() + interval '1 hour'"}}
_COLUMN = {"trace_id": "decode(repeat('ab', 16), 'hex')", "span_id": "decode(repeat('cd', 8), 'hex')"}


async def _seed(conn: asyncpg.Connection, table: str) -> None:
    """One row in ``table``: a value for every column without a default (foreign keys are not
    checked while seeding), the first value a CHECK (col IN ...) allows."""
    if await conn.fetchval(f"SELECT count(*) FROM {table}"):
        return
    columns = await conn.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a
           WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
             AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''""", table)
    checks = " ".join(await conn.fetchval(
        "SELECT coalesce(array_agg(pg_get_constraintdef(oid)), '{}') FROM pg_constraint WHERE conrelid = $1::regclass "
        "AND contype = 'c'", table))
    given = _TABLE.get(table, {})
    names, values = list(given), list(given.values())
    for column in columns:
        name, kind = column["attname"], column["type"]
        if name in given:
            continue
        allowed = re.search(rf"\(?{name}\)? = ANY \(+ARRAY\['([^']*)'", checks)
        if name in _COLUMN:
            value = _COLUMN[name]
        elif allowed:
            value = f"'{allowed[1]}'"
        elif kind.startswith("vector"):
            value = "'[" + ",".join(["0"] * int(kind[7:-1])) + "]'"
        else:
            value = _SAMPLE[kind]
        names.append(f'"{name}"')
        values.append(value)
    sql = (f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(values)})" if names
           else f"INSERT INTO {table} DEFAULT VALUES")
    await conn.execute(sql)


async def _become(conn: asyncpg.Connection, identity: str) -> None:
    if identity in CLAIM_ROLES:
        claims = {"sub": str(uuid.uuid4()), "role": "authenticated", "app_metadata": {"devart_role": identity}}
        await conn.execute("SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)",
                           json.dumps(claims))
    elif identity == "no claims":
        await conn.execute("SET LOCAL ROLE authenticated")
    else:
        await conn.execute(f"SET LOCAL ROLE {identity}")


async def _allowed(conn: asyncpg.Connection, identity: str, table: str, command: str) -> bool:
    column = await conn.fetchval(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attidentity = '' AND attgenerated = '' ORDER BY attnum LIMIT 1", table)
    statement = {
        SEL: f"SELECT count(*) FROM {table}",
        INS: f"INSERT INTO {table} DEFAULT VALUES",
        UPD: f'UPDATE {table} SET "{column}" = "{column}"',
        DEL: f"DELETE FROM {table}",
    }[command]
    attempt = conn.transaction()
    await attempt.start()
    try:
        await _become(conn, identity)
        if command == SEL:
            return bool(await conn.fetchval(statement))
        status = await conn.execute(statement)
        return command == INS or not status.endswith(" 0")  # the seeded row was visible to it
    except asyncpg.InsufficientPrivilegeError:  # no grant, or a policy's WITH CHECK refused the row
        return False
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
        return True  # past row-level security: the row itself was incomplete or still referenced
    finally:
        await attempt.rollback()  # every attempt leaves the seeded rows as they were


@pytest.fixture(params=["pgserver", "supabase"])
async def matrix_database(
    request: pytest.FixtureRequest, database_url: str, supabase_postgres: SupabaseShapedPostgres
) -> AsyncIterator[str]:
    """A superuser's URL of a migrated database: pgserver's, then a Supabase-shaped one migrated by
    Supabase's postgres role (tests/support/supabase_shape.py), so the matrix holds on both."""
    if request.param == "pgserver":
        yield database_url
        return
    name = await supabase_postgres.create_migrated_database()
    yield supabase_postgres.uri(name, user="postgres")
    await supabase_postgres.drop_database(name)


@pytest.fixture
async def seeded(matrix_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(matrix_database)
    await conn.execute("SET session_replication_role = replica")
    for table in EXPECTED:
        await _seed(conn, table)
    await conn.execute("RESET session_replication_role")
    yield conn
    await conn.close()


async def test_the_matrix_covers_every_table(seeded: asyncpg.Connection) -> None:
    tables = {r["relname"] for r in await seeded.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')")}
    assert tables == set(EXPECTED), "add the new table to EXPECTED (and its devart_secure_table call)"


async def test_each_identity_on_each_table_and_command(seeded: asyncpg.Connection) -> None:
    wrong = []
    for table, rules in EXPECTED.items():
        for identity in IDENTITIES:
            for command in (SEL, INS, UPD, DEL):
                if identity in CLAIM_ROLES:
                    expected = identity in rules[command]
                else:
                    expected = identity == "devart_service" and command in rules["service"]
                if await _allowed(seeded, identity, table, command) != expected:
                    wrong.append(f"{identity} {command} {table}: {'refused' if expected else 'allowed'}")
    assert not wrong, "\n".join(wrong)


async def test_no_one_but_admins_reads_tokens_or_the_audit_log_and_no_one_rewrites_it(
    seeded: asyncpg.Connection,
) -> None:
    for identity in IDENTITIES:
        for table in ("api_tokens", "audit_log"):
            assert await _allowed(seeded, identity, table, SEL) == (identity == "admin"), (identity, table)
        for command in (UPD, DEL):
            assert not await _allowed(seeded, identity, "audit_log", command), (identity, command)
