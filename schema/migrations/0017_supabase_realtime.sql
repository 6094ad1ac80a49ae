-- Supabase Realtime (docs/supabase.md). Supabase creates the publication supabase_realtime; plain
-- Postgres and pgserver have none, and there this migration changes nothing. Where it exists,
-- devart_realtime_publish adds the named tables that exist and are not yet in it (a publication FOR
-- ALL TABLES already has them). Realtime sends a row's changes only to subscribers whose claims
-- pass the table's SELECT policy, so a Supabase user sees what they may read through the API.
-- Incidents are published here; an operator may publish more, e.g.
--   SELECT devart_realtime_publish('{approvals,remediations,workflow_runs}');
-- Tasks are left out on purpose: at devart's task rates Realtime would decode and filter every
-- change for every subscriber; devart's own event streams carry them.
CREATE FUNCTION devart_realtime_publish(tables text[]) RETURNS text[] LANGUAGE plpgsql AS $f$
DECLARE
    publication oid;
    all_tables boolean;
    name text;
    added text[] := '{}';
BEGIN
    SELECT oid, puballtables INTO publication, all_tables FROM pg_publication WHERE pubname = 'supabase_realtime';
    IF publication IS NULL OR all_tables THEN
        RETURN added;
    END IF;
    FOREACH name IN ARRAY tables LOOP
        IF to_regclass(name) IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_publication_rel WHERE prpubid = publication AND prrelid = to_regclass(name)
        ) THEN
            EXECUTE format('ALTER PUBLICATION supabase_realtime ADD TABLE %s', to_regclass(name));
            added := added || name;
        END IF;
    END LOOP;
    RETURN added;
END
$f$;
REVOKE EXECUTE ON FUNCTION devart_realtime_publish(text[]) FROM PUBLIC;

SELECT devart_realtime_publish('{incidents}');
