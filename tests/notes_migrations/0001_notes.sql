-- The test capability's own table: proves a plugin ships and applies its migrations.
CREATE TABLE test_notes (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (account_id, id)
) WITHOUT ROWID;
