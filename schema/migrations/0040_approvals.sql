-- Approvals: one object for every "a person must say yes first" (remediations, workflow steps),
-- answered from the API, the console or Telegram. Decisions are append-only, one per principal.
CREATE TABLE approvals (
    id                  text PRIMARY KEY,
    subject_kind        text NOT NULL,
    subject_id          text NOT NULL,
    subject_summary     text NOT NULL DEFAULT '',
    subject_link        text NOT NULL DEFAULT '',
    risk                text NOT NULL CHECK (risk IN ('low', 'medium', 'high', 'critical')),
    approver_roles      text[] NOT NULL DEFAULT '{}',
    approver_principals text[] NOT NULL DEFAULT '{}',
    min_approvals       integer NOT NULL DEFAULT 1 CHECK (min_approvals >= 1),
    prevent_self        boolean NOT NULL DEFAULT true,
    requested_by        text NOT NULL,
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'approved', 'refused', 'expired', 'cancelled')),
    state_reason        text NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    decided_at          timestamptz,
    CHECK (cardinality(approver_roles) + cardinality(approver_principals) > 0),
    CHECK ((state = 'pending') = (decided_at IS NULL))
);
CREATE INDEX approvals_state ON approvals (state, created_at DESC, id DESC);
CREATE INDEX approvals_subject ON approvals (subject_kind, subject_id);
CREATE INDEX approvals_pending_expiry ON approvals (expires_at) WHERE state = 'pending';

CREATE TABLE approval_decisions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    approval_id  text NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
    principal    text NOT NULL,
    role         text NOT NULL,
    decision     text NOT NULL CHECK (decision IN ('approve', 'refuse')),
    via          text NOT NULL CHECK (via IN ('api', 'console', 'telegram')),
    at           timestamptz NOT NULL DEFAULT now(),
    comment      text NOT NULL DEFAULT '',
    UNIQUE (approval_id, principal)
);
