-- Row-level security on console_sessions (docs/rls.md), and the functions the console reaches it
-- through. A session is looked up before anyone is known, like a token: the functions are owned by
-- devart_auth and tell about the one session whose id the caller holds, never the table. Admins may
-- read and manage the table itself, as they do api_tokens.
SELECT devart_secure_table('console_sessions', '{admin}', '{admin}', '{admin}', '{admin}', '{}');

GRANT SELECT, INSERT, UPDATE (revoked_at) ON console_sessions TO devart_auth;
CREATE POLICY console_sessions_auth_select ON console_sessions FOR SELECT TO devart_auth USING (true);
CREATE POLICY console_sessions_auth_insert ON console_sessions FOR INSERT TO devart_auth WITH CHECK (true);
CREATE POLICY console_sessions_auth_update ON console_sessions FOR UPDATE TO devart_auth USING (true) WITH CHECK (true);

CREATE FUNCTION devart_console_open(digest text, token uuid, ttl_s double precision, from_remote text) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $f$
    INSERT INTO public.console_sessions (id_hash, token_id, expires_at, remote)
    VALUES (digest, token, now() + make_interval(secs => ttl_s), from_remote)
$f$;

CREATE FUNCTION devart_console_session(digest text) RETURNS TABLE (id uuid, name text, role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $f$
    SELECT t.id, t.name, t.role FROM public.console_sessions s JOIN public.api_tokens t ON t.id = s.token_id
    WHERE s.id_hash = digest AND s.revoked_at IS NULL AND s.expires_at > now() AND t.revoked_at IS NULL
$f$;

CREATE FUNCTION devart_console_close(digest text) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $f$
    WITH closed AS (
        UPDATE public.console_sessions SET revoked_at = now() WHERE id_hash = digest AND revoked_at IS NULL
        RETURNING 1)
    SELECT count(*) > 0 FROM closed
$f$;

ALTER FUNCTION devart_console_open(text, uuid, double precision, text) OWNER TO devart_auth;
ALTER FUNCTION devart_console_session(text) OWNER TO devart_auth;
ALTER FUNCTION devart_console_close(text) OWNER TO devart_auth;
REVOKE EXECUTE ON FUNCTION devart_console_open(text, uuid, double precision, text), devart_console_session(text),
    devart_console_close(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION devart_console_open(text, uuid, double precision, text), devart_console_session(text),
    devart_console_close(text) TO devart_app, devart_service;
