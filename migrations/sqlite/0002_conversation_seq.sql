-- 0002_conversation_seq (SQLite): per-conversation sequence numbers (docs/design/0013).
-- The data plane numbers a conversation's messages from blocks that control reserves here:
-- `next` is the first number never handed out, so numbers never go back across a restart.
-- A stored envelope keeps the number it was sent with (0: a message to one device).

CREATE TABLE conversation_seq (
    conversation_id INTEGER PRIMARY KEY REFERENCES conversations (id),
    next            INTEGER NOT NULL CHECK (next >= 1)
) STRICT;

ALTER TABLE envelopes ADD COLUMN conversation_seq INTEGER NOT NULL DEFAULT 0;
