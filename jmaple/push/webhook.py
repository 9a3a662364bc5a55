"""PushSubscription delivery (RFC 8620 §7.2): verification, fanout_state_change, retries, SSRF protection.

Changes reach WebhookDelivery through the broker's on_publish hook, which only merges them into a map
in memory; one intake task turns that map into pending rows in SQLite (newest state per subscription,
account and type), and one worker per subscription with something pending POSTs it, coalescing whatever
arrived meanwhile. Nothing here runs on a request's path, and nothing is lost across a restart but the
few milliseconds of changes not yet written.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import ipaddress
import logging
import random
import secrets
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from jmaple import __version__
from jmaple.config import PushConfig
from jmaple.core import push_state
from jmaple.core.context import Runtime
from jmaple.push import webpush
from jmaple.push.broker import merge_states
from jmaple.push.webpush import VapidKey
from jmaple.store import changes
from jmaple.store import push as store
from jmaple.store.db import Busy, Transaction

log = logging.getLogger(__name__)

VAPID_FILE = "vapid.pem"           # in the data directory
ENGINE = "webhooks"                # runtime.extra key of the running WebhookDelivery
VAPID = "vapid"                    # runtime.extra key of the VapidKey
SWEEP_INTERVAL = 300.0             # seconds between clean-ups of expired subscriptions
STOP_TIMEOUT = 10.0                # seconds the intake and recorder get to finish when stopping
MAX_RETRY_AFTER = 86400.0          # a Retry-After beyond this is taken as this
MAX_URL_LENGTH = 2048
MAX_PAYLOAD = webpush.MAX_PAYLOAD_SIZE   # one RFC 8291 record; plain JSON bodies keep the same bound
EMAIL_DELIVERY = "EmailDelivery"   # RFC 8621 §1.5: a new message arrived, worth waking a device for
# RFC 8620 §7.2: after the PushVerification nothing more may go to the URL until the client proves it got
# it, since a URL that takes no verification is likely not the client's (the flood verification exists
# to prevent). A failed verification POST is therefore retried only for transient failures shortly after
# the subscription was created: at most VERIFICATION_ATTEMPTS POSTs, none later than VERIFICATION_WINDOW
# seconds after creation. Then the subscription is destroyed: it could never be verified (its code is
# only shown to whoever received it), and the client, seeing it gone, may create another.
VERIFICATION_ATTEMPTS = 3
VERIFICATION_WINDOW = 120.0
# RFC 8620 §7.2: a destroyed subscription's URL and keys are to leave storage as soon as possible. The
# rows are zeroed in the database file as they go (store.push); the WAL keeps older copies of their pages
# until it is checkpointed and truncated, which a background task does after each batch of destructions.
CHECKPOINT_TIMEOUT = 1.0           # seconds a checkpoint waits for other connections to let it finish
CHECKPOINT_RETRY = 5.0             # seconds before trying again when they did not
CHECKPOINT_TRIES = 3


class TargetRefusedError(OSError):
    """The push URL's host is (or resolves to) an address that is not globally routable."""


def settings_of(runtime: Runtime) -> Any:
    """The webhook settings of this runtime: its [push] section."""
    return runtime.config.push


def engine_of(runtime: Runtime) -> WebhookDelivery | None:
    """The running delivery engine, or None (a CLI command has none: the daemon picks the work up)."""
    return runtime.extra.get(ENGINE)


# --- targets ---------------------------------------------------------------------------------------------


def is_public_address(address: str) -> bool:
    """Whether an IP address is globally routable: not loopback, private, link-local, CGNAT, multicast, ...

    IPv6 forms that embed an IPv4 address (mapped, 6to4, NAT64) are judged by that address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
        if ip.teredo is not None:
            return False
    return ip.is_global and not ip.is_multicast


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _literal(host: str) -> str | None:
    """The host as an IP address string if it is one (brackets and zone ids allowed), else None."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    return candidate


