"""The migrations, unchanged, on a database shaped as Supabase makes one (tests/support/supabase_shape.py)
as well as on pgserver: applied by Supabase's non-superuser postgres role, leaving Supabase's auth
schema alone, touching supabase_realtime only where it exists, granting anon, authenticated and
service_role the same on both, and policies that behave the same under PostgREST's way of setting
claims as under devart's."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from schema.runner import available, migrate
from tests.support.supabase_shape import SupabaseShapedPostgres

SUPABASE_ROLES = ("anon", "authenticated", "service_role")


@pytest.fixture
async def supabase_database(supabase_postgres: SupabaseShapedPostgres) -> AsyncIterator[str]:
    """A new Supabase-shaped project database with Realtime's publication, migrated as its postgres role."""
    name = await supabase_postgres.create_migrated_database()
    yield name
    await supabase_postgres.drop_database(name)


async def _privileges(conn: asyncpg.Connection) -> set[tuple[str, str, str]]:
    """(role, object, privilege) for the three Supabase roles on everything in public."""
    rows = await conn.fetch(
        """SELECT r.role, c.relname AS object, p.privilege
           FROM unnest($1::text[]) r (role)
           CROSS JOIN pg_class c
           CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p (privilege)
           WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
             AND has_table_privilege(r.role, c.oid, p.privilege)
           UNION ALL
           SELECT r.role, f.oid::regprocedure::text, 'EXECUTE' FROM unnest($1::text[]) r (role)
           CROSS JOIN pg_proc f WHERE f.pronamespace = 'public'::regnamespace AND f.prosecdef
             AND has_function_privilege(r.role, f.oid, 'EXECUTE')""",
        list(SUPABASE_ROLES),
    )
    return {(r["role"], r["object"], r["privilege"]) for r in rows}


async def test_migrations_apply_as_supabases_postgres_role_with_and_without_realtime(
    supabase_postgres: SupabaseShapedPostgres,
) -> None:
    for realtime in (True, False):
        name = await supabase_postgres.create_database(realtime=realtime)
        conn = await asyncpg.connect(supabase_postgres.uri(name))
        try:
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            applied = await migrate(conn)
            assert [m.version for m in applied] == [m.version for m in available()]
            published = await conn.fetch("SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'")
            publications = await conn.fetchval("SELECT count(*) FROM pg_publication")
            if realtime:
                assert {r["tablename"] for r in published} == {"incidents"}  # tasks stay on devart's own streams
                assert await conn.fetchval("SELECT devart_realtime_publish('{approvals,incidents,no_such_table}')") \
                    == ["approvals"]
                assert {r["tablename"] for r in await conn.fetch(
                    "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'")} \
                    == {"incidents", "approvals"}
            else:
                assert publications == 0  # none was created
                assert await conn.fetchval("SELECT devart_realtime_publish('{approvals}')") == []
        finally:
            await conn.close()
            await supabase_postgres.drop_database(name)


async def test_a_publication_for_all_tables_is_left_as_it_is(supabase_postgres: SupabaseShapedPostgres) -> None:
    name = await supabase_postgres.create_database(realtime=False)
    conn = await asyncpg.connect(supabase_postgres.uri(name, user="postgres"))  # FOR ALL TABLES needs a superuser
    try:
        await conn.execute("CREATE PUBLICATION supabase_realtime FOR ALL TABLES")
    finally:
        await conn.close()
    conn = await asyncpg.connect(supabase_postgres.uri(name))
    try:
        await migrate(conn)
        assert await conn.fetchval("SELECT puballtables FROM pg_publication WHERE pubname = 'supabase_realtime'")
    finally:
        await conn.close()
        await supabase_postgres.drop_database(name)


