"""PushSubscription storage (RFC 8620 §7.2): subscriptions, pending deliveries, delivery state."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from jmaple.store.db import Conn, Transaction

CREATION_WINDOW = 3600.0   # seconds over which the creation rate limit counts

_COLUMNS = ("id, user_id, credential_id, device_client_id, url, p256dh, auth, verification_code, is_verified,"
            " verification_sent, expires, types, created_at, last_attempt_at, last_status, failures,"
            " failing_since, next_attempt_at")


@dataclass(frozen=True)
class Subscription:
    """One stored PushSubscription with its delivery state; `credential_id` None means the password."""

    id: str
    user_id: str
    credential_id: str | None
    device_client_id: str
    url: str
    p256dh: str | None
    auth: str | None
    verification_code: str
    is_verified: bool
    verification_sent: bool
    expires: int
    types: tuple[str, ...] | None
    created_at: int
    last_attempt_at: float | None = None
    last_status: str | None = None
    failures: int = 0
    failing_since: float | None = None
    next_attempt_at: float | None = None

    @property
    def has_keys(self) -> bool:
        return self.p256dh is not None and self.auth is not None


def _subscription(row: Sequence[object]) -> Subscription:
    values = list(row)
    values[8] = bool(values[8])
    values[9] = bool(values[9])
    values[11] = None if values[11] is None else tuple(orjson.loads(values[11]))
    return Subscription(*values)   # type: ignore[arg-type]


def _types_json(types: Sequence[str] | None) -> str | None:
    return None if types is None else orjson.dumps(list(types)).decode()


# --- the methods' side ---------------------------------------------------------------------------------


async def for_credential(conn: Conn, user_id: str, credential_id: str | None, now: float,
                         ids: Sequence[str] | None = None) -> list[Subscription]:
    """The unexpired subscriptions one credential created (all of them, or those of `ids`), oldest first."""
    sql = (f"SELECT {_COLUMNS} FROM push_subscriptions WHERE user_id = ? AND credential_id IS ? AND expires > ?")
    params: list[object] = [user_id, credential_id, int(now)]
    if ids is not None:
        if not ids:
            return []
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params.extend(ids)
    return [_subscription(r) for r in await conn.all(sql + " ORDER BY created_at, id", params)]


async def count_for_user(conn: Conn, user_id: str, now: float) -> int:
    """How many unexpired subscriptions the user has, whatever credential created them."""
    return await conn.value("SELECT count(*) FROM push_subscriptions WHERE user_id = ? AND expires > ?",
                            (user_id, int(now)), 0)


async def creations_since(conn: Conn, user_id: str, since: float) -> int:
    return await conn.value("SELECT count(*) FROM push_creations WHERE user_id = ? AND created_at > ?",
                            (user_id, since), 0)


async def insert(tx: Transaction, sub: Subscription) -> None:
    """Store a new subscription and count it against the user's creation rate."""
    await tx.execute(
        "INSERT INTO push_subscriptions (id, user_id, credential_id, device_client_id, url, p256dh, auth,"
        " verification_code, expires, types, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sub.id, sub.user_id, sub.credential_id, sub.device_client_id, sub.url, sub.p256dh, sub.auth,
         sub.verification_code, sub.expires, _types_json(sub.types), sub.created_at))
    await tx.execute("INSERT INTO push_creations (user_id, created_at) VALUES (?, ?)", (sub.user_id, tx.now))


async def update(tx: Transaction, sub_id: str, *, expires: int, types: Sequence[str] | None,
                 is_verified: bool) -> None:
    """Change what a client may change; pending states of types no longer wanted are dropped."""
    types_json = _types_json(types)
    await tx.execute("UPDATE push_subscriptions SET expires = ?, types = ?, is_verified = ? WHERE id = ?",
                     (expires, types_json, int(is_verified), sub_id))
    if types_json is not None:
        await tx.execute("DELETE FROM push_pending WHERE subscription_id = ?"
                         " AND type NOT IN (SELECT value FROM json_each(?))", (sub_id, types_json))


