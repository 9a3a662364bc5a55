"""Password hashing, app passwords and tokens, the credential cache and the auth gate -> Principal."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from jmaple.config import AuthConfig, ServerConfig
from jmaple.core.context import Principal
from jmaple.store import accounts
from jmaple.store.db import Database

CACHE_SECONDS = 1.0
CACHE_SIZE = 10_000
TRACKED_CLIENTS = 10_000
FAILURE_MEMORY = 900.0
WWW_AUTHENTICATE = 'Basic realm="jmaple", Bearer'


def _password_bytes(password: str) -> bytes:
    """UTF-8 of a password; ValueError for a lone surrogate, which has no UTF-8 form (only Python strings
    built from bad input carry one; a password read off the wire is always valid UTF-8)."""
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a password must be valid Unicode text (it contains a lone surrogate)") from None


def hash_password(password: str, config: AuthConfig) -> str:
    """scrypt with a per-user salt, parameters kept in the string: scrypt$n$r$p$salt$hash.

    Raises ValueError for a password that is not valid Unicode text (a lone surrogate).
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(_password_bytes(password), salt=salt, n=config.scrypt_n, r=config.scrypt_r,
                            p=config.scrypt_p, maxmem=256 * 1024 * 1024, dklen=32)
    return "$".join(["scrypt", str(config.scrypt_n), str(config.scrypt_r), str(config.scrypt_p),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of a password against hash_password's output (False for one it would refuse)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(_password_bytes(password), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), maxmem=256 * 1024 * 1024, dklen=len(expected))
    except (ValueError, binascii.Error):
        return False
    return scheme == "scrypt" and hmac.compare_digest(got, expected)


def new_secret(kind: str) -> str:
    """A fresh app password or bearer token: 160 random bits, prefixed so leaks are recognisable."""
    prefix = "jmap_" if kind == "app-password" else "jmat_"
    return prefix + secrets.token_urlsafe(20)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass
class _Entry:
    principal: Principal
    checked_at: float


class Authenticator:
    """Verifies credentials, caches the result for a second at a time, and slows down repeated failures."""

    def __init__(self, db: Database, config: AuthConfig, clock: Callable[[], float] = time.monotonic):
        self.db = db
        self.config = config
        self.clock = clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}      # verifications
        self._rechecks: dict[bytes, asyncio.Future[Principal | None]] = {}      # version re-reads
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._dummy_hash = hash_password(secrets.token_hex(8), config)

    def recent(self, header: str) -> Principal | None:
        """The Principal behind `header` if it was verified less than CACHE_SECONDS ago, else None: the
        usual case, answered without awaiting anything."""
        key = secret_hash(header)
        entry = self._cache.get(key)
        if entry is not None and self.clock() - entry.checked_at < CACHE_SECONDS:
            self._cache.move_to_end(key)
            return entry.principal
        return None

    async def authenticate(self, header: str) -> Principal | None:
        """The Principal behind an Authorization header value, or None."""
        key = secret_hash(header)
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
            if self.clock() - entry.checked_at < CACHE_SECONDS:
                return entry.principal
            # A crowd reconnecting at once with the same credentials re-reads the version once, not once each.
            principal = await self._shared(self._rechecks, key, lambda: self._recheck(key, entry))
            if principal is not None:
                return principal
        return await self._shared(self._inflight, key, lambda: self._verify_and_cache(key, header))

    async def revalidate(self, header: str) -> Principal | None:
        """The Principal behind `header` as the store has it now, bypassing the cache (and refreshing it).

        For open streams after a change to their user: authenticate() may answer from before the change
        for up to CACHE_SECONDS. Concurrent verifications of the same credentials (authenticate's too) are
        shared; one that started before a change may miss it, but then its principal's version is already
        stale and the next check verifies again.
        """
        key = secret_hash(header)
        return await self._shared(self._inflight, key, lambda: self._verify_and_cache(key, header))

    @staticmethod
    async def _shared(table: dict[bytes, asyncio.Future[Principal | None]], key: bytes,
                      start: Callable[[], Awaitable[Principal | None]]) -> Principal | None:
        """start()'s result, shared by every caller for `key` while it runs.

        It runs as a task of its own, so a client that disconnects (cancelling its handler) does not
        cancel the others'.
        """
        task = table.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            table[key] = task
            task.add_done_callback(lambda done: (table.pop(key, None),
                                                 done.cancelled() or done.exception()))
        return await asyncio.shield(task)

    async def _recheck(self, key: bytes, entry: _Entry) -> Principal | None:
        """entry's principal if its user is unchanged since (renewing the entry), else None (dropping it)."""
        now = self.clock()
        async with self.db.read() as conn:
            version = await conn.value("SELECT version FROM users WHERE id = ?", (entry.principal.user_id,))
        if version == entry.principal.version:
            entry.checked_at = now
            return entry.principal
        if self._cache.get(key) is entry:
            del self._cache[key]
        return None

    async def _verify_and_cache(self, key: bytes, header: str) -> Principal | None:
        principal = await self._verify(header)
        if principal is not None:
            self._cache[key] = _Entry(principal, self.clock())
            self._cache.move_to_end(key)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.pop(key, None)
        return principal

    async def _verify(self, header: str) -> Principal | None:
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        # The principal carries the user's version read together with the credential it was verified
        # against: read later, a revocation committed in between would be cached as valid for good.
        if scheme == "bearer" and value:
            async with self.db.read() as conn:
                found = await accounts.credential_user(conn, "token", secret_hash(value))
            if found is None:
                return None
            return await self.load_principal(found[1], found[0])
        if scheme != "basic":
            return None
        try:
            login, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        if not sep or not login:
            return None
        async with self.db.read() as conn:
            user = await accounts.user_by_login(conn, login)
            app = await accounts.credential_user(conn, "app-password", secret_hash(password))
        if user is None:
            await asyncio.to_thread(verify_password, password, self._dummy_hash)   # same cost either way
            return None
        if app is not None and app[1].id == user.id:
            return await self.load_principal(app[1], app[0])
        if await asyncio.to_thread(verify_password, password, user.password_hash):
            return await self.load_principal(user, None)
        return None

    async def load_principal(self, user: accounts.User, credential_id: str | None) -> Principal:
        """The Principal of a verified user; its version is the one `user` was read at, so any change
        committed since makes the next revalidation reload it."""
        async with self.db.read() as conn:
            access = await accounts.access(conn, user.id)
        return Principal(user.id, user.login, user.name, credential_id,
                         {a.account_id: a for a in access}, user.version)

    def failure_delay(self, client: str) -> float:
        """Record a failed attempt from client; the delay to impose on this answer (doubling per failure).

        A client is forgotten FAILURE_MEMORY seconds after its last failure, not its first, so steady
        guessing stays slowed.
        """
        now = self.clock()
        count, last = self._failures.pop(client, (0, now))
        if now - last > FAILURE_MEMORY:
            count = 0
        count += 1
        self._failures[client] = (count, now)
        if len(self._failures) > TRACKED_CLIENTS:
            self._failures.popitem(last=False)
        if count <= 2:
            return 0.0
        return min(self.config.failure_delay_max, 0.05 * 2 ** min(count - 2, 16))


def client_address(request: web.Request, server: ServerConfig) -> str:
    """The client's address; behind a trusted proxy, the nearest untrusted X-Forwarded-For hop."""
    remote = request.remote or ""
    networks = server.proxy_networks
    if not networks:
        return remote

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    if not trusted(remote):
        return remote
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else remote


PUBLIC_PATHS = frozenset({"/.well-known/jmap", "/healthz"})
PUBLIC_METHODS = frozenset({"GET", "HEAD"})


TICKET_PATHS = frozenset({"/jmap/eventsource", "/jmap/ws"})


def auth_gate(authenticator_key: web.AppKey[Authenticator], server: ServerConfig,
              principal_key: web.RequestKey[Principal], header_key: web.RequestKey[str],
              tickets_key: web.AppKey[Any]) -> Callable[[web.Request], Awaitable[web.StreamResponse | None] | None]:
    """The check every request but the discovery redirect, preflight and /healthz passes.

    gate(request) is None once the request carries the Principal, which is the usual case and needs no
    await (credentials verified within the last second); else an awaitable of None (verified now) or of
    the 401 response to send.

    The push streams also accept `?ticket=` (browsers cannot set Authorization on them); a ticket stands
    for the credentials it was issued with, so revoking those ends it too.
    """
    from jmaple.api.http import problem   # api depends on auth's types, not the other way round

    def gate(request: web.Request) -> Awaitable[web.StreamResponse | None] | None:
        method = request.method
        if method == "OPTIONS" or (method in PUBLIC_METHODS and request.path in PUBLIC_PATHS):
            return None
        authenticator = request.app[authenticator_key]
        header = request.headers.get("Authorization")
        if header is not None:
            principal = authenticator.recent(header)
            if principal is not None:
                request[principal_key] = principal
                request[header_key] = header
                return None
        return verify(request, authenticator, header)

    async def verify(request: web.Request, authenticator: Authenticator,
                     header: str | None) -> web.StreamResponse | None:
        if header is None and request.path in TICKET_PATHS and "ticket" in request.query:
            header = request.app[tickets_key].redeem(request.query["ticket"], request.path)
        principal = await authenticator.authenticate(header) if header else None
        if principal is None:
            if header or "ticket" in request.query:
                delay = authenticator.failure_delay(client_address(request, server))
                if delay:
                    await asyncio.sleep(delay)
            response = problem(401, "about:blank", "valid credentials are required (HTTP Basic or Bearer)",
                               title="Unauthorized")
            response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
            return response
        request[principal_key] = principal
        request[header_key] = header
        return None

    return gate
