-- Incidents: anomalies of RED series grouped by call path, their lifecycle, silences, maintenance
-- windows, and the AIOps service's persisted detector state.
CREATE TABLE incidents (
    id              uuid PRIMARY KEY,
    status          text NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    title           text NOT NULL,
    severity        double precision NOT NULL CHECK (severity >= 0 AND severity <= 1),
    services        text[] NOT NULL,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- start of the first anomalous step and end of the last one (null while not resolved), Unix ns
    started_ns      bigint NOT NULL,
    ended_ns        bigint,
    last_anomaly_ns bigint NOT NULL,
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    resolved_by     text,
    CHECK (ended_ns IS NULL OR ended_ns >= started_ns),
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE INDEX incidents_opened ON incidents (opened_at DESC, id DESC);
CREATE INDEX incidents_status ON incidents (status, opened_at DESC, id DESC);
CREATE INDEX incidents_services ON incidents USING gin (services);
CREATE INDEX incidents_unresolved ON incidents (last_anomaly_ns) WHERE status <> 'resolved';

-- One row per fingerprint (service, operation, signal, direction) per incident: repeated alerts of
-- the same fingerprint update this row instead of adding one.
CREATE TABLE incident_anomalies (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id     uuid NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    fingerprint     text NOT NULL,
    service         text NOT NULL,
    operation       text NOT NULL,
    signal          text NOT NULL,
    direction       text NOT NULL CHECK (direction IN ('up', 'down')),
    first_ns        bigint NOT NULL,
    last_ns         bigint NOT NULL CHECK (last_ns >= first_ns),
    peak_score      double precision NOT NULL,
    baseline        double precision,
    peak_value      double precision,
    relative_change double precision,
    active          boolean NOT NULL DEFAULT true,
    calm_steps      integer NOT NULL DEFAULT 0,
    occurrences     integer NOT NULL DEFAULT 1,
    -- recent values of the series around the anomaly: {"timestamps_ns": [...], "values": [...]}
    excerpt         jsonb NOT NULL DEFAULT '{"timestamps_ns": [], "values": []}',
    UNIQUE (incident_id, fingerprint)
);
CREATE INDEX incident_anomalies_active ON incident_anomalies (fingerprint) WHERE active;

CREATE TABLE incident_silences (
    id          uuid PRIMARY KEY,
    service     text,
    operation   text,
    signal      text,
    comment     text NOT NULL DEFAULT '',
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CHECK (service IS NOT NULL OR operation IS NOT NULL OR signal IS NOT NULL)
);
CREATE INDEX incident_silences_expiry ON incident_silences (expires_at);

CREATE TABLE maintenance_windows (
    id          uuid PRIMARY KEY,
    service     text,
    comment     text NOT NULL DEFAULT '',
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at > starts_at)
);
CREATE INDEX maintenance_windows_end ON maintenance_windows (ends_at);

-- The AIOps service's detectors, one row per tracked series, and how far it has processed.
CREATE TABLE aiops_series_state (
    series_key    text PRIMARY KEY,
    state         jsonb NOT NULL,
    last_seen_ns  bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE aiops_progress (
    name          text PRIMARY KEY,
    last_step_ns  bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
