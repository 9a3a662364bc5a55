-- Users, accounts, grants and credentials; the change log; blobs.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta VALUES ('seq', 0);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    login TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    -- Bumped on every change to the user's credentials or to the accounts they may use.
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    modseq INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX accounts_owner ON accounts(owner_id);

CREATE TABLE grants (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    may_write INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, account_id)
) WITHOUT ROWID;
CREATE INDEX grants_account ON grants(account_id);

CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('app-password', 'token')),
    label TEXT NOT NULL DEFAULT '',
    secret_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX credentials_user ON credentials(user_id);

-- A type's state string is `modseq`; /changes from below `horizon` cannot be calculated.
-- `seq` orders commits globally so a daemon can find what other processes changed.
CREATE TABLE type_states (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    horizon INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    PRIMARY KEY (account_id, type)
) WITHOUT ROWID;
CREATE INDEX type_states_seq ON type_states(seq);

-- One row per object ever created: the modseq it was created at, of its last change, and of its
-- last change beyond the type's counter properties; destroyed objects keep theirs as a tombstone.
CREATE TABLE changes (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    object_id TEXT NOT NULL,
    created_modseq INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    full_modseq INTEGER NOT NULL,
    destroyed_at INTEGER,
    PRIMARY KEY (account_id, type, object_id)
) WITHOUT ROWID;
CREATE INDEX changes_modseq ON changes(account_id, type, modseq);
CREATE INDEX changes_tombstones ON changes(destroyed_at) WHERE destroyed_at IS NOT NULL;

CREATE TABLE blobs (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- An upload makes a blob readable by the account it was uploaded to, for a limited time.
CREATE TABLE blob_uploads (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    blob_id TEXT NOT NULL REFERENCES blobs(id),
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, blob_id)
) WITHOUT ROWID;
CREATE INDEX blob_uploads_user ON blob_uploads(user_id, created_at);
CREATE INDEX blob_uploads_blob ON blob_uploads(blob_id);

-- An object of an account that holds a blob (an Email and its raw message, say).
CREATE TABLE blob_refs (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    blob_id TEXT NOT NULL REFERENCES blobs(id),
    owner TEXT NOT NULL,
    PRIMARY KEY (account_id, blob_id, owner)
) WITHOUT ROWID;
CREATE INDEX blob_refs_blob ON blob_refs(blob_id);
CREATE INDEX blob_refs_owner ON blob_refs(account_id, owner);
