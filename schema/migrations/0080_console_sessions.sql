-- Console sessions: a supervisor signs in with an API token and gets a session cookie. Only the
-- SHA-256 digest of the session id is stored; a session dies when it is signed out, when it expires
-- or when its token is revoked (the lookup joins the live token).
CREATE TABLE console_sessions (
    id_hash      text PRIMARY KEY,
    token_id     uuid NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    remote       text NOT NULL DEFAULT ''
);
CREATE INDEX console_sessions_token ON console_sessions (token_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at) WHERE revoked_at IS NULL;
