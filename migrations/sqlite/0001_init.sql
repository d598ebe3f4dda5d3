-- 0001_init (SQLite): the whole control domain of issue 5 in one first schema, so that later
-- work adds queries rather than tables. Ids are BLOBs of fixed length (checked), times are
-- milliseconds since the Unix epoch supplied by the caller (the store reads no clock), and
-- secrets appear only as hashes. Forward-only: a later change is a new file, never an edit.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    handle        TEXT    NOT NULL UNIQUE CHECK (length(handle) BETWEEN 1 AND 64),
    created_at_ms INTEGER NOT NULL
) STRICT;

-- A device is its Noise static key: `id` is the 16-byte device id derived from it.
CREATE TABLE devices (
    id            BLOB    PRIMARY KEY CHECK (length(id) = 16),
    public_key    BLOB    NOT NULL UNIQUE CHECK (length(public_key) = 32),
    user_id       INTEGER NOT NULL REFERENCES users (id),
    name          TEXT    NOT NULL CHECK (length(name) <= 64),
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) STRICT, WITHOUT ROWID;
CREATE INDEX devices_by_user ON devices (user_id);

-- Pairing codes: created by an existing device, claimed once by a new one; only a hash of the
-- code is kept.
CREATE TABLE pairing_codes (
    code_hash          BLOB    PRIMARY KEY CHECK (length(code_hash) = 32),
    user_id            INTEGER NOT NULL REFERENCES users (id),
    created_by_device  BLOB    NOT NULL REFERENCES devices (id),
    created_at_ms      INTEGER NOT NULL,
    expires_at_ms      INTEGER NOT NULL,
    claimed_at_ms      INTEGER,
    claimed_by_device  BLOB    REFERENCES devices (id)
) STRICT, WITHOUT ROWID;
CREATE INDEX pairing_codes_by_expiry ON pairing_codes (expires_at_ms);

-- Friend requests wait for consent; an accepted one becomes a friendship row.
CREATE TABLE friend_requests (
    from_user     INTEGER NOT NULL REFERENCES users (id),
    to_user       INTEGER NOT NULL REFERENCES users (id),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (from_user, to_user),
    CHECK (from_user <> to_user)
) STRICT, WITHOUT ROWID;
CREATE INDEX friend_requests_to ON friend_requests (to_user);

-- One row per pair, the smaller user id first.
CREATE TABLE friendships (
    user_low      INTEGER NOT NULL REFERENCES users (id),
    user_high     INTEGER NOT NULL REFERENCES users (id),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_low, user_high),
    CHECK (user_low < user_high)
) STRICT, WITHOUT ROWID;
CREATE INDEX friendships_high ON friendships (user_high);

-- Server-assigned conversation ids.
CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL CHECK (kind IN ('direct', 'group')),
    title         TEXT    CHECK (title IS NULL OR length(title) <= 128),
    created_by    INTEGER NOT NULL REFERENCES users (id),
    created_at_ms INTEGER NOT NULL
) STRICT;

-- At most one direct conversation per pair of users.
CREATE TABLE direct_conversations (
    user_low        INTEGER NOT NULL REFERENCES users (id),
    user_high       INTEGER NOT NULL REFERENCES users (id),
    conversation_id INTEGER NOT NULL UNIQUE REFERENCES conversations (id),
    PRIMARY KEY (user_low, user_high),
    CHECK (user_low < user_high)
) STRICT, WITHOUT ROWID;

CREATE TABLE conversation_members (
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    user_id         INTEGER NOT NULL REFERENCES users (id),
    role            TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX conversation_members_by_user ON conversation_members (user_id);

-- Bearer session tokens: only the BLAKE2s-256 hash of the random token is stored.
CREATE TABLE session_tokens (
    token_hash    BLOB    PRIMARY KEY CHECK (length(token_hash) = 32),
    device_id     BLOB    NOT NULL REFERENCES devices (id),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) STRICT, WITHOUT ROWID;
CREATE INDEX session_tokens_by_device ON session_tokens (device_id);
CREATE INDEX session_tokens_by_expiry ON session_tokens (expires_at_ms);

-- Offline envelopes. `seq` is the server order: AUTOINCREMENT so that a sequence number is
-- never reused, even after the newest row is deleted. The envelope stores are idempotent per
-- (recipient, message_id). Device ids carry no foreign key: the data plane may hold envelopes
-- for devices the control plane has not seen yet.
-- One index keyed by recipient, not two: its entries carry the rowid (= seq), so a drain in
-- seq order reads the recipient's index range and sorts it (bounded by the inbox bound),
-- while every store dirties one random index page instead of two.
CREATE TABLE envelopes (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient       BLOB    NOT NULL CHECK (length(recipient) = 16),
    message_id      BLOB    NOT NULL CHECK (length(message_id) = 16),
    sender          BLOB    NOT NULL CHECK (length(sender) = 16),
    conversation_id INTEGER,
    sent_at_ms      INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    body            BLOB    NOT NULL
) STRICT;
CREATE UNIQUE INDEX envelopes_by_message ON envelopes (recipient, message_id);
CREATE INDEX envelopes_by_expiry ON envelopes (expires_at_ms);

-- Pending envelopes per recipient, kept in the same transactions as `envelopes`, so that the
-- inbox bound costs one row read per recipient and batch rather than a count.
CREATE TABLE inbox_counts (
    device  BLOB    PRIMARY KEY CHECK (length(device) = 16),
    pending INTEGER NOT NULL CHECK (pending >= 0)
) STRICT, WITHOUT ROWID;
