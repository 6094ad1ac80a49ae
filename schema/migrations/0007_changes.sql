-- Deployments and configuration edits recorded by CI or operators; RCA correlates them with incidents.
CREATE TABLE changes (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('deployment', 'config', 'task')),
    service      text NOT NULL,
    at           timestamptz NOT NULL,
    detail       text NOT NULL DEFAULT '',
    recorded_by  text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_at ON changes (at DESC, id DESC);
