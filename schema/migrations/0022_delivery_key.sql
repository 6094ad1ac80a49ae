-- Proof of delivery (docs/security.md): the installation key from which the control plane derives
-- each attempt's delivery secret (HMAC-SHA256 of the task id and attempt). It is kept beside the
-- Ed25519 private key, under the same row-level security. An installation made before this
-- migration gets a key from two random UUIDs (pg_strong_random, 244 random bits); the control
-- plane gives a new installation 32 random bytes.
ALTER TABLE signing_keys ADD COLUMN delivery_key bytea NOT NULL
    DEFAULT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());
ALTER TABLE signing_keys ALTER COLUMN delivery_key DROP DEFAULT;
