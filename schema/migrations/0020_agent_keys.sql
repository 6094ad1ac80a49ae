-- Message authentication on the broker (agents.sdk.trust): the control plane's Ed25519 key that
-- signs what it sends to agents, and each registered agent's event key (HMAC-SHA256).
CREATE TABLE signing_keys (
    id           smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    private_key  bytea NOT NULL,
    public_key   bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agent_keys (
    agent_id    text PRIMARY KEY,
    token_id    uuid NOT NULL REFERENCES api_tokens (id),
    event_key   bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_keys_token ON agent_keys (token_id);
