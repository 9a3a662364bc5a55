"""Users, accounts, grants and credentials."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jmaple.store.db import Conn, Transaction


class NotFound(Exception):
    """No such user, account, grant or credential."""


class Conflict(Exception):
    """The object already exists (a login taken, say)."""


@dataclass(frozen=True)
class User:
    id: str
    login: str
    name: str
    password_hash: str
    version: int
    account_id: str


@dataclass(frozen=True)
class Access:
    """One account a user may use."""

    account_id: str
    name: str
    is_personal: bool
    may_write: bool


@dataclass(frozen=True)
class Credential:
    id: str
    user_id: str
    kind: str
    label: str
    created_at: int


_USER = ("SELECT u.id, u.login, u.name, u.password_hash, u.version, a.id FROM users u"
         " JOIN accounts a ON a.owner_id = u.id")


async def create_user(tx: Transaction, user_id: str, account_id: str, login: str, name: str,
                      password_hash: str) -> User:
    """Create a user and their personal account; raises Conflict when the login is taken."""
    if await tx.value("SELECT 1 FROM users WHERE login = ?", (login,)):
        raise Conflict(f"a user {login!r} already exists")
    now = int(tx.now)
    await tx.execute("INSERT INTO users (id, login, name, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                     (user_id, login, name, password_hash, now))
    await tx.execute("INSERT INTO accounts (id, owner_id, name, created_at) VALUES (?, ?, ?, ?)",
                     (account_id, user_id, login, now))
    return User(user_id, login, name, password_hash, 1, account_id)


async def user_by_login(conn: Conn, login: str) -> User | None:
    row = await conn.one(_USER + " WHERE u.login = ?", (login,))
    return User(*row) if row else None


async def user_by_id(conn: Conn, user_id: str) -> User | None:
    row = await conn.one(_USER + " WHERE u.id = ?", (user_id,))
    return User(*row) if row else None


async def list_users(conn: Conn) -> list[User]:
    return [User(*r) for r in await conn.all(_USER + " ORDER BY u.login")]


async def resolve_account(conn: Conn, owner: str) -> str:
    """An account id from an owner's login or an account id; raises NotFound."""
    account_id = await conn.value(
        "SELECT a.id FROM accounts a JOIN users u ON u.id = a.owner_id WHERE u.login = ? OR a.id = ?",
        (owner, owner))
    if account_id is None:
        raise NotFound(f"no user or account {owner!r}")
    return account_id


async def _bump(tx: Transaction, user_ids: Iterable[str]) -> None:
    await tx.executemany("UPDATE users SET version = version + 1 WHERE id = ?", [(u,) for u in user_ids])


async def set_password(tx: Transaction, user_id: str, password_hash: str) -> None:
    await tx.execute("UPDATE users SET password_hash = ?, version = version + 1 WHERE id = ?",
                     (password_hash, user_id))


async def delete_user(tx: Transaction, user_id: str) -> None:
    """Delete a user, their account (everything in it cascades) and every grant on it."""
    grantees = await tx.all(
        "SELECT g.user_id FROM grants g JOIN accounts a ON a.id = g.account_id WHERE a.owner_id = ?", (user_id,))
    await tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
    await _bump(tx, [r[0] for r in grantees])


async def access(conn: Conn, user_id: str) -> list[Access]:
    """The personal account first, then granted accounts by name."""
    rows = await conn.all(
        "SELECT id, name, 1, 1 FROM accounts WHERE owner_id = ?1"
        " UNION ALL SELECT a.id, a.name, 0, g.may_write FROM grants g JOIN accounts a ON a.id = g.account_id"
        " WHERE g.user_id = ?1 ORDER BY 3 DESC, 2", (user_id,))
    return [Access(r[0], r[1], bool(r[2]), bool(r[3])) for r in rows]


async def versions(conn: Conn, user_ids: list[str]) -> dict[str, int]:
    rows = await conn.all(f"SELECT id, version FROM users WHERE id IN ({','.join('?' * len(user_ids))})",
                          user_ids)
    return dict(rows)


async def grant(tx: Transaction, user_id: str, account_id: str, may_write: bool) -> None:
    """Give user access to account (replacing an earlier grant); raises Conflict for one's own account."""
    owner = await tx.value("SELECT owner_id FROM accounts WHERE id = ?", (account_id,))
    if owner is None:
        raise NotFound(f"no account {account_id}")
    if owner == user_id:
        raise Conflict("a user always has full access to their own account")
    await tx.execute(
        "INSERT INTO grants (user_id, account_id, may_write, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET may_write = excluded.may_write", (user_id, account_id, may_write, int(tx.now)))
    await _bump(tx, [user_id])


async def revoke_grant(tx: Transaction, user_id: str, account_id: str) -> None:
    if not await tx.execute("DELETE FROM grants WHERE user_id = ? AND account_id = ?", (user_id, account_id)):
        raise NotFound("no such grant")
    await _bump(tx, [user_id])


async def add_credential(tx: Transaction, credential_id: str, user_id: str, kind: str, label: str,
                         secret_hash: bytes) -> None:
    await tx.execute(
        "INSERT INTO credentials (id, user_id, kind, label, secret_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (credential_id, user_id, kind, label, secret_hash, int(tx.now)))


async def credential_by_hash(conn: Conn, kind: str, secret_hash: bytes) -> tuple[str, str] | None:
    """(credential id, user id) for a secret's SHA-256, or None."""
    row = await conn.one("SELECT id, user_id FROM credentials WHERE kind = ? AND secret_hash = ?",
                         (kind, secret_hash))
    return (row[0], row[1]) if row else None


async def credential_user(conn: Conn, kind: str, secret_hash: bytes) -> tuple[str, User] | None:
    """(credential id, its user) for a secret's SHA-256, or None; read in one statement, so the user's
    version is the one current when the credential was found."""
    row = await conn.one(
        "SELECT c.id, u.id, u.login, u.name, u.password_hash, u.version, a.id FROM credentials c"
        " JOIN users u ON u.id = c.user_id JOIN accounts a ON a.owner_id = u.id"
        " WHERE c.kind = ? AND c.secret_hash = ?", (kind, secret_hash))
    return (row[0], User(*row[1:])) if row else None


async def credentials(conn: Conn, user_id: str) -> list[Credential]:
    rows = await conn.all("SELECT id, user_id, kind, label, created_at FROM credentials WHERE user_id = ?"
                          " ORDER BY created_at, id", (user_id,))
    return [Credential(*r) for r in rows]


async def credential_exists(conn: Conn, credential_id: str) -> bool:
    return bool(await conn.value("SELECT 1 FROM credentials WHERE id = ?", (credential_id,)))


async def revoke_credential(tx: Transaction, user_id: str, credential_id: str) -> None:
    if not await tx.execute("DELETE FROM credentials WHERE id = ? AND user_id = ?", (credential_id, user_id)):
        raise NotFound(f"no credential {credential_id}")
    await _bump(tx, [user_id])


async def account_ids(conn: Conn) -> list[str]:
    return [r[0] for r in await conn.all("SELECT id FROM accounts ORDER BY id")]
