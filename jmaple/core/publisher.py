"""Publishing new states after commit, including commits made by other processes (RFC 8620 §7.1)."""

from __future__ import annotations

import asyncio
import logging

from jmaple.push.broker import PushBroker
from jmaple.store import changes
from jmaple.store.db import Busy, Database

log = logging.getLogger(__name__)


class StatePublisher:
    """Publishes each (account, type) state once, whether this process or another one committed it.

    The Dispatcher publishes its own commits at once; `watch()` polls the change log's global
    sequence and publishes what other processes (the CLI, `jmapled deliver`, another daemon) committed.
    Both go through `publish`, which skips states already published, so nothing is sent twice.
    """

    def __init__(self, db: Database, broker: PushBroker):
        self.db = db
        self.broker = broker
        self._published: dict[tuple[str, str], int] = {}
        self._seq = 0

    @property
    def watermark(self) -> int:
        """Every commit up to this global sequence number has been published (pushState and SSE ids)."""
        return self._seq

    async def start(self) -> None:
        async with self.db.read() as conn:
            self._seq = await changes.current_seq(conn)

    async def publish(self, changed: dict[str, dict[str, int]]) -> None:
        """Publish {account_id: {type: modseq}} minus what was already published."""
        fresh: dict[str, dict[str, str]] = {}
        for account_id, types in changed.items():
            for type_name, modseq in types.items():
                key = (account_id, type_name)
                if modseq > self._published.get(key, 0):
                    self._published[key] = modseq
                    fresh.setdefault(account_id, {})[type_name] = str(modseq)
        for account_id, type_states in fresh.items():
            await self.broker.publish(account_id, type_states)

    async def poll(self) -> None:
        """Publish whatever was committed since the last poll."""
        async with self.db.read() as conn:
            seq = await changes.current_seq(conn)
            if seq == self._seq:
                return
            seq, rows = await changes.committed_since(conn, self._seq)
        changed: dict[str, dict[str, int]] = {}
        for account_id, type_name, modseq in rows:
            changed.setdefault(account_id, {})[type_name] = modseq
        await self.publish(changed)
        # Only now: an event written meanwhile carries the watermark as its id (pushState, SSE id),
        # and must not claim commits that have not been handed to the broker yet.
        self._seq = seq

    async def watch(self, interval: float = 0.25) -> None:
        """Poll forever (a background task of lifespan)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except Busy:
                continue
            except Exception:
                log.exception("polling for changes by other processes failed")
