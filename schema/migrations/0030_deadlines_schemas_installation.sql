-- Deadlines that always end a task, input schemas published by agents, and the installation's identity.

-- A task must start within start_timeout_s of being queued (its submission, for the first attempt):
-- start_deadline_at is that moment for the current attempt. deadline_s bounds the whole task from
-- submission (expires_at); NULL means no overall deadline beyond the attempts' own limits.
ALTER TABLE tasks ADD COLUMN start_timeout_s double precision NOT NULL DEFAULT 600 CHECK (start_timeout_s > 0);
ALTER TABLE tasks ADD COLUMN start_deadline_at timestamptz;
ALTER TABLE tasks ADD COLUMN deadline_s double precision CHECK (deadline_s > 0);
ALTER TABLE tasks ADD COLUMN expires_at timestamptz;
UPDATE tasks SET start_deadline_at = created_at + make_interval(secs => start_timeout_s)
    WHERE status IN ('pending', 'queued');
CREATE INDEX tasks_waiting_deadline ON tasks (start_deadline_at) WHERE status IN ('pending', 'queued');
CREATE INDEX tasks_open_expiry ON tasks (expires_at)
    WHERE status IN ('pending', 'queued', 'running') AND expires_at IS NOT NULL;

-- How often the current attempt's message was found missing from its pool queue and published again.
ALTER TABLE attempts ADD COLUMN republished integer NOT NULL DEFAULT 0;

-- The JSON schema of each task type's input, as the pool's agents declared it in their hello.
ALTER TABLE pools ADD COLUMN input_schemas jsonb NOT NULL DEFAULT '{}';

-- One row: this database's identity. With current_database() it derives the default broker prefix,
-- so two installations sharing a broker never see each other's queues.
CREATE TABLE installation (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation DEFAULT VALUES;
