-- An upload belongs to the user who made it: two users of one shared account uploading the same bytes
-- each keep their own upload (expiry, quota, the right to read it), instead of the second taking it over.
CREATE TABLE blob_uploads_new (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    blob_id TEXT NOT NULL REFERENCES blobs(id),
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, blob_id, user_id)
) WITHOUT ROWID;
INSERT INTO blob_uploads_new SELECT account_id, blob_id, user_id, type, size, created_at FROM blob_uploads;
DROP TABLE blob_uploads;
ALTER TABLE blob_uploads_new RENAME TO blob_uploads;
CREATE INDEX blob_uploads_user ON blob_uploads(user_id, created_at);
CREATE INDEX blob_uploads_blob ON blob_uploads(blob_id);
