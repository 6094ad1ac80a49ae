-- GitHub: every webhook delivery received (the inbox the delivery processor works through), the
-- check run of each workflow run a delivery started (the reporting outbox), each pull request's one
-- summary comment and merge decision, and the inline review comments already posted.

-- One row per X-GitHub-Delivery id: stored by the webhook endpoint before it answers 202, worked
-- through by the delivery processor in one transaction that also starts the runs (exactly once).
CREATE TABLE github_deliveries (
    delivery_id      text PRIMARY KEY,
    event            text NOT NULL,
    action           text,
    repo             text,
    installation_id  bigint,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'received' CHECK (state IN ('received', 'done')),
    outcome          text NOT NULL DEFAULT '',
    runs             uuid[] NOT NULL DEFAULT '{}',
    duplicates       integer NOT NULL DEFAULT 0,
    received_at      timestamptz NOT NULL DEFAULT now(),
    last_received_at timestamptz NOT NULL DEFAULT now(),
    processed_at     timestamptz
);
CREATE INDEX github_deliveries_due ON github_deliveries (received_at) WHERE state = 'received';
CREATE INDEX github_deliveries_recent ON github_deliveries (received_at DESC);

-- One pull request (or pushed branch) devart reports on: its one summary comment, edited in place
-- (`revision` > `delivered_revision` means GitHub is behind), and the auto-merge gate's state.
CREATE TABLE github_pulls (
    repo                text NOT NULL,
    number              integer NOT NULL,
    installation_id     bigint,
    head_sha            text NOT NULL,
    comment_id          bigint,
    revision            integer NOT NULL DEFAULT 1,
    delivered_revision  integer NOT NULL DEFAULT 0,
    merge_due           boolean NOT NULL DEFAULT false,
    merge_state         text NOT NULL DEFAULT 'none' CHECK (merge_state IN ('none', 'refused', 'merged', 'error')),
    merge_reason        text NOT NULL DEFAULT '',
    merged_sha          text,
    attempts            integer NOT NULL DEFAULT 0,
    available_at        timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repo, number),
    CHECK (delivered_revision <= revision)
);
CREATE INDEX github_pulls_due ON github_pulls (available_at) WHERE revision > delivered_revision OR merge_due;

-- One check run per workflow run, brought up to `revision` by the reporter (queued -> in_progress
-- -> completed). `annotations_sent` counts the findings already sent, so batches resume.
CREATE TABLE github_checks (
    run_id              uuid PRIMARY KEY REFERENCES workflow_runs (id) ON DELETE CASCADE,
    delivery_id         text NOT NULL REFERENCES github_deliveries (delivery_id),
    repo                text NOT NULL,
    number              integer,
    installation_id     bigint,
    head_sha            text NOT NULL,
    name                text NOT NULL,
    check_run_id        bigint,
    status              text NOT NULL DEFAULT 'none',
    revision            integer NOT NULL DEFAULT 1,
    delivered_revision  integer NOT NULL DEFAULT 0,
    annotations_sent    integer NOT NULL DEFAULT 0,
    reviewed            boolean NOT NULL DEFAULT false,
    state               text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'rejected')),
    attempts            integer NOT NULL DEFAULT 0,
    available_at        timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (repo, number) REFERENCES github_pulls (repo, number),
    CHECK (delivered_revision <= revision)
);
CREATE INDEX github_checks_due ON github_checks (available_at)
    WHERE revision > delivered_revision AND state <> 'rejected';
CREATE INDEX github_checks_pull ON github_checks (repo, number, created_at DESC);
CREATE INDEX github_checks_check_run ON github_checks (repo, check_run_id);

-- Inline review comments already posted on a pull request, by (path, line, rule, message hash):
-- the same finding on a later push is not posted again.
CREATE TABLE github_review_comments (
    repo         text NOT NULL,
    number       integer NOT NULL,
    fingerprint  text NOT NULL,
    run_id       uuid NOT NULL,
    path         text NOT NULL,
    line         integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repo, number, fingerprint)
);

-- A run's change (its own or a step's) makes its check run and its pull request's comment due, in
-- the transaction of the change; the reporter wakes on `devart_github`. The function runs as
-- devart_service, so whoever's change it is (an agent event, a supervisor's cancel) reaches GitHub.
CREATE FUNCTION devart_github_run_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    pull record;
BEGIN
    UPDATE public.github_checks SET revision = revision + 1, available_at = least(available_at, now())
        WHERE run_id = NEW.run_id RETURNING repo, number INTO pull;
    IF FOUND THEN
        UPDATE public.github_pulls SET revision = revision + 1, available_at = least(available_at, now()),
                                       merge_due = merge_due OR NEW.job IS NULL AND NEW.to_state = 'succeeded'
            WHERE repo = pull.repo AND number = pull.number;
        PERFORM pg_notify('devart_github', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER run_transitions_github AFTER INSERT ON run_transitions
    FOR EACH ROW EXECUTE FUNCTION devart_github_run_changed();

-- Row-level security (0010_roles.sql): people read what devart did on GitHub, only admins change it
-- by hand; the webhook endpoint, the delivery processor and the reporter work as devart_service.
SELECT devart_secure_table('github_deliveries', '{supervisor,admin}', '{admin}', '{admin}', '{admin}',
                           '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('github_pulls', '{viewer,ci,supervisor,admin}', '{admin}', '{admin}', '{admin}',
                           '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('github_checks', '{viewer,ci,supervisor,admin}', '{admin}', '{admin}', '{admin}',
                           '{SELECT,INSERT,UPDATE}');
SELECT devart_secure_table('github_review_comments', '{viewer,ci,supervisor,admin}', '{admin}', '{admin}', '{admin}',
                           '{SELECT,INSERT}');
ALTER FUNCTION devart_github_run_changed() OWNER TO devart_service;
REVOKE EXECUTE ON FUNCTION devart_github_run_changed() FROM PUBLIC;
