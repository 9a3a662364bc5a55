-- PushSubscription webhooks (RFC 8620 §7.2): the subscriptions, their delivery state, what waits to be sent.

-- A plain rowid table: url can be long, and WITHOUT ROWID suits only small rows.
CREATE TABLE push_subscriptions (
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- The app password or token that created it, NULL for the user's own password: a credential sees
    -- only its own subscriptions, and revoking it destroys them (RFC 8620 §7.2).
    credential_id TEXT REFERENCES credentials(id) ON DELETE CASCADE,
    device_client_id TEXT NOT NULL,
    url TEXT NOT NULL,
    p256dh TEXT,
    auth TEXT,
    verification_code TEXT NOT NULL,
    is_verified INTEGER NOT NULL DEFAULT 0,
    verification_sent INTEGER NOT NULL DEFAULT 0,
    expires INTEGER NOT NULL,
    types TEXT,                          -- JSON array of type names, NULL for every type
    created_at INTEGER NOT NULL,
    last_attempt_at REAL,
    last_status TEXT,                    -- an HTTP status code, or why no response came
    failures INTEGER NOT NULL DEFAULT 0, -- consecutive failed attempts
    failing_since REAL,                  -- the first of them
    next_attempt_at REAL                 -- not before this (back-off, Retry-After)
);
CREATE INDEX push_subscriptions_user ON push_subscriptions(user_id, credential_id);
CREATE INDEX push_subscriptions_credential ON push_subscriptions(credential_id) WHERE credential_id IS NOT NULL;
CREATE INDEX push_subscriptions_expires ON push_subscriptions(expires);

-- The newest state of each (account, type) not yet delivered to a subscription: coalesced, persisted so a
-- restart resumes the delivery.
CREATE TABLE push_pending (
    subscription_id TEXT NOT NULL REFERENCES push_subscriptions(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (subscription_id, account_id, type)
) WITHOUT ROWID;
CREATE INDEX push_pending_account ON push_pending(account_id);

-- When each user created subscriptions in the last hour, for the creation rate limit (destroying one
-- does not give its creation back).
CREATE TABLE push_creations (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at REAL NOT NULL
);
CREATE INDEX push_creations_user ON push_creations(user_id, created_at);