def check_target_url(url: str, *, allow_private: bool) -> None:
    """Refuse a push URL we must not POST to; ValueError says why.

    https:// only (RFC 8620 §7.2), an absolute URL with a host, no credentials, no fragment. Unless
    `allow_private`, a host that is an IP literal must be globally routable and names under "localhost"
    (RFC 6761 §6.3) are refused; other names are checked at connect time, on the address used.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError("url must be ASCII without spaces or control characters (percent-encode the rest)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url is not a valid URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise ValueError("url must begin with https:// (RFC 8620 §7.2)")
    host = parts.hostname
    if not host or not parts.netloc:
        raise ValueError("url has no host")
    if "@" in parts.netloc:
        raise ValueError("url must not carry credentials (user@host)")
    if parts.fragment or url.endswith("#"):
        raise ValueError("url must not have a fragment")
    if port == 0:
        raise ValueError("url has port 0")
    if allow_private:
        return
    literal = _literal(host)
    if literal is not None:
        if not is_public_address(literal):
            raise ValueError(f"url: {literal} is not a globally routable address")
    elif host.rstrip(".").lower() == "localhost" or host.rstrip(".").lower().endswith(".localhost"):
        raise ValueError("url: localhost is not a globally routable address")


class PublicResolver(AbstractResolver):
    """Resolves as aiohttp would, keeping only globally routable addresses (unless private ones are allowed).

    aiohttp connects to exactly the addresses its resolver returns, so what is checked here is what
    is connected to: a name that resolves to a public address when the subscription is created and to a
    private one later (DNS rebinding) is refused at delivery.
    """

    def __init__(self, inner: AbstractResolver, allow_private: bool):
        self.inner = inner
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        if self.allow_private:
            return found
        kept = [r for r in found if is_public_address(r["host"])]
        if not kept:
            raise TargetRefusedError(f"{host} resolves only to addresses that are not globally routable")
        return kept

    async def close(self) -> None:
        await self.inner.close()


def _public_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp's socket factory, refusing any address that is not globally routable (IP literals too)."""
    family, type_, proto, _, address = addr_info
    if not is_public_address(address[0]):
        raise TargetRefusedError(f"{address[0]} is not a globally routable address")
    return socket.socket(family=family, type=type_, proto=proto)


def ssl_context(settings: PushConfig) -> ssl.SSLContext:
    """The system trust store (SSL_CERT_FILE and SSL_CERT_DIR honoured), plus extra_ca_file if set."""
    context = ssl.create_default_context()
    if settings.extra_ca_file:
        context.load_verify_locations(settings.extra_ca_file)
    return context


def client_session(settings: PushConfig) -> aiohttp.ClientSession:
    """The HTTP client for webhooks: guarded resolver and sockets, our TLS trust, no cookies, no proxy.

    Call it with the event loop running; close it (it is an async context manager) after the engine.
    """
    allow = settings.allow_private_targets
    connector = aiohttp.TCPConnector(
        limit=settings.concurrency,
        ssl=ssl_context(settings),
        resolver=PublicResolver(DefaultResolver(), allow),
        socket_factory=None if allow else _public_socket,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.timeout),
        headers={"User-Agent": f"jmaple/{__version__}"},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
    )


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


# --- delivery --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One POST: body (before encryption), headers, and the pending states it carries."""

    kind: str                                    # "verification" or "state"
    payload: bytes
    urgency: str
    topic: str
    sent: tuple[tuple[str, str, str], ...] = ()


Listener = Callable[[str, str, str], None]       # (event, subscription id, detail)
Lock = Callable[[str, float], contextlib.AbstractAsyncContextManager[None]]   # (name, seconds held at most)


