"""A Postgres cluster shaped the way Supabase creates a project's database, for the portability tests.

What is reproduced, because devart's migrations or policies meet it on Supabase:
- the roles: ``supabase_admin`` (the superuser), ``anon``, ``authenticated`` and ``service_role``
  (NOLOGIN NOINHERIT, ``service_role`` BYPASSRLS), ``authenticator`` (PostgREST's login, member of
  the three), ``supabase_auth_admin`` (owns ``auth``); and the role migrations run as, which on
  Supabase is ``postgres``: no superuser, but CREATEROLE, CREATEDB, REPLICATION and BYPASSRLS, owner
  of the database. Here it is named :data:`MIGRATOR`, since pgserver's bootstrap superuser already
  bears the name ``postgres`` and a bootstrap user cannot be made NOSUPERUSER;
- default privileges: every table, sequence and function that role creates in ``public`` is
  granted to anon, authenticated and service_role, so only row-level security keeps anon out;
- the ``auth`` schema with ``auth.users`` and Supabase's ``auth.uid()``, ``auth.role()``,
  ``auth.jwt()``, ``auth.email()`` (owned by ``supabase_auth_admin``; devart must leave them alone);
- the ``extensions`` schema holding ``vector`` (enabled from the dashboard), on the database's
  search path (Supabase's ``pgcrypto`` and ``uuid-ossp`` are left out: pgserver does not ship
  them, and devart uses neither);
- optionally the ``supabase_realtime`` publication, empty and owned by the migrating role.

Roles are cluster-wide, so this is a pgserver cluster of its own, apart from the suite's.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg

from tests.support.services import run_sql

MIGRATOR = "supabase_postgres"
"""Supabase's ``postgres`` role: the one its SQL editor and migrations run as."""

_CLUSTER = f"""
CREATE ROLE supabase_admin LOGIN SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
CREATE ROLE {MIGRATOR} LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
CREATE ROLE supabase_auth_admin LOGIN NOINHERIT CREATEROLE;
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO {MIGRATOR} WITH ADMIN OPTION;
"""

_DATABASE = f"""
CREATE SCHEMA extensions;
CREATE EXTENSION vector WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO {MIGRATOR}, anon, authenticated, service_role;

GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
SET ROLE supabase_auth_admin;
CREATE TABLE auth.users (
    instance_id uuid,
    id uuid PRIMARY KEY,
    aud varchar(255),
    role varchar(255),
    email varchar(255),
    encrypted_password varchar(255),
    email_confirmed_at timestamptz,
    last_sign_in_at timestamptz,
    raw_app_meta_data jsonb,
    raw_user_meta_data jsonb,
    is_super_admin boolean,
    created_at timestamptz,
    updated_at timestamptz,
    phone text UNIQUE,
    is_sso_user boolean NOT NULL DEFAULT false,
    deleted_at timestamptz,
    is_anonymous boolean NOT NULL DEFAULT false
);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
$$;
CREATE FUNCTION auth.email() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.email', true), ''),
                    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email'))::text
$$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                    nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$$;
RESET ROLE;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.email(), auth.jwt() TO anon, authenticated, service_role;
"""


class SupabaseShapedPostgres:
    """A pgserver cluster with Supabase's roles; :meth:`create_database` adds a project database."""

    def __init__(self, root: Path) -> None:
        import pgserver

        self._server = pgserver.get_server(root, cleanup_mode="stop")  # postgres_root removes the directory
        self.superuser_uri = self._server.get_uri()

    def stop(self) -> None:
        self._server.cleanup()

    def uri(self, database: str, user: str = MIGRATOR) -> str:
        """``database`` as ``user`` (the cluster trusts local connections: no passwords here)."""
        return self._server.get_postmaster_info().get_uri(user=user, database=database)

    async def prepare(self) -> None:
        await run_sql(self.superuser_uri, _CLUSTER)

    async def create_database(self, *, realtime: bool = True) -> str:
        """A database shaped as a new Supabase project's, with or without ``supabase_realtime``."""
        name = "sb_" + uuid.uuid4().hex[:12]
        await run_sql(self.superuser_uri, f"CREATE DATABASE {name} OWNER {MIGRATOR}",
                      f'ALTER DATABASE {name} SET search_path TO "$user", public, extensions')
        publication = (f"CREATE PUBLICATION supabase_realtime; ALTER PUBLICATION supabase_realtime OWNER TO {MIGRATOR}",)
        await run_sql(self._server.get_uri(name), _DATABASE, *(publication if realtime else ()))
        return name

    async def create_migrated_database(self, *, realtime: bool = True) -> str:
        """:meth:`create_database`, then devart's migrations applied as Supabase's postgres role."""
        from schema.runner import migrate

        name = await self.create_database(realtime=realtime)
        conn = await asyncpg.connect(self.uri(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        await run_sql(self.superuser_uri, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
