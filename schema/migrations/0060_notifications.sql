-- Notifications: what devart last told the world about each subject, the Telegram messages that show
-- it (the Telegram outbox), the opaque references behind their buttons, and signed webhook deliveries.

-- The last observed facts of each notified subject (incident, approval); a change becomes events.
CREATE TABLE notify_subjects (
    kind        text NOT NULL CHECK (kind IN ('incident', 'approval')),
    subject_id  text NOT NULL,
    facts       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, subject_id)
);

-- One Telegram message per (chat, subject), edited in place. A row is the outbox entry: the sender
-- brings Telegram up to `revision` (sendMessage first, editMessageText after) and records
-- `delivered_revision`; a message Telegram refuses is `rejected` with Telegram's reason.
CREATE TABLE telegram_messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id             bigint NOT NULL,
    thread_id           bigint,
    subject_kind        text NOT NULL CHECK (subject_kind IN ('incident', 'approval', 'digest')),
    subject_id          text NOT NULL,
    -- an incident shown as a line of a digest message has no message of its own
    digest_id           bigint REFERENCES telegram_messages (id),
    text                text NOT NULL,
    reply_markup        jsonb,
    quiet               boolean NOT NULL DEFAULT false,
    revision            integer NOT NULL DEFAULT 1,
    delivered_revision  integer NOT NULL DEFAULT 0,
    message_id          bigint,
    state               text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'rejected')),
    attempts            integer NOT NULL DEFAULT 0,
    available_at        timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    -- what Telegram shows now: an edit that changes only the buttons uses editMessageReplyMarkup
    sent_text           text,
    sent_markup         jsonb,
    UNIQUE (chat_id, subject_kind, subject_id),
    CHECK (delivered_revision <= revision)
);
CREATE INDEX telegram_messages_due ON telegram_messages (available_at, id)
    WHERE revision > delivered_revision AND state <> 'rejected' AND digest_id IS NULL;
CREATE INDEX telegram_messages_chat_recent ON telegram_messages (chat_id, created_at DESC);

-- Lines added to a message by what people did from it ("approved by @ana at 12:03 UTC").
CREATE TABLE telegram_notes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_row  bigint NOT NULL REFERENCES telegram_messages (id) ON DELETE CASCADE,
    note         text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX telegram_notes_message ON telegram_notes (message_row, id);

-- What a button means. callback_data carries only `ref`; the action lives here, used once, expiring.
CREATE TABLE telegram_callbacks (
    ref           text PRIMARY KEY,
    message_row   bigint NOT NULL REFERENCES telegram_messages (id) ON DELETE CASCADE,
    action        text NOT NULL CHECK (action IN ('approve', 'refuse', 'acknowledge', 'silence')),
    subject_kind  text NOT NULL CHECK (subject_kind IN ('incident', 'approval')),
    subject_id    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    used_by       text
);
CREATE INDEX telegram_callbacks_message ON telegram_callbacks (message_row);

-- Updates already handled (webhook retries and replays are answered without acting twice), and the
-- long-polling offset.
CREATE TABLE telegram_updates (
    update_id    bigint PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX telegram_updates_received ON telegram_updates (received_at);

CREATE TABLE telegram_poll_offset (
    bot_id      bigint PRIMARY KEY,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Outgoing webhook deliveries: the exact signed body, retried with backoff until delivered or failed.
CREATE TABLE webhook_deliveries (
    id            uuid PRIMARY KEY,
    webhook       text NOT NULL,
    url           text NOT NULL,
    event         text NOT NULL,
    body          text NOT NULL,
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    available_at  timestamptz NOT NULL DEFAULT now(),
    last_status   integer,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (available_at) WHERE state = 'pending';