class WebhookDelivery:
    """The webhook engine: intake of changes, one worker per subscription with work, bounded concurrency.

    Use it as an async context manager: entering loads the VAPID key, resumes what a previous run left
    pending and starts the intake; leaving writes what is still in memory and stops every worker.
    """

    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession, settings: PushConfig | None = None,
                 lock: Lock | None = None):
        self.runtime = runtime
        # Several daemons (the Redis broker) may each run a worker for one subscription: the lock, shared
        # by all of them, makes each attempt read the pending rows the previous one left, never the same.
        self._lock = lock
        self.db = runtime.db
        self.http = http
        self.settings = settings or settings_of(runtime)
        self.clock = runtime.config.clock
        self.vapid: VapidKey | None = None
        self._incoming: dict[str, dict[str, str]] = {}
        self._wake = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self.settings.concurrency)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Listener] = []
        # Outcomes of attempts wait here to be written together, one transaction for many.
        self._outbox: list[tuple[Callable[[Transaction], Awaitable[None]], asyncio.Future[None]]] = []
        self._outbox_ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._erase = asyncio.Event()  # subscriptions were destroyed: truncate the WAL
        self._seq = 0              # the global commit sequence at the last intake: StateChange.pushState
        self._running = False

    async def __aenter__(self) -> WebhookDelivery:
        path = self.runtime.config.data_dir / VAPID_FILE
        self.vapid = await asyncio.to_thread(VapidKey.load_or_create, path)
        self.runtime.extra[VAPID] = self.vapid
        self._running = True
        await self.sweep()
        async with self.db.read() as conn:
            self._seq = await changes.current_seq(conn)
            waiting = await store.pending_subscriptions(conn, self.clock())
        self._tasks = [asyncio.create_task(self._intake(), name="jmaple.webhooks.intake"),
                       asyncio.create_task(self._recorder(), name="jmaple.webhooks.recorder"),
                       asyncio.create_task(self._sweeper(), name="jmaple.webhooks.sweep"),
                       asyncio.create_task(self._eraser(), name="jmaple.webhooks.erase")]
        for sub_id in waiting:
            self.kick(sub_id)
        self.runtime.extra[ENGINE] = self
        if waiting:
            log.info("resuming webhook delivery for %d subscriptions", len(waiting))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        # Workers first: they never hold the database writer, so cancelling them is safe, and what they
        # finished is already queued for the recorder.
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()
        # The loops are not cancelled but told to stop: a cancellation landing inside a transaction can
        # leave it open or come back as another error. Each ends after its current pass; the intake then
        # writes what arrived (the next start sends it) and the recorder the outcomes of POSTs already
        # made (else a restart would repeat them).
        self._stopped.set()
        self._wake.set()
        self._outbox_ready.set()
        self._erase.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._flush()
            await self._write_outbox()
        except Exception:
            log.exception("writing pending webhook deliveries at shutdown failed")
        if self.runtime.extra.get(ENGINE) is self:
            del self.runtime.extra[ENGINE]

    def add_listener(self, listener: Listener) -> None:
        """Call listener(event, subscription_id, detail) on "delivered", "failed", "destroyed" and "expired",
        and listener("erased", "", "") once the WAL was truncated after destructions."""
        self._listeners.append(listener)

    def _emit(self, event: str, sub_id: str, detail: str) -> None:
        for listener in self._listeners:
            try:
                listener(event, sub_id, detail)
            except Exception:
                log.exception("webhook listener failed")

    # Intake: broker -> pending rows.

    def notify(self, account_id: str, type_states: Mapping[str, str]) -> None:
        """The broker's on_publish hook: remember the newest states and wake the intake; never waits."""
        if not self._running or not type_states:
            return
        merge_states(self._incoming.setdefault(account_id, {}), type_states)
        self._wake.set()

    async def _intake(self) -> None:
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Busy:
                log.warning("database busy; queueing webhook deliveries again in a second")
                await asyncio.sleep(1.0)
                self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queueing webhook deliveries failed; these changes are not pushed to webhooks")

    async def _flush(self) -> None:
        """Write the changes received since the last flush as pending deliveries, and start their workers.

        Raises Busy (the batch is kept for the next flush); on any other error the batch is dropped, so
        one bad batch cannot block the ones after it.
        """
        batch, self._incoming = self._incoming, {}
        if not batch:
            return
        try:
            async with self.db.write() as tx:
                now = self.clock()
                expired = await store.delete_expired(tx, now)
                found = await store.subscribers(tx, list(batch), now)
                rows: list[tuple[str, str, str, str]] = []
                for sub_id, account_id, types in found:
                    for type_name, state in batch[account_id].items():
                        if types is None or type_name in types:
                            rows.append((sub_id, account_id, type_name, state))
                await store.add_pending(tx, rows)
                self._seq = max(self._seq, await changes.current_seq(tx))
        except (Busy, asyncio.CancelledError):
            for account_id, type_states in batch.items():   # put it back under what arrived since
                merge_states(self._incoming.setdefault(account_id, {}), type_states, arrived_later=False)
            raise
        if expired:
            self.erase_soon()
        for sub_id in expired:
            self._emit("expired", sub_id, "")
        for sub_id in dict.fromkeys(r[0] for r in rows):
            self.kick(sub_id)

    async def _sweeper(self) -> None:
        while self._running:
            try:
                await asyncio.wait_for(self._stopped.wait(), SWEEP_INTERVAL)
                return
            except TimeoutError:
                pass
            try:
                await self.sweep()
            except Exception:
                log.exception("cleaning up expired push subscriptions failed")

    async def sweep(self) -> list[str]:
        """Destroy expired subscriptions (RFC 8620 §7.2 allows it at or after expiry); returns their ids."""
        async with self.db.write() as tx:
            expired = await store.delete_expired(tx, self.clock())
        if expired:
            self.erase_soon()
        for sub_id in expired:
            self._emit("expired", sub_id, "")
        return expired

    def erase_soon(self) -> None:
        """Subscriptions were destroyed (and committed): have the WAL truncated soon, off the caller's path."""
        if self._running:
            self._erase.set()

    async def _eraser(self) -> None:
        while self._running:
            await self._erase.wait()
            self._erase.clear()
            for _ in range(CHECKPOINT_TRIES):
                if not self._running:
                    return   # closing the last connection checkpoints too
                try:
                    done = await asyncio.to_thread(store.truncate_wal, self.db.path, CHECKPOINT_TIMEOUT)
                except Exception:
                    log.exception("truncating the WAL after destroying push subscriptions failed")
                    break
                if done:
                    self._emit("erased", "", "")
                    break
                try:   # another connection was reading or writing: try again a little later
                    await asyncio.wait_for(self._stopped.wait(), CHECKPOINT_RETRY)
                    return
                except TimeoutError:
                    pass
            else:
                log.info("could not truncate the WAL after destroying push subscriptions (the database stayed "
                         "busy); SQLite's own checkpoints overwrite it in time")

    # Workers: pending rows -> POSTs.

    def kick(self, sub_id: str) -> None:
        """Make sure a worker looks at this subscription soon (a new subscription, or new pending states)."""
        if not self._running:
            return
        if sub_id in self._workers:
            self._dirty.add(sub_id)
            return
        self._workers[sub_id] = asyncio.create_task(self._work(sub_id), name=f"jmaple.webhook.{sub_id}")

    async def _work(self, sub_id: str) -> None:
        try:
            while self._running:
                self._dirty.discard(sub_id)
                async with self._semaphore, self._exclusive(sub_id):
                    async with self.db.read() as conn:
                        job = await store.job(conn, sub_id)
                    wait = self._wait(job)
                    if job is not None and wait == 0.0:
                        await self._attempt(job)
                        continue
                if wait is None:
                    if sub_id in self._dirty:
                        continue
                    return
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The pending rows stay; the next change for this subscription (or a restart) retries them.
            log.exception("webhook worker for push subscription %s failed", sub_id)
        finally:
            if self._workers.get(sub_id) is asyncio.current_task():
                del self._workers[sub_id]

    def _exclusive(self, sub_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        if self._lock is None:
            return contextlib.nullcontext()
        # Held for one attempt: a POST (at most the timeout) and the commit of its outcome.
        return self._lock(f"webhook:{sub_id}", self.settings.timeout + 30.0)

    def _wait(self, job: store.Job | None) -> float | None:
        """Seconds until the job is due (0.0: now), or None when there is nothing to do."""
        if job is None:
            return None
        sub = job.sub
        if sub.expires <= self.clock():
            return 0.0
        if sub.is_verified:
            if not job.pending and not job.stale:
                return None
        elif sub.verification_sent:
            return None
        if sub.next_attempt_at is None:
            return 0.0
        return max(sub.next_attempt_at - self.clock(), 0.0)

    async def _attempt(self, job: store.Job) -> None:
        sub = job.sub
        if sub.expires <= self.clock():
            await self._record(functools.partial(self._destroy, sub_id=sub.id))
            self._emit("expired", sub.id, "")
            return
        if not sub.is_verified and sub.failures and self.clock() - sub.created_at >= VERIFICATION_WINDOW:
            # A retry left over from before a restart: too late to send (see VERIFICATION_WINDOW).
            await self._record(functools.partial(self._destroy, sub_id=sub.id))
            self._emit("destroyed", sub.id, f"verification failed: {sub.last_status or '-'}")
            return
        if sub.is_verified and not job.pending:
            await self._record(functools.partial(store.forget_pending, sub_id=sub.id, rows=job.stale))
            return
        if sub.is_verified:
            message = self._message(job, push_state.encode(self._seq))
        else:
            message = self._verification(sub)
        status, code, delay = await self._post(sub, message)
        now = self.clock()
        if code is not None and 200 <= code < 300:
            await self._record(functools.partial(
                store.delivered, sub_id=sub.id, now=now, status=status,
                verification=message.kind == "verification", sent=message.sent + job.stale))
            self._emit("delivered", sub.id, status)
            return
        if code in (404, 410):
            # RFC 8030 §7.3: the push subscription is gone (expired, or the user agent dropped it).
            log.info("push subscription %s: the endpoint answered %s; destroying it", sub.id, code)
            await self._record(functools.partial(self._destroy, sub_id=sub.id))
            self._emit("destroyed", sub.id, status)
            return
        failures = sub.failures + 1
        failing_since = sub.failing_since if sub.failing_since is not None else now
        base = min(self.settings.backoff_max, self.settings.backoff_initial * 2 ** min(failures - 1, 62))
        wait = base / 2 + random.random() * base / 2
        if delay is not None:
            # RFC 8620 §7.2: a 429 must slow us down; its Retry-After (or a 503's) says by how much.
            wait = max(wait, delay)
        if message.kind == "verification":
            if failures >= VERIFICATION_ATTEMPTS or now + wait - sub.created_at > VERIFICATION_WINDOW:
                log.info("push subscription %s: the verification could not be delivered (%s); destroying it",
                         sub.id, status)
                await self._record(functools.partial(self._destroy, sub_id=sub.id))
                self._emit("destroyed", sub.id, f"verification failed: {status}")
                return
        elif now - failing_since >= self.settings.give_up_after:
            log.warning("push subscription %s: failing for %.0f s (%s); destroying it",
                        sub.id, now - failing_since, status)
            await self._record(functools.partial(self._destroy, sub_id=sub.id))
            self._emit("destroyed", sub.id, f"gave up: {status}")
            return
        await self._record(functools.partial(store.failed, sub_id=sub.id, now=now, status=status,
                                             failures=failures, failing_since=failing_since,
                                             next_attempt_at=now + wait))
        log.info("push subscription %s: attempt %d failed (%s); next in %.1f s", sub.id, failures, status, wait)
        self._emit("failed", sub.id, status)

    async def _destroy(self, tx: Transaction, sub_id: str) -> None:
        await store.delete(tx, [sub_id])
        tx.after_commit(self.erase_soon)

    async def _record(self, write: Callable[[Transaction], Awaitable[None]]) -> None:
        """Have write(tx) run in the recorder's next transaction, and wait until it committed.

        Outcomes of attempts are written together (a commit per batch, not per POST); a worker cancelled
        while waiting leaves its write queued, and stopping the engine still commits it.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((write, future))
        self._outbox_ready.set()
        await asyncio.shield(future)

    async def _recorder(self) -> None:
        while self._running:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            try:
                await self._write_outbox()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording webhook outcomes failed")

    async def _write_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        try:
            async with self.db.write() as tx:
                for write, _ in batch:
                    await write(tx)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                    future.exception()   # retrieved: a worker that stopped waiting must not warn
            raise
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _verification(self, sub: store.Subscription) -> Message:
        payload = orjson.dumps({"@type": "PushVerification", "pushSubscriptionId": sub.id,
                                "verificationCode": sub.verification_code})
        return Message("verification", payload, "normal", webpush.make_topic(sub.id, "verification"))

    def _message(self, job: store.Job, token: str) -> Message:
        """A StateChange of as many pending states as fit in one push message (the rest go next)."""
        empty = len(orjson.dumps(push_state.state_change({}, token)))
        changed: dict[str, dict[str, str]] = {}
        sent: list[tuple[str, str, str]] = []
        size = empty
        for account_id, type_name, state in job.pending:
            cost = len(orjson.dumps(type_name)) + len(orjson.dumps(state)) + 2
            if account_id not in changed:
                cost += len(orjson.dumps(account_id)) + 3
            if size + cost > MAX_PAYLOAD and sent:
                break
            changed.setdefault(account_id, {})[type_name] = state
            sent.append((account_id, type_name, state))
            size += cost
        payload = orjson.dumps(push_state.state_change(changed, token))
        urgency = "high" if any(t == EMAIL_DELIVERY for _, t, _ in sent) else "normal"
        # RFC 8030 §5.4: a message replaces an undelivered one with the same topic. Only one naming the
        # same (account, type) pairs, with states at least as new, can replace another without loss.
        scope = orjson.dumps(sorted([a, t] for a, t, _ in sent)).decode()
        return Message("state", payload, urgency, webpush.make_topic(job.sub.id, scope), tuple(sent))

    async def _post(self, sub: store.Subscription, message: Message) -> tuple[str, int | None, float | None]:
        """POST one message; (status for the record, HTTP status or None, seconds to wait before retrying)."""
        settings = self.settings
        now = self.clock()
        headers = webpush.push_headers(settings.ttl, message.urgency, message.topic)
        try:
            check_target_url(sub.url, allow_private=settings.allow_private_targets)
            payload = message.payload
            if sub.has_keys:
                assert sub.p256dh is not None and sub.auth is not None and self.vapid is not None
                data = webpush.encrypt(payload, sub.p256dh, sub.auth)
                headers.update(webpush.CONTENT_HEADERS)
                headers.update(self.vapid.headers(sub.url, settings.vapid_contact, now))
            else:
                data = payload
                headers["Content-Type"] = "application/json"
        except ValueError as exc:
            return f"refused: {exc}", None, None
        try:
            async with self.http.post(sub.url, data=data, headers=headers, allow_redirects=False) as resp:
                code = resp.status
                delay = retry_after(resp.headers.get("Retry-After"), now) if code in (429, 503) else None
                return str(code), code, delay
        except TargetRefusedError as exc:
            return f"refused: {exc}", None, None
        except aiohttp.ClientConnectorCertificateError as exc:
            return f"TLS certificate error: {exc.certificate_error}", None, None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, TargetRefusedError):
                return f"refused: {exc.os_error}", None, None
            return f"cannot connect: {exc.os_error}", None, None
        except asyncio.TimeoutError:
            return "timeout", None, None
        except aiohttp.ClientError as exc:
            return f"error: {type(exc).__name__}: {exc}", None, None


WEBHOOKS = web.AppKey("jmaple.webhooks", WebhookDelivery)


def fanout_state_change(app: Mapping[Any, Any], http: aiohttp.ClientSession, account_id: str,
                        type_states: Mapping[str, str]) -> None:
    """The broker's on_publish hook (registered by lifespan): queue the change for every webhook that
    wants it; returns at once, never waiting for a delivery."""
    engine = app.get(WEBHOOKS)
    if engine is not None:
        engine.notify(account_id, type_states)


async def erase_destroyed(runtime: Runtime) -> None:
    """Call after committing the destruction of subscriptions: the running engine truncates the WAL soon;
    without one (a CLI command), it is done now, best effort (a daemon beside it may keep it busy)."""
    engine = engine_of(runtime)
    if engine is not None:
        engine.erase_soon()
        return
    if not await asyncio.to_thread(store.truncate_wal, runtime.db.path, CHECKPOINT_TIMEOUT):
        log.info("could not truncate the WAL after destroying push subscriptions (the database is busy)")


def new_verification_code() -> str:
    """A code of 192 random bits (RFC 8620 §7.2.2: enough entropy that it cannot be guessed)."""
    return secrets.token_urlsafe(24)