async def delete(tx: Transaction, ids: Sequence[str]) -> int:
    """Destroy subscriptions and their pending deliveries; returns how many there were.

    The rows are zeroed in the database file as they are deleted (the writer runs with PRAGMA secure_delete,
    see Database); copies stay in the WAL until it is checkpointed and truncated (truncate_wal), which the
    caller arranges after the commit.
    """
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return await tx.execute(f"DELETE FROM push_subscriptions WHERE id IN ({marks})", list(ids))


async def destroy_for_credential(tx: Transaction, user_id: str, credential_id: str | None) -> int:
    """Destroy every subscription one credential created (None: the user's password); returns the count.

    Call it when a token or app password is revoked, before deleting it (its foreign key would delete
    them too, but silently, and the caller must know to truncate the WAL), and when the user's password
    changes (RFC 8620 §7.2).
    """
    rows = await tx.all("SELECT id FROM push_subscriptions WHERE user_id = ? AND credential_id IS ?",
                        (user_id, credential_id))
    return await delete(tx, [r[0] for r in rows])


async def destroy_for_user(tx: Transaction, user_id: str) -> int:
    """Destroy every subscription of a user (before deleting the user); returns the count."""
    rows = await tx.all("SELECT id FROM push_subscriptions WHERE user_id = ?", (user_id,))
    return await delete(tx, [r[0] for r in rows])


def truncate_wal(path: Path, timeout: float) -> bool:
    """PRAGMA wal_checkpoint(TRUNCATE) on a connection of its own; False when other connections kept it
    from finishing within `timeout` seconds.

    Until the WAL is checkpointed and truncated, it keeps the pages that deletions replaced, URLs and keys
    of destroyed subscriptions included. Blocking (it waits for readers and writers, copies and syncs
    pages, and keeps writers waiting meanwhile): run it on a thread, off any request's path.
    """
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return False
        raise
    finally:
        conn.close()
    return busy == 0


async def delete_expired(tx: Transaction, now: float) -> list[str]:
    """Destroy subscriptions that expired; also forget creations older than the rate-limit window."""
    rows = await tx.all("SELECT id FROM push_subscriptions WHERE expires <= ?", (int(now),))
    ids = [r[0] for r in rows]
    await delete(tx, ids)
    await tx.execute("DELETE FROM push_creations WHERE created_at <= ?", (now - CREATION_WINDOW,))
    return ids


# --- delivery ------------------------------------------------------------------------------------------


async def subscribers(conn: Conn, account_ids: Sequence[str], now: float
                      ) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """(subscription id, account id, types) of every verified, unexpired subscription whose user may use
    one of the accounts (their own, or granted to them)."""
    if not account_ids:
        return []
    marks = ",".join("?" * len(account_ids))
    rows = await conn.all(
        f"SELECT s.id, a.account_id, s.types FROM push_subscriptions s JOIN ("
        f" SELECT id AS account_id, owner_id AS user_id FROM accounts WHERE id IN ({marks})"
        f" UNION ALL SELECT account_id, user_id FROM grants WHERE account_id IN ({marks})"
        f") a ON a.user_id = s.user_id WHERE s.is_verified = 1 AND s.expires > ?",
        [*account_ids, *account_ids, int(now)])
    return [(r[0], r[1], None if r[2] is None else tuple(orjson.loads(r[2]))) for r in rows]


async def add_pending(tx: Transaction, rows: Iterable[tuple[str, str, str, str]]) -> None:
    """Merge (subscription id, account id, type, state) into the pending deliveries, keeping the newer state.

    Several daemons (a shared broker) each write what they were told, so an older state may be committed
    after a newer one; it must not replace it (its POST would then never carry the newest). States are
    decimal modseqs, compared as numbers, as the broker merges them; a state that is not one replaces
    whatever is pending.
    """
    await tx.executemany(
        "INSERT INTO push_pending (subscription_id, account_id, type, state) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET state = excluded.state"
        " WHERE NOT (push_pending.state <> '' AND push_pending.state NOT GLOB '*[^0-9]*'"
        " AND excluded.state <> '' AND excluded.state NOT GLOB '*[^0-9]*'"
        " AND CAST(excluded.state AS INTEGER) < CAST(push_pending.state AS INTEGER))", rows)


