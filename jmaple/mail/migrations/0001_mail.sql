-- The Mail capability (RFC 8621): mailboxes, emails, threads, and what keeps their counts and
-- threading fast. Every table is keyed by account and cascades with it.

-- RFC 8621 §2. The four counts are maintained incrementally by jmaple/mail/storage.py.
CREATE TABLE mailboxes (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    parent_id TEXT,
    role TEXT,
    sort_order INTEGER NOT NULL DEFAULT 0,
    total_emails INTEGER NOT NULL DEFAULT 0,
    unread_emails INTEGER NOT NULL DEFAULT 0,
    total_threads INTEGER NOT NULL DEFAULT 0,
    unread_threads INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, id),
    FOREIGN KEY (account_id, parent_id) REFERENCES mailboxes(account_id, id)
) WITHOUT ROWID;
-- Children of a mailbox, and the rule that siblings have different names (§2).
CREATE UNIQUE INDEX mailboxes_sibling_name ON mailboxes(account_id, coalesce(parent_id, ''), name);
CREATE INDEX mailboxes_parent ON mailboxes(account_id, parent_id);
-- At most one mailbox per role in an account (§2).
CREATE UNIQUE INDEX mailboxes_role ON mailboxes(account_id, role) WHERE role IS NOT NULL;

-- isSubscribed is stored per user (§2): a row means subscribed.
CREATE TABLE mailbox_subscriptions (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    mailbox_id TEXT NOT NULL,
    PRIMARY KEY (user_id, account_id, mailbox_id),
    FOREIGN KEY (account_id, mailbox_id) REFERENCES mailboxes(account_id, id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX mailbox_subscriptions_mailbox ON mailbox_subscriptions(account_id, mailbox_id);

-- RFC 8621 §3. A thread keeps the base subject (RFC 5256 §2.1) its messages share.
CREATE TABLE threads (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    base_subject TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (account_id, id)
) WITHOUT ROWID;

-- Every id named in the Message-ID, In-Reply-To and References of a thread's messages, for
-- threading a new message by lookup; one id may lead to several threads (different subjects).
CREATE TABLE thread_message_ids (
    account_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (account_id, message_id, thread_id),
    FOREIGN KEY (account_id, thread_id) REFERENCES threads(account_id, id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX thread_message_ids_thread ON thread_message_ids(account_id, thread_id);

-- RFC 8621 §4. What queries filter and sort on has a column; what Email/get returns is kept
-- in `parsed` (written once at import) so that no message is parsed again. Dates are Unix seconds.
-- A rowid table: `parsed` makes rows too large for WITHOUT ROWID.
CREATE TABLE emails (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    blob_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    sent_at INTEGER,
    message_id TEXT,
    sort_subject TEXT NOT NULL DEFAULT '',
    sort_from TEXT NOT NULL DEFAULT '',
    sort_to TEXT NOT NULL DEFAULT '',
    has_attachment INTEGER NOT NULL DEFAULT 0,
    preview TEXT NOT NULL DEFAULT '',
    -- neither $seen nor $draft (§2 unreadEmails); kept in step with email_keywords
    is_unread INTEGER NOT NULL DEFAULT 1,
    parsed BLOB,
    PRIMARY KEY (account_id, id),
    FOREIGN KEY (account_id, thread_id) REFERENCES threads(account_id, id)
);
-- Email/query over the whole account by receivedAt (scanned backwards for newest first, ties by id
-- descending); Thread/get's emailIds, oldest first.
CREATE INDEX emails_received ON emails(account_id, received_at, id);
CREATE INDEX emails_thread ON emails(account_id, thread_id, received_at, id);
CREATE INDEX emails_blob ON emails(account_id, blob_id);
CREATE INDEX emails_message_id ON emails(account_id, message_id) WHERE message_id IS NOT NULL;

-- Which mailboxes an email is in. received_at and thread_id never change (§3, §4.1.1), so they are
-- copied here: Email/query inMailbox sorted by receivedAt (with or without collapseThreads) is a
-- range scan of one index, without touching `emails`.
CREATE TABLE email_mailboxes (
    account_id TEXT NOT NULL,
    email_id TEXT NOT NULL,
    mailbox_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (account_id, email_id, mailbox_id),
    FOREIGN KEY (account_id, email_id) REFERENCES emails(account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, mailbox_id) REFERENCES mailboxes(account_id, id)
) WITHOUT ROWID;
CREATE INDEX email_mailboxes_mailbox ON email_mailboxes(account_id, mailbox_id, received_at, email_id, thread_id);

-- Keywords (§4.1.1), lower-case.
CREATE TABLE email_keywords (
    account_id TEXT NOT NULL,
    email_id TEXT NOT NULL,
    keyword TEXT NOT NULL,
    PRIMARY KEY (account_id, email_id, keyword),
    FOREIGN KEY (account_id, email_id) REFERENCES emails(account_id, id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX email_keywords_keyword ON email_keywords(account_id, keyword, email_id);
