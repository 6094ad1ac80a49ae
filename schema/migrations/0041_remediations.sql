-- Guarded remediations: one row per remediation with its pipeline state, an append-only row per
-- step (who or what caused it, why), and the kill switch that stops every apply at once.
CREATE TABLE remediations (
    id               uuid PRIMARY KEY,
    action           text NOT NULL,
    target           text NOT NULL,
    namespace        text NOT NULL DEFAULT '',
    input            jsonb NOT NULL DEFAULT '{}',
    reason           text NOT NULL DEFAULT '',
    incident_id      uuid REFERENCES incidents (id) ON DELETE SET NULL,
    category         text,
    confidence       double precision,
    origin           text NOT NULL CHECK (origin IN ('rca', 'manual', 'escalation')),
    proposed_by      text NOT NULL,
    mode             text NOT NULL CHECK (mode IN ('suggest', 'approve', 'auto')),
    state            text NOT NULL CHECK (state IN (
                         'proposed', 'preflight', 'dry_run', 'awaiting_approval', 'applying', 'verifying',
                         'successful', 'failed', 'inconclusive', 'refused', 'expired', 'error', 'suggested')),
    state_reason     text NOT NULL DEFAULT '',
    preflight        jsonb,
    dry_run          jsonb,
    apply_result     jsonb,
    verification     jsonb NOT NULL DEFAULT '{"points": []}',
    approval_id      text REFERENCES approvals (id),
    warnings         text[] NOT NULL DEFAULT '{}',
    apply_started_at timestamptz,
    applied_at       timestamptz,
    next_at          timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- one proposal per incident and action, however often RCA results are seen
CREATE UNIQUE INDEX remediations_incident_action ON remediations (incident_id, action) WHERE incident_id IS NOT NULL;
CREATE INDEX remediations_created ON remediations (created_at DESC, id DESC);
CREATE INDEX remediations_due ON remediations (next_at)
    WHERE state IN ('proposed', 'preflight', 'dry_run', 'applying', 'verifying');
CREATE INDEX remediations_target ON remediations (action, target, applied_at);

CREATE TABLE remediation_steps (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    remediation_id  uuid NOT NULL REFERENCES remediations (id) ON DELETE CASCADE,
    state           text NOT NULL,
    reason          text NOT NULL DEFAULT '',
    actor           text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX remediation_steps_of ON remediation_steps (remediation_id, id);

-- A single row: the kill switch. Paused, nothing is applied, whatever the policy or approvals say.
CREATE TABLE remediation_control (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    paused      boolean NOT NULL DEFAULT false,
    changed_by  text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    changed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO remediation_control DEFAULT VALUES;

-- Which remediation's verified success resolved an incident (shown with it, fed to the memory).
ALTER TABLE incidents ADD COLUMN resolved_by_remediation uuid;
