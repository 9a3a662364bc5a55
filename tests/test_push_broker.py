"""PushBroker (jmaple.push.broker): publish, coalescing subscribers, on_publish hooks."""

from __future__ import annotations

import asyncio
import sys

from jmaple.push.broker import PushBroker


async def test_a_subscriber_receives_the_states_of_its_accounts_only():
    broker = PushBroker()
    sub = broker.subscribe(["A1"])
    await broker.publish("A2", {"Note": "3"})
    await broker.publish("A1", {"Note": "4"})
    async with asyncio.timeout(1):
        assert await sub.next() == {"A1": {"Note": "4"}}
    sub.close()


async def test_a_stalled_subscriber_holds_one_merged_map_of_the_newest_states():
    """Constant memory for a slow client, and nothing lost: newer states cover older ones."""
    broker = PushBroker()
    sub = broker.subscribe(["A1", "A2"])
    for n in range(1, 10_001):
        await broker.publish("A1", {"Note": str(n), "Mailbox": str(n // 2)})
    await broker.publish("A2", {"Email": "7"})
    assert sub.pending == {"A1": {"Note": "10000", "Mailbox": "5000"}, "A2": {"Email": "7"}}
    assert sys.getsizeof(sub.pending) < 1000
    assert sub.take() == {"A1": {"Note": "10000", "Mailbox": "5000"}, "A2": {"Email": "7"}}
    assert sub.take() == {}


async def test_an_older_state_never_replaces_a_newer_one():
    broker = PushBroker()
    sub = broker.subscribe(["A1"])
    await broker.publish("A1", {"Note": "9"})
    await broker.publish("A1", {"Note": "8"})   # e.g. another process's commit, published late
    assert sub.take() == {"A1": {"Note": "9"}}


async def test_type_filter():
    broker = PushBroker()
    sub = broker.subscribe(["A1"], ["Email"])
    await broker.publish("A1", {"Note": "1"})
    assert not sub.ready.is_set()
    await broker.publish("A1", {"Note": "2", "Email": "2"})
    assert sub.take() == {"A1": {"Email": "2"}}


async def test_publish_never_waits_for_hooks():
    broker = PushBroker()
    started = asyncio.Event()
    release = asyncio.Event()
    seen = []

    async def slow_hook(account_id, states):
        started.set()
        await release.wait()
        seen.append((account_id, states))

    broker.add_on_publish(slow_hook)
    broker.add_on_publish(lambda a, s: seen.append(("sync", a)))
    async with asyncio.timeout(1):
        await broker.publish("A1", {"Note": "1"})   # returns although the hook is blocked
        await started.wait()
    assert seen == [("sync", "A1")]
    release.set()
    async with asyncio.timeout(1):
        while len(seen) < 2:
            await asyncio.sleep(0)
    assert seen[1] == ("A1", {"Note": "1"})
    await broker.close()


async def test_a_failing_hook_does_not_stop_delivery():
    broker = PushBroker()

    def broken(account_id, states):
        raise RuntimeError("boom")

    broker.add_on_publish(broken)
    sub = broker.subscribe(["A1"])
    await broker.publish("A1", {"Note": "1"})
    assert sub.take() == {"A1": {"Note": "1"}}


async def test_closing_and_following_accounts_leave_nothing_behind():
    broker = PushBroker()
    subs = [broker.subscribe(["A1", "A2"]) for _ in range(100)]
    subs[0].set_accounts(["A3"])
    await broker.publish("A3", {"Note": "1"})
    assert subs[0].take() == {"A3": {"Note": "1"}}
    assert broker.subscriber_count() == 100
    for sub in subs:
        sub.close()
    assert broker.subscriber_count() == 0
    assert broker._by_account == {}


async def test_next_returns_nothing_once_closed():
    broker = PushBroker()
    sub = broker.subscribe(["A1"])
    waiter = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)
    sub.close()
    async with asyncio.timeout(1):
        assert await waiter == {}
