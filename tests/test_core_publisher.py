"""StatePublisher: commits of other processes are published, and the watermark never runs ahead of them."""

from __future__ import annotations

import asyncio

from jmaple.app import open_runtime
from jmaple.config import Config
from jmaple.core.publisher import StatePublisher
from jmaple.push.broker import PushBroker
from jmaple.store import changes
from jmaple.users import create_user


class SlowBroker(PushBroker):
    """A broker whose publish takes a while (as Redis does), noting the watermark meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.publisher: StatePublisher | None = None
        self.seen: list[tuple[dict[str, str], int]] = []

    async def publish(self, account_id: str, type_states: dict[str, str]) -> None:
        await asyncio.sleep(0.01)
        assert self.publisher is not None
        self.seen.append((type_states, self.publisher.watermark))
        await super().publish(account_id, type_states)


async def test_the_watermark_moves_only_after_the_commits_it_covers_are_published(tmp_path):
    """An SSE id or pushState is the watermark: while the poller hands commits to the broker, an event
    written meanwhile must not carry a token claiming them, or a client resuming from it misses them."""
    config = Config.for_tests(data_dir=tmp_path / "data")
    async with open_runtime(config) as runtime:
        alice = await create_user(runtime, "alice@example.org", "Alice", "pw")
        broker = SlowBroker()
        publisher = StatePublisher(runtime.db, broker)
        broker.publisher = publisher
        await publisher.start()
        before = publisher.watermark
        async with runtime.db.write() as tx:   # as another process would commit
            await changes.record(tx, alice.account_id, "Note", created=["N1"])
            await changes.record(tx, alice.account_id, "Notebook", created=["B1"])
        await publisher.poll()
        assert {t for states, _ in broker.seen for t in states} == {"Note", "Notebook"}
        assert all(mark == before for _, mark in broker.seen)
        async with runtime.db.read() as conn:
            assert publisher.watermark == await changes.current_seq(conn) > before
