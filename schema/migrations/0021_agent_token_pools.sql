-- Agent tokens scoped to pools (docs/security.md): a token names the pools its agents may register
-- in, and each registration records the pool it was made for, so the events consumer can refuse an
-- agent's events about another pool's attempts. NULL pools: a token that is not scoped (every agent
-- token made before this migration); NULL pool_id: a registration made before it.
ALTER TABLE api_tokens ADD COLUMN pools text[];
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_pools_of_agents CHECK (pools IS NULL OR role = 'agent');
ALTER TABLE agent_keys ADD COLUMN pool_id text;

-- Binds the caller's own registration of ``agent`` (made by devart_register_agent in the same
-- transaction) to ``pool`` when the caller's token may register there. Returns the token's pools
-- and whether it bound; the API refuses (and rolls back) what did not.
CREATE FUNCTION devart_bind_agent_pool(agent text, pool text) RETURNS TABLE (pools text[], bound boolean)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $f$
DECLARE
    scope text[];
BEGIN
    IF (auth.jwt() -> 'app_metadata' ->> 'devart_role') IS DISTINCT FROM 'agent' THEN
        RAISE EXCEPTION 'only an agent token registers agents' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT t.pools INTO scope FROM public.api_tokens t WHERE t.id = auth.uid() AND t.revoked_at IS NULL;
    IF scope IS NOT NULL AND NOT pool = ANY (scope) THEN
        RETURN QUERY SELECT scope, false;
        RETURN;
    END IF;
    UPDATE public.agent_keys k SET pool_id = pool WHERE k.agent_id = agent AND k.token_id = auth.uid();
    RETURN QUERY SELECT scope, FOUND;
END
$f$;

-- The pool a live registration was made for (NULL when unknown, revoked or older than this migration).
CREATE FUNCTION devart_agent_pool(agent text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $f$
    SELECT k.pool_id FROM public.agent_keys k JOIN public.api_tokens t ON t.id = k.token_id
    WHERE k.agent_id = agent AND t.revoked_at IS NULL
$f$;

ALTER FUNCTION devart_bind_agent_pool(text, text) OWNER TO devart_auth;
ALTER FUNCTION devart_agent_pool(text) OWNER TO devart_auth;
REVOKE EXECUTE ON FUNCTION devart_bind_agent_pool(text, text), devart_agent_pool(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION devart_agent_pool(text) TO devart_app, devart_service;
GRANT EXECUTE ON FUNCTION devart_bind_agent_pool(text, text) TO authenticated;
