-- Row-level security on the tables of migrations 0020-0060, and the agent-key functions.
-- Same roles and argument order as 0011_rls_core.sql (docs/rls.md).

SELECT devart_secure_table('signing_keys', '{admin}', '{admin}', '{admin}', '{admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('agent_keys', '{admin}', '{admin}', '{admin}', '{admin}', '{}');
SELECT devart_secure_table('installation', '{viewer,ci,supervisor,admin}', '{admin}', '{admin}', '{admin}', '{SELECT}');

SELECT devart_secure_table('approvals', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('approval_decisions', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('remediations', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('remediation_steps', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('remediation_control', '{viewer,ci,supervisor,admin}', '{admin}', '{admin}', '{admin}',
                           '{SELECT,INSERT,UPDATE}');

SELECT devart_secure_table('workflows', '{viewer,ci,supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT}');
SELECT devart_secure_table('workflow_runs', '{viewer,ci,supervisor,admin}', '{ci,supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('run_steps', '{viewer,ci,supervisor,admin}', '{ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('run_transitions', '{viewer,ci,supervisor,admin}', '{ci,supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('workflow_schedules', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,UPDATE}');

SELECT devart_secure_table('notify_subjects', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('telegram_messages', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('telegram_notes', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('telegram_callbacks', '{supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('telegram_updates', '{supervisor,admin}', '{supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{SELECT,INSERT}');
SELECT devart_secure_table('telegram_poll_offset', '{supervisor,admin}', '{admin}', '{admin}', '{admin}',
                           '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('webhook_deliveries', '{viewer,ci,supervisor,admin}', '{supervisor,admin}',
                           '{supervisor,admin}', '{supervisor,admin}', '{SELECT,INSERT,UPDATE}');

-- Agents' event keys, read and written only through these (owned by devart_auth): the events consumer
-- looks up one agent's key; an agent token registers an id for itself (the caller's token is the
-- claims' sub), never one another token holds.
GRANT SELECT, INSERT, UPDATE ON agent_keys TO devart_auth;
CREATE POLICY agent_keys_auth_select ON agent_keys FOR SELECT TO devart_auth USING (true);
CREATE POLICY agent_keys_auth_insert ON agent_keys FOR INSERT TO devart_auth WITH CHECK (true);
CREATE POLICY agent_keys_auth_update ON agent_keys FOR UPDATE TO devart_auth USING (true) WITH CHECK (true);

CREATE FUNCTION devart_event_key(agent text) RETURNS bytea
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $f$
    SELECT k.event_key FROM public.agent_keys k JOIN public.api_tokens t ON t.id = k.token_id
    WHERE k.agent_id = agent AND t.revoked_at IS NULL
$f$;

-- NULL when the id belongs to another token; refused outright unless the caller is an agent token.
CREATE FUNCTION devart_register_agent(agent text, key bytea) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $f$
DECLARE
    owner uuid;
BEGIN
    IF (auth.jwt() -> 'app_metadata' ->> 'devart_role') IS DISTINCT FROM 'agent' THEN
        RAISE EXCEPTION 'only an agent token registers agents' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO public.agent_keys (agent_id, token_id, event_key) VALUES (agent, auth.uid(), key)
    ON CONFLICT (agent_id) DO UPDATE SET event_key = EXCLUDED.event_key, created_at = now()
        WHERE agent_keys.token_id = EXCLUDED.token_id
    RETURNING token_id INTO owner;
    RETURN owner;
END
$f$;

ALTER FUNCTION devart_event_key(text) OWNER TO devart_auth;
ALTER FUNCTION devart_register_agent(text, bytea) OWNER TO devart_auth;
REVOKE EXECUTE ON FUNCTION devart_event_key(text), devart_register_agent(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION devart_event_key(text) TO devart_app, devart_service;
GRANT EXECUTE ON FUNCTION devart_register_agent(text, bytea) TO authenticated;