@dataclass(frozen=True)
class Job:
    """What one delivery attempt works from: the subscription and its pending states."""

    sub: Subscription
    # (account id, type, state) the subscription's user may still see and asked for, sorted.
    pending: tuple[tuple[str, str, str], ...]
    # Pending rows to forget unsent: an account no longer shared with the user, say.
    stale: tuple[tuple[str, str, str], ...]


async def job(conn: Conn, sub_id: str) -> Job | None:
    """The subscription and its pending states (one statement), or None when it is gone."""
    columns = ", ".join("s." + c.strip() for c in _COLUMNS.split(","))
    rows = await conn.all(
        f"SELECT {columns}, p.account_id, p.type, p.state, p.account_id IN ("
        " SELECT a.id FROM accounts a WHERE a.owner_id = s.user_id"
        " UNION ALL SELECT g.account_id FROM grants g WHERE g.user_id = s.user_id)"
        " FROM push_subscriptions s LEFT JOIN push_pending p ON p.subscription_id = s.id"
        " WHERE s.id = ? ORDER BY p.account_id, p.type", (sub_id,))
    if not rows:
        return None
    sub = _subscription(rows[0][:-4])
    wanted = None if sub.types is None else set(sub.types)
    pending, stale = [], []
    for *_, account_id, type_name, state, visible in rows:
        if account_id is None:
            continue
        if visible and (wanted is None or type_name in wanted):
            pending.append((account_id, type_name, state))
        else:
            stale.append((account_id, type_name, state))
    return Job(sub, tuple(pending), tuple(stale))


async def pending_subscriptions(conn: Conn, now: float) -> list[str]:
    """Subscriptions with something to send: a verification not yet delivered, or pending states."""
    rows = await conn.all(
        "SELECT id FROM push_subscriptions s WHERE expires > ?1 AND ("
        " (is_verified = 0 AND verification_sent = 0)"
        " OR (is_verified = 1 AND EXISTS (SELECT 1 FROM push_pending p WHERE p.subscription_id = s.id)))",
        (int(now),))
    return [r[0] for r in rows]


async def forget_pending(tx: Transaction, sub_id: str, rows: Iterable[tuple[str, str, str]]) -> None:
    """Drop pending states, each only if it was not replaced by a newer one meanwhile."""
    await tx.executemany(
        "DELETE FROM push_pending WHERE subscription_id = ? AND account_id = ? AND type = ? AND state = ?",
        [(sub_id, a, t, s) for a, t, s in rows])


async def delivered(tx: Transaction, sub_id: str, now: float, status: str, *, verification: bool,
                    sent: Iterable[tuple[str, str, str]]) -> None:
    """Record a successful attempt: what it carried is no longer pending, and the failure count resets."""
    await forget_pending(tx, sub_id, sent)
    await tx.execute(
        "UPDATE push_subscriptions SET last_attempt_at = ?, last_status = ?, failures = 0,"
        " failing_since = NULL, next_attempt_at = NULL, verification_sent = verification_sent OR ?"
        " WHERE id = ?", (now, status, int(verification), sub_id))


async def failed(tx: Transaction, sub_id: str, now: float, status: str, *, failures: int, failing_since: float,
                 next_attempt_at: float) -> None:
    """Record a failed attempt and when to try again."""
    await tx.execute(
        "UPDATE push_subscriptions SET last_attempt_at = ?, last_status = ?, failures = ?,"
        " failing_since = ?, next_attempt_at = ? WHERE id = ?",
        (now, status, failures, failing_since, next_attempt_at, sub_id))


# --- the command line ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A subscription as `jmapled push` shows it."""

    sub: Subscription
    login: str
    pending: int


async def listing(conn: Conn, sub_id: str | None = None) -> list[Listing]:
    """Every subscription (or the one with `sub_id`) with its user's login and its pending count."""
    sql = (f"SELECT {', '.join('s.' + c.strip() for c in _COLUMNS.split(','))}, u.login,"
           " (SELECT count(*) FROM push_pending p WHERE p.subscription_id = s.id)"
           " FROM push_subscriptions s JOIN users u ON u.id = s.user_id")
    if sub_id is not None:
        rows = await conn.all(sql + " WHERE s.id = ?", (sub_id,))
    else:
        rows = await conn.all(sql + " ORDER BY u.login, s.created_at, s.id")
    return [Listing(_subscription(r[:-2]), r[-2], r[-1]) for r in rows]
