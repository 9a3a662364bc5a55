"""Creating and deleting users with their accounts, credentials and grants; shared by the CLI and `dev`."""

from __future__ import annotations

import asyncio
import re

from jmaple.auth import hash_password, new_secret, secret_hash
from jmaple.core.context import Runtime
from jmaple.store import accounts
from jmaple.store.accounts import Conflict, NotFound, User

LOGIN = re.compile(r"^[^\s:\x00-\x1f\x7f]{1,254}$")

__all__ = ["Conflict", "NotFound", "create_user", "delete_user", "set_password", "create_credential",
           "grant", "revoke_grant", "check_login"]


def check_login(login: str) -> None:
    """Logins are usually mail addresses; they may not contain spaces, colons or control characters."""
    if not LOGIN.match(login):
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
    async with runtime.db.read() as conn:
        user = await accounts.user_by_login(conn, login)
    if user is None:
        raise NotFound(f"no user {login!r} (see `jmapled user list`)")
    return user


async def delete_user(runtime: Runtime, login: str) -> None:
    user = await find_user(runtime, login)
    async with runtime.db.write() as tx:
        for plugin in runtime.registry.plugins:
            if plugin.on_account_deleted is not None:
                await plugin.on_account_deleted(tx, user.account_id, runtime)
        await accounts.delete_user(tx, user.id)


async def set_password(runtime: Runtime, login: str, password: str) -> None:
    user = await find_user(runtime, login)
    password_hash = await asyncio.to_thread(hash_password, password, runtime.config.auth)
    async with runtime.db.write() as tx:
        await accounts.set_password(tx, user.id, password_hash)


async def create_credential(runtime: Runtime, login: str, kind: str, label: str) -> tuple[str, str]:
    """(credential id, secret): the secret is shown once and stored only as its SHA-256."""
    user = await find_user(runtime, login)
    secret = new_secret(kind)
    credential_id = "c" + runtime.config.new_id()
    async with runtime.db.write() as tx:
        await accounts.add_credential(tx, credential_id, user.id, kind, label, secret_hash(secret))
    return credential_id, secret


async def grant(runtime: Runtime, login: str, owner: str, may_write: bool) -> str:
    """Let `login` use the account of `owner` (a login or an account id); returns the account id."""
    user = await find_user(runtime, login)
    async with runtime.db.write() as tx:
        account_id = await accounts.resolve_account(tx, owner)
        await accounts.grant(tx, user.id, account_id, may_write)
    return account_id


async def revoke_grant(runtime: Runtime, login: str, owner: str) -> str:
    user = await find_user(runtime, login)
    async with runtime.db.write() as tx:
        account_id = await accounts.resolve_account(tx, owner)
        await accounts.revoke_grant(tx, user.id, account_id)
    return account_id
