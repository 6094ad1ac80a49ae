-- An owner that is not a superuser (Supabase's postgres, a CREATEROLE owner on plain Postgres) may
-- switch its own connections to devart_app and devart_service, as the pools do when no
-- DEVART_DB_APP_PASSWORD is set (docs/rls.md); a superuser may already.
DO $grant$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT devart_app, devart_service TO %I', current_user);
    END IF;
END
$grant$;
