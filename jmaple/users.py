"""Creating and deleting users with their accounts, credentials and grants; shared by the CLI and `dev`."""

from __future__ import annotations

import asyncio
import re

from jmaple.auth import hash_password, new_secret, secret_hash
from jmaple.core.context import Runtime
from jmaple.push.webhook import erase_destroyed
from jmaple.store import accounts
from jmaple.store import push as push_store
from jmaple.store.accounts import Access, Conflict, Credential, NotFound, User

# Always used with fullmatch: a "$" would let a trailing newline through.
LOGIN = re.compile(r"[^\s:\x00-\x1f\x7f]{1,254}")
CREDENTIAL_KINDS = ("token", "app-password")

__all__ = ["Conflict", "NotFound", "create_user", "delete_user", "set_password", "create_credential",
           "grant", "revoke_grant", "check_login", "find_user", "list_users", "list_credentials",
           "revoke_credential"]


def check_login(login: str) -> None:
    """Logins are usually mail addresses; they may not contain spaces, colons or control characters."""
    # isprintable() also refuses lone surrogates (a non-UTF-8 command-line argument) and format characters.
    if not LOGIN.fullmatch(login) or not login.isprintable():
        raise ValueError(f"{login!r} is not a valid login (1-254 characters, no spaces, colons or control "
                         f"characters; usually a mail address)")


async def create_user(runtime: Runtime, login: str, name: str, password: str) -> User:
    """Create a user, their personal account, and what each plugin puts in a new account (one transaction)."""
    check_login(login)
    password_hash = await asyncio.to_thread(hash_password, password, runtime.config.auth)
    new_id = runtime.config.new_id
    async with runtime.db.write() as tx:
        user = await accounts.create_user(tx, "u" + new_id(), "A" + new_id(), login, name, password_hash)
        for plugin in runtime.registry.plugins:
            if plugin.on_account_created is not None:
                await plugin.on_account_created(tx, user.account_id, runtime)
    return user


async def find_user(runtime: Runtime, login: str) -> User:
    """The user with this login; raises NotFound."""
    async with runtime.db.read() as conn:
        user = await accounts.user_by_login(conn, login)
    if user is None:
        raise NotFound(f"no user {login!r} (see `jmapled user list`)")
    return user


async def list_users(runtime: Runtime) -> list[tuple[User, list[Access]]]:
    """Every user by login, with the accounts each may use (their own first)."""
    async with runtime.db.read() as conn:
        users = await accounts.list_users(conn)
        return [(user, await accounts.access(conn, user.id)) for user in users]


async def delete_user(runtime: Runtime, login: str) -> None:
    """Delete a user, their account and everything in it; raises NotFound."""
    user = await find_user(runtime, login)
    async with runtime.db.write() as tx:
        for plugin in runtime.registry.plugins:
            if plugin.on_account_deleted is not None:
                await plugin.on_account_deleted(tx, user.account_id, runtime)
        # Before the user goes, so that we learn whether any existed (the WAL then needs erasing too).
        destroyed = await push_store.destroy_for_user(tx, user.id)
        await accounts.delete_user(tx, user.id)
    if destroyed:
        await erase_destroyed(runtime)


async def set_password(runtime: Runtime, login: str, password: str) -> None:
    """Replace a user's password; sessions using the old one stop working within a second.

    The push subscriptions created with the old password are destroyed (RFC 8620 §7.2: they are tied to
    the credentials that created them, and go when those are changed or revoked).
    """
    user = await find_user(runtime, login)
    password_hash = await asyncio.to_thread(hash_password, password, runtime.config.auth)
    async with runtime.db.write() as tx:
        await accounts.set_password(tx, user.id, password_hash)
        destroyed = await push_store.destroy_for_credential(tx, user.id, None)
    if destroyed:
        await erase_destroyed(runtime)


async def create_credential(runtime: Runtime, login: str, kind: str, label: str) -> tuple[str, str]:
    """(credential id, secret): the secret is shown once and stored only as its SHA-256.

    `kind` is "token" (HTTP Bearer) or "app-password" (HTTP Basic with the login).
    """
    if kind not in CREDENTIAL_KINDS:
        raise ValueError(f"a credential is one of {', '.join(CREDENTIAL_KINDS)}, not {kind!r}")
    user = await find_user(runtime, login)
    secret = new_secret(kind)
    credential_id = "c" + runtime.config.new_id()
    async with runtime.db.write() as tx:
        await accounts.add_credential(tx, credential_id, user.id, kind, label, secret_hash(secret))
    return credential_id, secret


async def list_credentials(runtime: Runtime, login: str) -> list[Credential]:
    """A user's app passwords and tokens (never their secrets), oldest first."""
    user = await find_user(runtime, login)
    async with runtime.db.read() as conn:
        return await accounts.credentials(conn, user.id)


async def revoke_credential(runtime: Runtime, login: str, credential_id: str) -> None:
    """Delete one of a user's credentials and the push subscriptions it created (RFC 8620 §7.2); it stops
    working within a second. Raises NotFound."""
    user = await find_user(runtime, login)
    async with runtime.db.write() as tx:
        # First, so that we learn whether any existed (the WAL then needs erasing too).
        destroyed = await push_store.destroy_for_credential(tx, user.id, credential_id)
        try:
            await accounts.revoke_credential(tx, user.id, credential_id)
        except NotFound:
            raise NotFound(f"{login} has no credential {credential_id!r} (see `jmapled token list {login}`)") \
                from None
    if destroyed:
        await erase_destroyed(runtime)


async def grant(runtime: Runtime, login: str, owner: str, may_write: bool) -> str:
    """Let `login` use the account of `owner` (a login or an account id); returns the account id."""
    user = await find_user(runtime, login)
    async with runtime.db.write() as tx:
        account_id = await accounts.resolve_account(tx, owner)
        await accounts.grant(tx, user.id, account_id, may_write)
    return account_id


async def revoke_grant(runtime: Runtime, login: str, owner: str) -> str:
    """Take back what grant() gave; returns the account id. Raises NotFound."""
    user = await find_user(runtime, login)
    async with runtime.db.write() as tx:
        account_id = await accounts.resolve_account(tx, owner)
        try:
            await accounts.revoke_grant(tx, user.id, account_id)
        except NotFound:
            raise NotFound(f"{login} has no grant on {owner} (see `jmapled user list`)") from None
    return account_id
