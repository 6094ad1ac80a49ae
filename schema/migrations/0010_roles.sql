-- Database roles and Supabase's auth functions, the base of row-level security (docs/rls.md).
--
-- Roles are cluster-wide, so each is created only where missing (on Supabase anon, authenticated and
-- service_role exist and are left alone; another database of the same cluster may have made ours),
-- and a concurrent creation by a migration in another database counts as present.
--   anon, authenticated, service_role  Supabase's names. API requests run as authenticated with the
--                                      caller's claims in request.jwt.claims (as PostgREST does).
--   devart_service                     the control plane's background loops (relay, events, reaper,
--                                      AIOps, notifier, workflows): rights granted table by table.
--   devart_app                         the control plane's login: owns nothing, no rights of its own
--                                      (NOINHERIT); it switches to authenticated or devart_service.
--   devart_auth                        owns the SECURITY DEFINER functions that read api_tokens for
--                                      authentication, a table only admins may read.
DO $roles$
DECLARE
    spec record;
BEGIN
    FOR spec IN SELECT * FROM (VALUES
        ('anon', 'NOLOGIN NOINHERIT'),
        ('authenticated', 'NOLOGIN NOINHERIT'),
        ('service_role', 'NOLOGIN NOINHERIT'),
        ('devart_service', 'NOLOGIN NOINHERIT'),
        ('devart_auth', 'NOLOGIN NOINHERIT'),
        ('devart_app', 'LOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE')
    ) AS r (name, options) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = spec.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', spec.name, spec.options);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a migration of another database
            END;
        END IF;
    END LOOP;
END
$roles$;

GRANT authenticated, devart_service TO devart_app;
-- Migrations hand SECURITY DEFINER functions to devart_auth and devart_service (ALTER ... OWNER TO).
-- A superuser may; a migrating role that is not one (Supabase's postgres, a managed database's
-- owner) must be able to SET ROLE to the new owner, which needs CREATE on the schema.
GRANT devart_auth, devart_service TO CURRENT_USER;
GRANT CREATE ON SCHEMA public TO devart_auth, devart_service;
GRANT USAGE ON SCHEMA public TO authenticated, devart_service, devart_auth;

-- Supabase's auth schema functions, created where missing and reading request.jwt.claims the way
-- Supabase's do (the older per-claim settings first), so policies behave alike on both.
CREATE SCHEMA IF NOT EXISTS auth;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, devart_service, devart_auth;

DO $auth$
BEGIN
    IF to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $f$;
    END IF;
    IF to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $f$;
    END IF;
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $f$;
    END IF;
END
$auth$;

-- devart_secure_table: row-level security for one table in one call, the pattern every migration
-- that creates a table follows (tests/test_rls.py fails for a table without it). For each command
-- the claim roles (app_metadata.devart_role) allowed to use it; an empty list leaves that command
-- without a policy, which only the audit log may do. `service` lists the commands devart_service
-- gets. The table's serial and identity sequences are granted to both roles. Each policy reads the claim in a sub-select, so it is evaluated once per statement.
CREATE FUNCTION devart_secure_table(
    tbl regclass, readers text[], creators text[], updaters text[], deleters text[], service text[]
) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
    name text := (SELECT relname FROM pg_class WHERE oid = tbl);
    claim constant text := '(SELECT auth.jwt() -> ''app_metadata'' ->> ''devart_role'')';
    cmd text;
    roles text[];
    seq regclass;
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    FOREACH cmd IN ARRAY ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] LOOP
        roles := CASE cmd WHEN 'SELECT' THEN readers WHEN 'INSERT' THEN creators
                          WHEN 'UPDATE' THEN updaters ELSE deleters END;
        IF cardinality(roles) > 0 THEN
            EXECUTE format('GRANT %s ON %s TO authenticated', cmd, tbl);
            EXECUTE format(
                'CREATE POLICY %I ON %s AS PERMISSIVE FOR %s TO authenticated %s',
                name || '_' || lower(cmd), tbl, cmd,
                CASE cmd
                    WHEN 'INSERT' THEN format('WITH CHECK (%s = ANY (%L::text[]))', claim, roles)
                    WHEN 'UPDATE' THEN format('USING (%s = ANY (%L::text[])) WITH CHECK (%s = ANY (%L::text[]))',
                                              claim, roles, claim, roles)
                    ELSE format('USING (%s = ANY (%L::text[]))', claim, roles)
                END);
        END IF;
        IF cmd = ANY (service) THEN
            EXECUTE format('GRANT %s ON %s TO devart_service', cmd, tbl);
            EXECUTE format(
                'CREATE POLICY %I ON %s AS PERMISSIVE FOR %s TO devart_service %s',
                name || '_service_' || lower(cmd), tbl, cmd,
                CASE cmd WHEN 'INSERT' THEN 'WITH CHECK (true)' WHEN 'UPDATE' THEN 'USING (true) WITH CHECK (true)'
                         ELSE 'USING (true)' END);
        END IF;
    END LOOP;
    FOR seq IN SELECT d.objid::regclass FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
               WHERE d.refobjid = tbl AND d.deptype IN ('a', 'i') LOOP
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO authenticated, devart_service', seq);
    END LOOP;
END
$f$;
REVOKE EXECUTE ON FUNCTION devart_secure_table(regclass, text[], text[], text[], text[], text[]) FROM PUBLIC;

-- Authentication reads api_tokens through these, owned by devart_auth and executable only by the
-- control plane's roles: a caller learns about the one token whose secret it holds, never the table.
GRANT SELECT, UPDATE (last_used_at) ON api_tokens TO devart_auth;

CREATE FUNCTION devart_authenticate(digest text) RETURNS TABLE (id uuid, name text, role text)
    LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $f$
    UPDATE public.api_tokens SET last_used_at = now()
    WHERE token_hash = digest AND revoked_at IS NULL
    RETURNING id, name, role
$f$;

CREATE FUNCTION devart_token_by_name(token_name text) RETURNS TABLE (id uuid, name text, role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $f$
    SELECT id, name, role FROM public.api_tokens WHERE name = token_name AND revoked_at IS NULL
$f$;

CREATE FUNCTION devart_revoked_tokens(ids uuid[]) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $f$
    SELECT id FROM public.api_tokens WHERE id = ANY (ids) AND revoked_at IS NOT NULL
$f$;

ALTER FUNCTION devart_authenticate(text) OWNER TO devart_auth;
ALTER FUNCTION devart_token_by_name(text) OWNER TO devart_auth;
ALTER FUNCTION devart_revoked_tokens(uuid[]) OWNER TO devart_auth;
REVOKE EXECUTE ON FUNCTION devart_authenticate(text), devart_token_by_name(text), devart_revoked_tokens(uuid[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION devart_authenticate(text), devart_token_by_name(text), devart_revoked_tokens(uuid[])
    TO devart_app, devart_service;
