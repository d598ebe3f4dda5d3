-- 0002_conversation_seq (PostgreSQL): per-conversation sequence numbers (docs/design/0013).
-- The same as migrations/sqlite/0002_conversation_seq.sql: `next` is the first number never
-- handed out, so numbers never go back across a restart; a stored envelope keeps the number
-- it was sent with (0: a message to one device).

CREATE TABLE conversation_seq (
    conversation_id BIGINT PRIMARY KEY REFERENCES conversations (id),
    next            BIGINT NOT NULL CHECK (next >= 1)
);

ALTER TABLE envelopes ADD COLUMN conversation_seq BIGINT NOT NULL DEFAULT 0;
