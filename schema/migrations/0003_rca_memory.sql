-- Similar-incident memory for RCA: one row per confirmed incident, searchable by cosine distance.
-- incident_id carries no foreign key on purpose: the incidents table arrives in a later migration.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE rca_memory (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id       text NOT NULL,
    signature         text NOT NULL,
    summary           text NOT NULL DEFAULT '',
    cause_service     text NOT NULL,
    category          text NOT NULL CHECK (category IN (
                          'infrastructure/resource', 'application code', 'dependency',
                          'configuration/deployment change', 'capacity/traffic')),
    remediation       text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    embedding         vector(384) NOT NULL
);
CREATE INDEX rca_memory_incident ON rca_memory (incident_id);
CREATE INDEX rca_memory_embedding ON rca_memory USING hnsw (embedding vector_cosine_ops);
