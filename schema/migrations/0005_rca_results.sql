-- Root cause analysis of each incident: one row per incident, claimed by RCA workers with
-- FOR UPDATE SKIP LOCKED, plus the supervisor's confirmation or correction of the cause.
CREATE TABLE rca_results (
    incident_id         uuid PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'running', 'done', 'failed', 'insufficient_data')),
    -- the RcaResult (status, causes with evidence and recommendations, summary, reason, stats)
    result              jsonb,
    -- the k most similar confirmed past incidents at analysis time
    similar_incidents   jsonb NOT NULL DEFAULT '[]',
    -- the fault-shape signature and its embedding; they enter rca_memory once the cause is confirmed
    signature           text,
    embedding           vector(384),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error          text,
    -- a pending row is claimable from this time on (analysis delay, retry backoff)
    not_before          timestamptz NOT NULL DEFAULT now(),
    -- a running row whose lease has passed belongs to a worker that died: it is claimable again
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    confirmed_service   text,
    confirmed_category  text CHECK (confirmed_category IN (
                            'infrastructure/resource', 'application code', 'dependency',
                            'configuration/deployment change', 'capacity/traffic')),
    resolving_action    text,
    feedback_note       text,
    confirmed_by        text,
    confirmed_at        timestamptz,
    CHECK ((confirmed_service IS NULL) = (confirmed_at IS NULL))
);
CREATE INDEX rca_results_due ON rca_results (not_before) WHERE status = 'pending';
CREATE INDEX rca_results_leased ON rca_results (lease_until) WHERE status = 'running';

-- Labelled outcomes of the confidence calibrator: the ranking features of an incident's top cause
-- and whether the supervisor confirmed it. One row per incident (a later correction replaces it).
CREATE TABLE rca_calibration_samples (
    incident_id         uuid PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
    -- in aiops.rca.calibration.FEATURES order: bias, top_score, margin, agreement
    features            double precision[] NOT NULL CHECK (cardinality(features) = 4),
    predicted_service   text NOT NULL,
    confidence          double precision NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    correct             boolean NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