async def test_pgserver_has_no_publication(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_publication") == 0
        assert await conn.fetchval("SELECT devart_realtime_publish('{incidents}')") == []
    finally:
        await conn.close()


async def test_supabases_auth_schema_is_left_alone(
    supabase_postgres: SupabaseShapedPostgres, supabase_database: str,
) -> None:
    conn = await asyncpg.connect(supabase_postgres.uri(supabase_database))
    try:
        into_auth = await conn.fetch(
            """SELECT conrelid::regclass::text AS tbl, conname FROM pg_constraint
               WHERE contype = 'f' AND confrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'auth'::regnamespace)""")
        assert into_auth == []
        views = await conn.fetch(
            """SELECT DISTINCT r.ev_class::regclass::text AS view FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
               WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = 'auth.users'::regclass""")
        assert views == [], "a view of devart's reads auth.users"
        functions = await conn.fetch(
            "SELECT proname, pg_get_userbyid(proowner) AS owner FROM pg_proc WHERE pronamespace = 'auth'::regnamespace")
        assert {(f["proname"], f["owner"]) for f in functions} == {
            (n, "supabase_auth_admin") for n in ("uid", "role", "email", "jwt")}
        assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass") == 0
    finally:
        await conn.close()


async def test_supabase_roles_get_what_they_get_on_plain_postgres(
    supabase_postgres: SupabaseShapedPostgres, supabase_database: str, database_url: str,
) -> None:
    """Supabase grants its roles everything its postgres role creates; after the migrations they hold
    exactly what they hold on pgserver: policies' commands for authenticated, nothing for anon."""
    supabase = await asyncpg.connect(supabase_postgres.uri(supabase_database))
    plain = await asyncpg.connect(database_url)
    try:
        on_supabase, on_plain = await _privileges(supabase), await _privileges(plain)
    finally:
        await supabase.close()
        await plain.close()
    assert on_supabase == on_plain
    assert not {p for p in on_supabase if p[0] in ("anon", "service_role")}
    assert not {p for p in on_supabase if p[2] in ("TRUNCATE", "REFERENCES", "TRIGGER")}
    assert {p[1] for p in on_supabase if p[2] == "EXECUTE"} == {"devart_register_agent(text,bytea)",
                                                              "devart_bind_agent_pool(text,text)"}


async def test_the_anon_key_reaches_no_secret_through_rest_rpc_and_truncates_nothing(
    supabase_postgres: SupabaseShapedPostgres, supabase_database: str,
) -> None:
    """What PostgREST does for a request with the anon key: the authenticator login switches to anon."""
    conn = await asyncpg.connect(supabase_postgres.uri(supabase_database, user="authenticator"))
    try:
        for statement in ("SELECT devart_event_key('any-agent')", "SELECT * FROM devart_token_by_name('admin')",
                          "TRUNCATE audit_log", "SELECT count(*) FROM api_tokens", "DELETE FROM audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('role', 'anon', true), "
                                       "set_config('request.jwt.claims', '{\"role\": \"anon\"}', true)")
                    await conn.execute(statement)
    finally:
        await conn.close()


def _claims(devart_role: str) -> str:
    return json.dumps({"sub": str(uuid.uuid4()), "role": "authenticated", "aud": "authenticated",
                       "app_metadata": {"devart_role": devart_role}, "user_metadata": {"devart_role": "admin"}})


class _RolledBack(Exception):
    """Leaves the database as it was after each probe."""


async def _probe(conn: asyncpg.Connection, become: list[tuple[str, tuple[str, ...]]], statement: str) -> str:
    """``statement`` after the ``become`` queries, in a transaction rolled back after: its status
    (``UPDATE 0`` when row-level security hid every row) or the class of the error that refused it."""
    try:
        async with conn.transaction():
            for query, args in become:
                await conn.execute(query, *args)
            status = await conn.execute(statement)
            raise _RolledBack(status)
    except _RolledBack as done:
        return str(done)
    except asyncpg.PostgresError as exc:
        return type(exc).__name__


def _as_postgrest(claims: str) -> list[tuple[str, tuple[str, ...]]]:
    """How PostgREST starts a request's transaction: role, claims and request settings, transaction-local."""
    return [("SELECT set_config('search_path', 'public, extensions', true), set_config('role', 'authenticated', true), "
             "set_config('request.jwt.claims', $1, true), set_config('request.method', 'POST', true), "
             "set_config('request.path', '/changes', true), set_config('request.headers', '{}', true)", (claims,))]


def _as_devart(claims: str) -> list[tuple[str, tuple[str, ...]]]:
    """How devart's API starts a request's transaction (docs/rls.md), on its devart_app login."""
    return [("SET LOCAL ROLE authenticated", ()), ("SELECT set_config('request.jwt.claims', $1, true)", (claims,))]


PROBES = {
    "record a change": "INSERT INTO changes (id, kind, service, at, recorded_by) "
                       "VALUES (gen_random_uuid(), 'deployment', 'api', now(), 'x')",
    "rewrite changes": "UPDATE changes SET detail = 'rewritten'",
    "delete changes": "DELETE FROM changes",
    "read changes": "SELECT * FROM changes",
    "read tokens": "SELECT * FROM api_tokens",
    "revoke tokens": "UPDATE api_tokens SET revoked_at = now()",
    "append to the audit log": "INSERT INTO audit_log (actor, action) VALUES ('x', 'y')",
    "rewrite the audit log": "UPDATE audit_log SET actor = 'nobody'",
    "read the audit log": "SELECT * FROM audit_log",
}


async def test_policies_behave_alike_under_postgrest_and_under_devart(
    supabase_postgres: SupabaseShapedPostgres, supabase_database: str,
) -> None:
    owner = await asyncpg.connect(supabase_postgres.uri(supabase_database))
    postgrest = await asyncpg.connect(supabase_postgres.uri(supabase_database, user="authenticator"))
    devart = await asyncpg.connect(supabase_postgres.uri(supabase_database, user="devart_app"))
    try:
        await owner.execute("INSERT INTO changes (id, kind, service, at, recorded_by) "
                            "VALUES (gen_random_uuid(), 'deployment', 'checkout', now(), 'seed')")
        await owner.execute("INSERT INTO api_tokens (id, name, role, token_hash) VALUES (gen_random_uuid(), 'a', 'admin', 'h')")
        await owner.execute("INSERT INTO audit_log (actor, action) VALUES ('seed', 'seed')")
        seen: dict[str, dict[str, str]] = {}
        for devart_role in ("viewer", "ci", "supervisor", "admin", "nobody"):
            claims = _claims(devart_role)
            through_postgrest = {n: await _probe(postgrest, _as_postgrest(claims), p) for n, p in PROBES.items()}
            through_devart = {n: await _probe(devart, _as_devart(claims), p) for n, p in PROBES.items()}
            assert through_postgrest == through_devart, devart_role
            seen[devart_role] = through_postgrest
    finally:
        for conn in (owner, postgrest, devart):
            await conn.close()
    refused = "InsufficientPrivilegeError"
    assert seen["viewer"]["record a change"] == refused and seen["ci"]["record a change"] == "INSERT 0 1"
    assert seen["ci"]["rewrite changes"] == "UPDATE 0" and seen["supervisor"]["rewrite changes"] == "UPDATE 1"
    assert [seen[r]["read tokens"] for r in ("viewer", "supervisor", "admin")] == ["SELECT 0", "SELECT 0", "SELECT 1"]
    assert seen["supervisor"]["revoke tokens"] == "UPDATE 0" and seen["admin"]["revoke tokens"] == "UPDATE 1"
    for role, results in seen.items():
        assert results["rewrite the audit log"] == refused, role  # append-only for everyone
        assert results["read the audit log"] == ("SELECT 1" if role == "admin" else "SELECT 0"), role
        # a user_metadata devart_role of admin in every one of these tokens changed nothing
    assert set(seen["nobody"].values()) <= {refused, "SELECT 0", "UPDATE 0", "DELETE 0"}
