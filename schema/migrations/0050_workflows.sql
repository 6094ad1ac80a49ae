-- Workflows: versioned definitions, runs advanced by task events, and their append-only history.

CREATE TABLE workflows (
    name        text NOT NULL,
    version     integer NOT NULL CHECK (version > 0),
    document    jsonb NOT NULL,
    digest      text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE workflow_runs (
    id                uuid PRIMARY KEY,
    workflow          text NOT NULL,
    version           integer NOT NULL,
    state             text NOT NULL CHECK (state IN
                      ('queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled')),
    state_reason      text NOT NULL DEFAULT '',
    inputs            jsonb NOT NULL DEFAULT '{}',
    trigger           text NOT NULL CHECK (trigger IN ('api', 'schedule', 'rerun', 'webhook')),
    concurrency_group text,
    rerun_of          uuid REFERENCES workflow_runs (id),
    idempotency_key   text,
    request_hash      text,
    created_by        text NOT NULL,
    traceparent       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (workflow, version) REFERENCES workflows (name, version)
);
CREATE UNIQUE INDEX workflow_runs_idempotency ON workflow_runs (created_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX workflow_runs_created ON workflow_runs (created_at DESC, id DESC);
CREATE INDEX workflow_runs_workflow ON workflow_runs (workflow, created_at DESC, id DESC);
CREATE INDEX workflow_runs_group ON workflow_runs (concurrency_group, created_at)
    WHERE concurrency_group IS NOT NULL AND state IN ('queued', 'running', 'cancelling');

-- One row per job: a step, or one combination of a matrix step.
CREATE TABLE run_steps (
    run_id       uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    job          text NOT NULL,
    step         text NOT NULL,
    phase        text NOT NULL CHECK (phase IN ('main', 'finally')),
    position     integer NOT NULL,
    matrix       jsonb,
    state        text NOT NULL CHECK (state IN ('waiting', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    skip_reason  text,
    reason       text NOT NULL DEFAULT '',
    task_id      uuid REFERENCES tasks (id),
    approval_id  text,
    attempts     integer NOT NULL DEFAULT 0,
    outputs      jsonb,
    reused_from  uuid REFERENCES workflow_runs (id),
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (run_id, job)
);
CREATE INDEX run_steps_task ON run_steps (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX run_steps_approval ON run_steps (approval_id) WHERE approval_id IS NOT NULL;

-- Append-only history of the run (job NULL) and of each job.
CREATE TABLE run_transitions (
    id          bigserial PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    job         text,
    from_state  text,
    to_state    text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    reason      text NOT NULL DEFAULT ''
);
CREATE INDEX run_transitions_run ON run_transitions (run_id, id);

-- Cron triggers: the latest version of a workflow with `on.schedule` has a row here.
CREATE TABLE workflow_schedules (
    workflow    text PRIMARY KEY,
    version     integer NOT NULL,
    cron        text NOT NULL,
    missed      text NOT NULL CHECK (missed IN ('skip', 'run_once', 'run_all')),
    next_at     timestamptz NOT NULL,
    last_at     timestamptz,
    FOREIGN KEY (workflow, version) REFERENCES workflows (name, version)
);
CREATE INDEX workflow_schedules_due ON workflow_schedules (next_at);

CREATE FUNCTION devart_notify_run_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('devart_events', json_build_object(
        'kind', CASE WHEN NEW.job IS NULL THEN 'run' ELSE 'run_step' END, 'run_id', NEW.run_id, 'job', NEW.job,
        'from', NEW.from_state, 'to', NEW.to_state, 'at', NEW.at, 'actor', NEW.actor,
        'reason', left(NEW.reason, 500))::text);
    RETURN NULL;
END $$;
CREATE TRIGGER run_transitions_notify AFTER INSERT ON run_transitions
    FOR EACH ROW EXECUTE FUNCTION devart_notify_run_transition();
