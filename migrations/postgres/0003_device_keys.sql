-- 0003_device_keys (PostgreSQL): the end-to-end key directory (docs/design/0014). Each device
-- publishes its Olm identity keys, one fallback key and a bounded pool of signed one-time
-- keys; a claim consumes one one-time key. The server stores public keys only, as the
-- unpadded base64 text the client sent, and never interprets them.

CREATE TABLE device_keys (
    device_id           BYTEA  PRIMARY KEY REFERENCES devices (id) CHECK (length(device_id) = 16),
    curve25519          TEXT   NOT NULL CHECK (length(curve25519) <= 64),
    ed25519             TEXT   NOT NULL CHECK (length(ed25519) <= 64),
    fallback_key_id     TEXT   NOT NULL CHECK (length(fallback_key_id) <= 32),
    fallback_key        TEXT   NOT NULL CHECK (length(fallback_key) <= 64),
    fallback_signature  TEXT   NOT NULL CHECK (length(fallback_signature) <= 128),
    updated_at_ms       BIGINT NOT NULL
);

-- `id` orders the pool: the oldest key is claimed first.
CREATE TABLE one_time_keys (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   BYTEA  NOT NULL REFERENCES device_keys (device_id),
    key_id      TEXT   NOT NULL CHECK (length(key_id) <= 32),
    key         TEXT   NOT NULL CHECK (length(key) <= 64),
    signature   TEXT   NOT NULL CHECK (length(signature) <= 128),
    UNIQUE (device_id, key_id)
);
