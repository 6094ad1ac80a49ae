-- Supabase's default privileges undone for devart's objects (docs/supabase.md). On Supabase, every
-- table, sequence and function the migrating role (postgres) creates in public is granted to anon,
-- authenticated and service_role. Left alone, that would let the anon key call devart's SECURITY
-- DEFINER functions through Supabase's REST API (POST /rest/v1/rpc/devart_event_key hands out an
-- agent's event key), and let any of the three TRUNCATE any table, the audit log included, since
-- row-level security does not govern TRUNCATE. Elsewhere these roles hold only what migrations grant
-- them, and this migration changes nothing.
--
-- From here on nothing is granted by default; for the tables made before, the request role keeps
-- exactly the commands it has a policy for (what devart_secure_table grants), the owned sequences
-- their USAGE, and the functions no grant to these roles at all.
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON FUNCTIONS FROM anon, authenticated, service_role;

DO $privileges$
DECLARE
    tbl regclass;
    cmd text;
BEGIN
    FOR tbl IN SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') LOOP
        EXECUTE format('REVOKE ALL ON %s FROM anon, authenticated, service_role', tbl);
        FOR cmd IN SELECT DISTINCT CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                                 WHEN 'd' THEN 'DELETE' ELSE 'SELECT, INSERT, UPDATE, DELETE' END
                   FROM pg_policy p WHERE p.polrelid = tbl AND 'authenticated'::regrole::oid = ANY (p.polroles) LOOP
            EXECUTE format('GRANT %s ON %s TO authenticated', cmd, tbl);
        END LOOP;
    END LOOP;
    FOR tbl IN SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S' LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM anon, authenticated, service_role', tbl);
        IF EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = tbl AND d.deptype IN ('a', 'i')) THEN
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO authenticated', tbl);
        END IF;
    END LOOP;
END
$privileges$;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM anon, authenticated, service_role;
