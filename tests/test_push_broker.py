"""PushBroker (jmaple.push.broker): publish, coalescing subscribers, on_publish hooks."""

from __future__ import annotations

import asyncio
import sys

from jmaple.api.streams import Stream
from jmaple.core.context import Principal
from jmaple.push.broker import PushBroker
from jmaple.store.accounts import Access


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
    assert sub.pending == {}
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
    assert broker.subscriber_count() == 0


async def test_following_accounts_after_closing_is_a_no_op():
    """A closed subscription must never come back into the broker (nor be woken by it)."""
    broker = PushBroker()
    sub = broker.subscribe(["A1"])
    sub.close()
    sub.set_accounts(["A1", "A2"])
    assert broker.subscriber_count() == 0
    assert broker.subscriber_count() == 0
    await broker.publish("A2", {"Note": "1"})
    assert sub.pending == {}
    assert sub.account_ids == frozenset({"A1"})


def principal(*account_ids: str, version: int = 1) -> Principal:
    accounts = {a: Access(a, a, n == 0, True) for n, a in enumerate(account_ids)}
    return Principal("u1", "bob@example.org", "Bob", None, accounts, version)


async def test_a_stream_whose_client_left_during_a_recheck_does_not_follow_a_grant():
    """The race behind it: the supervisor awaits the store to recheck a stream's credentials, the client
    disconnects meanwhile (its handler closes the subscription), then the recheck reports a new grant."""
    broker = PushBroker()

    async def on_close(code: int, reason: str) -> None:
        pass

    stream = Stream(principal("A1"), "Basic x", on_close)
    stream.subscription = broker.subscribe(["A1"])
    stream.subscription.close()                  # the SSE handler's `finally`
    stream.follow(principal("A1", "A2", version=2))
    assert broker.subscriber_count() == 0
    await broker.publish("A2", {"Note": "1"})
    assert stream.subscription.pending == {}


async def test_next_returns_nothing_once_closed():
    broker = PushBroker()
    sub = broker.subscribe(["A1"])
    waiter = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)
    sub.close()
    async with asyncio.timeout(1):
        assert await waiter == {}


async def test_a_sink_takes_each_state_change_while_nothing_is_pending():
    """Subscribers with the same filter are handed the same map, so it can be encoded once for all."""
    broker = PushBroker()
    seen: list[tuple[str, dict]] = []
    subs = []
    for name, types in (("a", None), ("b", None), ("c", ["Email"]), ("d", ["Email"]), ("e", ["Mailbox"])):
        sub = broker.subscribe(["A1"], types)
        sub.sink = lambda changed, name=name: seen.append((name, changed)) is None
        subs.append(sub)
    await broker.publish("A1", {"Note": "1", "Email": "2"})
    assert sorted((name, changed) for name, changed in seen) == [
        ("a", {"A1": {"Note": "1", "Email": "2"}}), ("b", {"A1": {"Note": "1", "Email": "2"}}),
        ("c", {"A1": {"Email": "2"}}), ("d", {"A1": {"Email": "2"}})]
    by_name = dict(seen)
    assert by_name["a"] is by_name["b"] and by_name["c"] is by_name["d"]
    assert all(sub.take() == {} for sub in subs)


async def test_a_refusing_sink_leaves_the_states_pending_and_is_skipped_until_they_are_taken():
    broker = PushBroker()
    sub = broker.subscribe(["A1"])
    offered = []
    accept = False

    def sink(changed):
        offered.append(changed)
        return accept

    sub.sink = sink
    await broker.publish("A1", {"Note": "1"})
    accept = True
    await broker.publish("A1", {"Note": "2"})   # must not overtake the pending "1": merged behind it
    assert offered == [{"A1": {"Note": "1"}}]
    async with asyncio.timeout(1):
        assert await sub.next() == {"A1": {"Note": "2"}}
    await broker.publish("A1", {"Note": "3"})
    assert offered[-1] == {"A1": {"Note": "3"}}
    assert sub.take() == {}


async def test_a_sink_that_fails_or_closes_its_subscription_does_not_stop_the_others():
    broker = PushBroker()
    broken = broker.subscribe(["A1"])
    closing = broker.subscribe(["A1"])
    plain = broker.subscribe(["A1"])

    def fail(changed):
        raise RuntimeError("boom")

    broken.sink = fail
    closing.sink = lambda changed: closing.close() is None
    await broker.publish("A1", {"Note": "1"})
    assert broken.take() == {"A1": {"Note": "1"}}
    assert plain.take() == {"A1": {"Note": "1"}}
    assert closing.closed and broker.subscriber_count() == 2


async def test_the_map_handed_to_sinks_is_never_changed_by_later_merges():
    broker = PushBroker()
    kept = []
    a = broker.subscribe(["A1"])
    a.sink = lambda changed: kept.append(changed) is None
    b = broker.subscribe(["A1"])          # no sink: merges
    states = {"Note": "1"}
    await broker.publish("A1", states)
    await broker.publish("A1", {"Note": "2"})
    states["Note"] = "99"
    assert kept[0] == {"A1": {"Note": "1"}}
    assert b.take() == {"A1": {"Note": "2"}}
