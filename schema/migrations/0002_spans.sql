-- The built-in span store: finished spans from the OTLP receiver, read by time window or by trace.
CREATE TABLE spans (
    trace_id    bytea NOT NULL CHECK (length(trace_id) = 16),
    span_id     bytea NOT NULL CHECK (length(span_id) = 8),
    parent_id   bytea CHECK (length(parent_id) = 8),
    service     text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL
                CHECK (kind IN ('internal', 'server', 'client', 'producer', 'consumer', 'unspecified')),
    start_ns    bigint NOT NULL,
    end_ns      bigint NOT NULL CHECK (end_ns >= start_ns),
    status      text NOT NULL CHECK (status IN ('unset', 'ok', 'error')),
    attributes  jsonb NOT NULL DEFAULT '{}',
    -- the primary key also serves lookups by trace id (its leading column)
    PRIMARY KEY (trace_id, span_id)
);
-- Spans arrive roughly in start order, so a BRIN index on start time stays tiny and serves window
-- scans and the retention job; per-service windows get a btree.
CREATE INDEX spans_start_brin ON spans USING brin (start_ns) WITH (pages_per_range = 32);
CREATE INDEX spans_service_start ON spans (service, start_ns);
