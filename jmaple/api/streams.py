"""Open push streams (SSE and WebSocket): following grants, closing on revoked credentials, shutdown and
vanished clients, and the encodings and catch-up reads that streams sending the same thing share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from jmaple.auth import Authenticator
from jmaple.core.context import Principal
from jmaple.push.broker import Subscription
from jmaple.store import accounts

log = logging.getLogger(__name__)

RECHECK_SECONDS = 0.5    # grants and credentials of open streams: a change reaches them well within 1 s
VERSIONS_BATCH = 500     # users whose versions one statement reads
SWEEP_SECONDS = 0.5      # connections that went away without our noticing (nothing written since)
SWEEP_BATCH = 500        # streams released at once; their handlers all wake in one turn of the loop
SWEEP_AGAIN = 0.05       # seconds before the next batch
ENCODED_MAX = 64
SHARED_READS_MAX = 1024

T = TypeVar("T")


class Stream:
    """One open stream: who it belongs to, its subscription (if any), and how to end it.

    `transport`, when given, is the client's connection: a stream whose connection closed is released by
    the supervisor's sweep, since a handler that only waits for changes would otherwise notice it at its
    next write, which may never come (an SSE stream without pings).
    """

    __slots__ = ("principal", "header", "subscription", "closed", "_on_close", "transport", "__weakref__")

    def __init__(self, principal: Principal, header: str, on_close: Callable[[int, str], Awaitable[None]],
                 transport: asyncio.BaseTransport | None = None):
        self.principal = principal
        self.header = header
        self.subscription: Subscription | None = None
        self.closed = False
        self._on_close = on_close
        self.transport = transport

    def follow(self, principal: Principal) -> None:
        """The principal's accounts changed (a grant given or revoked): watch the new set."""
        if self.closed:
            return
        self.principal = principal
        if self.subscription is not None and self.subscription.account_ids != frozenset(principal.accounts):
            self.subscription.set_accounts(principal.accounts)

    def gone(self) -> bool:
        """Whether the client's connection is closed or closing."""
        return self.transport is not None and self.transport.is_closing()

    def release(self) -> None:
        """Stop pushing: mark the stream closed and wake its writer (whose next() then returns nothing)."""
        self.closed = True
        if self.subscription is not None:
            self.subscription.close()

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.release()
        with contextlib.suppress(Exception):
            await self._on_close(code, reason)

    async def close_for_shutdown(self) -> None:
        await self.close(1001, "server shutting down")


class EncodedEvents:
    """The wire bytes of recent events, so that streams sending the same event encode it once.

    The broker hands every subscriber with the same type filter the very same `changed` map, and every
    stream writing at that moment uses the same watermark for its pushState, so an event fanned out to
    10,000 streams is one entry here. An entry keeps its `changed` alive, so that its id() cannot be
    reused while it is cached.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, int, int], tuple[object, Any]] = {}
        self._last: tuple[Any, object, int, Any] | None = None

    def get(self, encode: Callable[[Any, int], T], changed: Any, seq: int) -> T:
        """encode(changed, seq), computed once for each (encode, changed object, seq)."""
        last = self._last
        if last is not None and last[1] is changed and last[2] == seq and last[0] is encode:
            return last[3]   # type: ignore[no-any-return]   # the usual case in a fan-out: no allocation
        key = (encode, id(changed), seq)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is changed:
            value = entry[1]
        else:
            value = encode(changed, seq)
            if len(self._entries) >= ENCODED_MAX:
                self._entries.clear()
            self._entries[key] = (changed, value)
        self._last = (encode, changed, seq, value)
        return value   # type: ignore[no-any-return]


class SharedReads:
    """One store read for many identical questions asked while nothing was published.

    A crowd of clients reconnecting at once (a proxy restarted, a laptop woke a browser) asks the same
    Last-Event-ID question. An answer started at broker generation g covers every state published before
    it; a caller that subscribed before asking, still at generation g, gets every later state from its
    subscription, so the shared answer is as good as its own read.
    """

    def __init__(self) -> None:
        self._reads: dict[Hashable, tuple[int, asyncio.Future[Any]]] = {}

    async def get(self, key: Hashable, generation: int, read: Callable[[], Awaitable[T]]) -> T:
        entry = self._reads.get(key)
        if entry is None or entry[0] != generation:
            if entry is not None or len(self._reads) >= SHARED_READS_MAX:
                # Answers of an older generation can never be used again.
                current = {k: e for k, e in self._reads.items() if e[0] == generation}
                self._reads = current if len(current) < SHARED_READS_MAX else {}
            task = asyncio.ensure_future(read())
            task.add_done_callback(lambda done: self._forget_failed(key, done))
            entry = self._reads[key] = (generation, task)
        # Shielded: a caller that goes away does not cancel the others' answer.
        return await asyncio.shield(entry[1])   # type: ignore[no-any-return]

    def _forget_failed(self, key: Hashable, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or done.exception() is not None:
            entry = self._reads.get(key)
            if entry is not None and entry[1] is done:
                del self._reads[key]


class StreamSupervisor:
    """Rechecks open streams' grants and credentials every RECHECK_SECONDS, and releases streams whose
    client went away."""

    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator
        self.streams: set[Stream] = set()
        self.encoded = EncodedEvents()
        self.reads = SharedReads()

    def add(self, stream: Stream) -> None:
        self.streams.add(stream)

    def discard(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def sweep(self, limit: int = SWEEP_BATCH) -> bool:
        """Release streams whose connection closed, at most `limit`; returns whether more are left.

        When thousands of clients leave at once (a proxy restarts), waking all their handlers in one turn
        of the event loop would keep it from accepting their reconnections for that long.
        """
        gone = [s for s in self.streams if not s.closed and s.gone()]
        for stream in gone[:limit]:
            stream.release()
        return len(gone) > limit

    async def check(self) -> None:
        """Follow grants given or revoked, and close the streams of revoked credentials (1008).

        Every such change bumps the user's version, so one read of the versions of all the streams' users
        tells which streams need a look; only their credentials are verified again.
        """
        streams = [s for s in self.streams if not s.closed]
        if not streams:
            return
        user_ids = sorted({s.principal.user_id for s in streams})
        current: dict[str, int] = {}
        async with self.authenticator.db.read() as conn:
            for start in range(0, len(user_ids), VERSIONS_BATCH):
                current.update(await accounts.versions(conn, user_ids[start:start + VERSIONS_BATCH]))
        by_header: dict[str, list[Stream]] = {}
        for stream in streams:
            if current.get(stream.principal.user_id) != stream.principal.version:
                by_header.setdefault(stream.header, []).append(stream)
        if not by_header:
            return
        headers = list(by_header)
        # authenticate()'s cache may answer from before the change for up to a second.
        principals = await asyncio.gather(*(self.authenticator.revalidate(h) for h in headers))
        for header, principal in zip(headers, principals):
            for stream in by_header[header]:
                if principal is None:
                    await stream.close(1008, "credentials revoked")
                else:
                    stream.follow(principal)   # a no-op for a stream that closed meanwhile

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_check = loop.time() + RECHECK_SECONDS
        delay = SWEEP_SECONDS
        while True:
            await asyncio.sleep(min(delay, max(0.0, next_check - loop.time())))
            try:
                delay = SWEEP_AGAIN if self.sweep() else SWEEP_SECONDS
                if loop.time() >= next_check:
                    next_check = loop.time() + RECHECK_SECONDS
                    await self.check()
            except Exception:
                log.exception("rechecking open streams failed")
