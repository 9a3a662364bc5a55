-- Which accounts the Mail capability has provisioned with their default mailboxes, and whether
-- `jmapled dev` has seeded its demo mail there. An account without a row (one that existed before the
-- capability was installed, or was created while it was disabled) is provisioned, with the configured
-- [capabilities.mail] default_mailboxes, when the plugin next starts (jmaple/mail/mailbox.py).
CREATE TABLE mail_accounts (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    provisioned_at INTEGER NOT NULL,
    demo_seeded_at INTEGER
) WITHOUT ROWID;

-- Accounts that already had mailboxes (from an earlier version of 0001, which back-filled a fixed
-- list, or from the account-creation hook) are provisioned: they never get a second set. A Mailbox
-- state shows an account that had mailboxes even if all of them were destroyed since.
INSERT INTO mail_accounts (account_id, provisioned_at)
    SELECT a.id, CAST(strftime('%s', 'now') AS INTEGER) FROM accounts a
    WHERE EXISTS (SELECT 1 FROM mailboxes m WHERE m.account_id = a.id)
       OR EXISTS (SELECT 1 FROM type_states t WHERE t.account_id = a.id AND t.type = 'Mailbox');
