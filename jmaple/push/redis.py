"""RedisPushBroker: the PushBroker for several daemons on one database (RFC 8620 §7.1).

Every daemon (and its poller of other processes' commits) may try to publish the same state. A
`SET NX` per (account, type, state) lets exactly one of them win: the winner fans the StateChange out to
its own subscribers, runs the on_publish hooks (so each webhook gets it once) and PUBLISHes it on one
channel, from which every other daemon's listener hands it to its subscribers.

A process without hooks (a CLI command) claims nothing: the daemons' pollers publish its commits, so their
webhooks get them. Webhook workers of all daemons share `lock()` per subscription, so that two of them never
POST the same pending state.

While Redis cannot be reached, a daemon delivers what it publishes to its own subscribers and runs its
hooks (a webhook may then get a change twice, never not at all), and the listener reconnects with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError

from jmaple.push.broker import PushBroker, TypeStates

log = logging.getLogger(__name__)

CLAIM_TTL = 300                 # seconds a published state stays claimed: far longer than any poll delay
RETRY_INITIAL = 0.2             # seconds before the listener's first reconnect attempt
RETRY_MAX = 30.0
COMMAND_TIMEOUT = 2.0           # seconds for one command, so a hung Redis cannot stall a publish for long


def namespace_for(database: Path) -> str:
    """A key prefix naming one database, so two deployments sharing a Redis never see each other's changes.

    Daemons sharing an SQLite database run on one machine (WAL needs shared memory), so its path names it.
    """
    return hashlib.sha256(str(database.resolve()).encode()).hexdigest()[:16]


def shown_url(url: str) -> str:
    """The URL without its password, fit for a log."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(
            parts._replace(netloc=(f"{parts.username}:***@" if parts.username else ":***@") + host))
    base, mark, query = url.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):   # unix:///path?password=...
        pairs = [(key, "***" if key == "password" else value) for key, value in pairs]
        url = base + mark + urllib.parse.urlencode(pairs, safe="*")
    return url


class RedisPushBroker(PushBroker):
    """PushBroker whose publishes reach the subscribers of every daemon connected to the same Redis."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__()
        self.url = shown_url(url)               # for logs: without a password
        # One immediate retry (a pooled connection may be stale after Redis restarted), then fail fast:
        # a publish must not wait through a back-off while Redis is away.
        self._redis = aioredis.Redis.from_url(url, socket_timeout=COMMAND_TIMEOUT,
                                              socket_connect_timeout=COMMAND_TIMEOUT, socket_keepalive=True,
                                              retry=Retry(NoBackoff(), 1))
        self.channel = f"jmaple:{namespace}:state"
        self._prefix = f"jmaple:{namespace}:"
        self.origin = secrets.token_hex(8)       # our own messages come back on the channel; skipped
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._redis_down = False

    async def __aenter__(self) -> RedisPushBroker:
        self._listener = asyncio.create_task(self._listen(), name="jmaple.push.redis")
        return self

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Wait until the listener is subscribed to the channel; raises TimeoutError."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    async def publish(self, account_id: str, type_states: TypeStates) -> None:
        """Claim each state; for those this process wins, deliver here, run the hooks and tell the others."""
        if not type_states:
            return
        if not self._hooks:
            # A CLI command: no webhooks here. A daemon's poller picks the commit up and publishes it with
            # its hooks; claiming it here would keep it from the webhooks.
            return
        items = sorted(type_states.items())
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for type_name, state in items:
                    pipe.set(self._claim_key(account_id, type_name, state), self.origin, nx=True, ex=CLAIM_TTL)
                won = await pipe.execute()
            fresh = {type_name: state for (type_name, state), ok in zip(items, won) if ok}
            if fresh:
                message = {"origin": self.origin, "accountId": account_id, "changed": fresh}
                await self._redis.publish(self.channel, orjson.dumps(message))
            self._redis_up()
        except (RedisError, OSError) as exc:
            # Better twice than never: deliver what this process knows, hooks included.
            self._redis_lost(f"publishing failed: {exc}")
            self.deliver(account_id, type_states)
            return
        if fresh:
            self.deliver(account_id, fresh)
        if not self._subscribed.is_set():
            # Our listener is reconnecting and may miss what another daemon won; our poller sees every
            # commit, so our subscribers get it from here (at worst twice, which coalescing makes harmless).
            missed = {type_name: state for type_name, state in type_states.items() if type_name not in fresh}
            if missed:
                self._fan_out(account_id, missed)

    def _claim_key(self, account_id: str, type_name: str, state: str) -> str:
        return f"{self._prefix}claim:{orjson.dumps([account_id, type_name, state]).decode()}"

    def _received(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
            origin, account_id, changed = message["origin"], message["accountId"], message["changed"]
            if not (isinstance(account_id, str) and isinstance(changed, dict)
                    and all(isinstance(k, str) and isinstance(v, str) for k, v in changed.items())):
                raise ValueError("wrong types")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed message on Redis channel %s: %s", self.channel, exc)
            return
        if origin != self.origin and changed:
            self._fan_out(account_id, changed)

    async def _listen(self) -> None:
        delay = RETRY_INITIAL
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                self._redis_up()
                delay = RETRY_INITIAL
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._received(message["data"])
                raise ConnectionError("subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                self._redis_lost(f"listening failed: {exc}; retrying in {delay:.1f} s")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _redis_lost(self, detail: str) -> None:
        level = logging.DEBUG if self._redis_down else logging.WARNING
        log.log(level, "Redis push broker at %s: %s", self.url, detail)
        self._redis_down = True

    def _redis_up(self) -> None:
        if self._redis_down:
            log.info("Redis push broker at %s: connected again", self.url)
            self._redis_down = False

    @contextlib.asynccontextmanager
    async def lock(self, name: str, ttl: float) -> AsyncIterator[None]:
        """Hold a lock shared by every daemon (at most `ttl` seconds); without Redis, proceed unlocked."""
        lock = self._redis.lock(f"{self._prefix}lock:{name}", timeout=ttl, sleep=0.05, blocking_timeout=ttl)
        try:
            acquired = await lock.acquire()
        except (RedisError, OSError) as exc:
            self._redis_lost(f"taking lock {name} failed: {exc}")
            acquired = False
        try:
            yield
        finally:
            if acquired:
                with contextlib.suppress(LockError, RedisError, OSError):
                    await lock.release()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await super().close()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

