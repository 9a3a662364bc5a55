"""Open push streams (SSE and WebSocket): following grants, closing on revoked credentials and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from jmaple.auth import Authenticator
from jmaple.core.context import Principal
from jmaple.push.broker import Subscription

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0


class Stream:
    """One open stream: who it belongs to, its subscription (if any), and how to end it."""

    def __init__(self, principal: Principal, header: str, on_close: Callable[[int, str], Awaitable[None]]):
        self.principal = principal
        self.header = header
        self.subscription: Subscription | None = None
        self.closed = False
        self._on_close = on_close

    def follow(self, principal: Principal) -> None:
        """The principal's accounts changed (a grant given or revoked): watch the new set."""
        self.principal = principal
        if self.subscription is not None and self.subscription.account_ids != frozenset(principal.accounts):
            self.subscription.set_accounts(principal.accounts)

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.subscription is not None:
            self.subscription.close()   # wakes the writer, whose next() then returns nothing
        with contextlib.suppress(Exception):
            await self._on_close(code, reason)

    async def close_for_shutdown(self) -> None:
        await self.close(1001, "server shutting down")


class StreamSupervisor:
    """Rechecks every open stream's credentials once a second (once per distinct credential)."""

    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator
        self.streams: set[Stream] = set()

    def add(self, stream: Stream) -> None:
        self.streams.add(stream)

    def discard(self, stream: Stream) -> None:
        self.streams.discard(stream)

    async def check(self) -> None:
        by_header: dict[str, list[Stream]] = {}
        for stream in list(self.streams):
            by_header.setdefault(stream.header, []).append(stream)
        for header, streams in by_header.items():
            principal = await self.authenticator.authenticate(header)
            for stream in streams:
                if principal is None:
                    await stream.close(1008, "credentials revoked")
                elif principal is not stream.principal:
                    stream.follow(principal)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                await self.check()
            except Exception:
                log.exception("rechecking stream credentials failed")
