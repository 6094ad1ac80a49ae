-- Core orchestration: agents, pools, tasks and their history, the outbox, tokens and audit.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE pools (
    id          text PRIMARY KEY,
    skills      text[] NOT NULL,
    types       text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    pool_id         text NOT NULL REFERENCES pools (id),
    slots           integer NOT NULL CHECK (slots > 0),
    free_slots      integer NOT NULL DEFAULT 0,
    state           text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'paused', 'draining', 'gone')),
    host            text NOT NULL DEFAULT '',
    pid             integer NOT NULL DEFAULT 0,
    version         text NOT NULL DEFAULT '',
    running         jsonb NOT NULL DEFAULT '[]',
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    last_seq        bigint NOT NULL DEFAULT -1
);
CREATE INDEX agents_pool_live ON agents (pool_id) WHERE state <> 'gone';

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    type             text NOT NULL,
    requires         text[] NOT NULL DEFAULT '{}',
    input            jsonb NOT NULL DEFAULT '{}',
    sandbox          jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN
                     ('pending', 'queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled', 'timed_out')),
    status_reason    text NOT NULL DEFAULT '',
    pool_id          text REFERENCES pools (id),
    agent_id         text,
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts > 0),
    timeout_s        double precision NOT NULL CHECK (timeout_s > 0),
    backoff          jsonb NOT NULL,
    result           jsonb,
    error            jsonb,
    idempotency_key  text,
    request_hash     text,
    created_by       text NOT NULL DEFAULT '',
    trace_id         text,
    traceparent      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    lease_expires_at timestamptz,
    deadline_at      timestamptz
);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_status ON tasks (status, created_at DESC, id DESC);
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_pool_open ON tasks (pool_id) WHERE status IN ('queued', 'running');
CREATE INDEX tasks_pending ON tasks (created_at) WHERE status = 'pending';
CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_agent ON tasks (agent_id) WHERE agent_id IS NOT NULL;

-- Append-only history of every state change.
CREATE TABLE task_transitions (
    id          bigserial PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    from_status text,
    to_status   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    reason      text NOT NULL DEFAULT ''
);
CREATE INDEX task_transitions_task ON task_transitions (task_id, id);

CREATE TABLE attempts (
    task_id      uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    pool_id      text,
    agent_id     text,
    status       text NOT NULL DEFAULT 'queued',
    deliveries   integer NOT NULL DEFAULT 0,
    queued_at    timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    result       jsonb,
    error        jsonb,
    progress     double precision,
    progress_msg text,
    retry_at     timestamptz,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE task_logs (
    task_id  uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt  integer NOT NULL,
    seq      integer NOT NULL,
    ts       timestamptz NOT NULL,
    stream   text NOT NULL,
    line     text NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
);

-- Messages to publish, written in the same transaction as the state change that needs them.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    exchange      text NOT NULL,
    routing_key   text NOT NULL,
    body          bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_available ON outbox (available_at, id);

-- Messages that reached devart.dead without a task we could mark (undecodable bodies).
CREATE TABLE dead_letters (
    id        bigserial PRIMARY KEY,
    task_id   uuid,
    reason    text NOT NULL,
    body      bytea NOT NULL,
    headers   jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    role          text NOT NULL CHECK (role IN ('admin', 'supervisor', 'viewer', 'ci', 'agent')),
    token_hash    text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT '',
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL DEFAULT '',
    detail    jsonb NOT NULL DEFAULT '{}',
    remote    text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- Wake-ups: the relay listens for new outbox rows; the API's event hub for state changes.
CREATE FUNCTION devart_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('devart_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION devart_notify_outbox();

CREATE FUNCTION devart_notify_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('devart_events', json_build_object(
        'kind', 'task', 'task_id', NEW.task_id, 'attempt', NEW.attempt, 'from', NEW.from_status,
        'to', NEW.to_status, 'at', NEW.at, 'actor', NEW.actor, 'reason', left(NEW.reason, 500))::text);
    RETURN NULL;
END $$;
CREATE TRIGGER task_transitions_notify AFTER INSERT ON task_transitions
    FOR EACH ROW EXECUTE FUNCTION devart_notify_transition();
