-- The relays are woken only for outbox rows due now. A row written leased to its writer
-- (available_at ahead: the control plane that committed a task publishes its message itself) wakes
-- nobody; if its writer dies before publishing it, the relays' sweep takes it once the lease passed.
CREATE OR REPLACE FUNCTION devart_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE available_at <= now()) THEN
        PERFORM pg_notify('devart_outbox', '');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION devart_notify_outbox();
