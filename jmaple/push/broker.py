"""PushBroker: publish StateChanges, coalesce them per subscriber, call on_publish hooks (RFC 8620 §7.1)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

TypeStates = dict[str, str]
Changed = dict[str, TypeStates]          # accountId -> {type: state}, the "changed" of a StateChange
Hook = Callable[[str, TypeStates], Any]   # may return an awaitable, run as its own task


def newer_state(later: str, earlier: str) -> str:
    """Of a state that arrived `later` and one that arrived `earlier`, the newer: ours are decimal modseqs,
    compared as numbers (an older one can arrive late from another process); any other string, the later."""
    try:
        return earlier if int(earlier) > int(later) else later
    except ValueError:
        return later


def merge_states(into: dict[str, str], type_states: Mapping[str, str], *,
                 arrived_later: bool = True) -> None:
    """Merge type_states into `into`, keeping each type's newer state (newer_state); type_states arrived
    after what `into` holds, unless arrived_later is False."""
    for type_name, state in type_states.items():
        old = into.get(type_name)
        if old is None:
            into[type_name] = state
        else:
            into[type_name] = newer_state(state, old) if arrived_later else newer_state(old, state)


Sink = Callable[[Changed], bool]


class Subscription:
    """One subscriber: a merged map of the newest pending states, and a way to wake its writer.

    However long the reader stalls, this holds at most one state per (account, type): constant memory,
    and nothing is lost, since a newer state covers every older one.

    A subscriber may also set `sink`: while nothing is pending, the broker first offers each StateChange
    to it, from the publishing code itself; a sink that returns True has delivered it (say, written it to
    a socket that had room), so no writer task needs to wake for it. When it returns False the states
    are merged into `pending` as usual. A sink must not block, raise, or publish.
    """

    __slots__ = ("_broker", "account_ids", "type_filter", "pending", "closed", "sink", "_waiter")

    def __init__(self, broker: PushBroker, account_ids: Iterable[str], type_filter: frozenset[str] | None):
        self._broker = broker
        self.account_ids: frozenset[str] = frozenset(account_ids)
        self.type_filter = type_filter
        self.pending: Changed = {}
        self.closed = False
        self.sink: Sink | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _merge(self, account_id: str, type_states: TypeStates) -> None:
        """Add states (already filtered) to the pending map and wake the writer; never keeps `type_states`."""
        merged = self.pending.get(account_id)
        if merged is None:
            self.pending[account_id] = dict(type_states)
        else:
            merge_states(merged, type_states)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take(self) -> Changed:
        """Everything pending since the last take (possibly empty)."""
        changed, self.pending = self.pending, {}
        return changed

    async def next(self) -> Changed:
        """Wait for the next non-empty batch of changes; {} once the subscription is closed."""
        while not self.closed:
            if self.pending:
                return self.take()
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return {}

    def set_accounts(self, account_ids: Iterable[str]) -> None:
        """Follow a grant given or revoked while the stream is open; nothing once closed.

        A stream may close while whoever rechecks its grants is awaiting the store: re-indexing then would
        put a dead subscription back in the broker for good.
        """
        if self.closed:
            return
        self._broker._reindex(self, frozenset(account_ids))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sink = None
            self._broker._remove(self)
            self._wake()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PushBroker:
    """In-process broker: for each account, the set of its subscribers."""

    def __init__(self) -> None:
        self._by_account: dict[str, set[Subscription]] = {}
        self._hooks: list[Hook] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Counts fan-outs: a value computed from the store while it stayed the same has seen every
        # state handed to subscribers (see api/streams.py, which shares Last-Event-ID answers).
        self.generation = 0

    async def __aenter__(self) -> PushBroker:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def subscribe(self, account_ids: Iterable[str], type_filter: Iterable[str] | None = None) -> Subscription:
        sub = Subscription(self, account_ids, None if type_filter is None else frozenset(type_filter))
        for account_id in sub.account_ids:
            self._by_account.setdefault(account_id, set()).add(sub)
        return sub

    def add_on_publish(self, hook: Hook) -> None:
        """Call hook(account_id, type_states) on every publish; a coroutine hook runs as its own task."""
        self._hooks.append(hook)

    async def publish(self, account_id: str, type_states: TypeStates) -> None:
        """Hand a StateChange to every subscriber of the account and to the hooks; never waits for them."""
        if not type_states:
            return
        self.deliver(account_id, type_states)

    def deliver(self, account_id: str, type_states: TypeStates) -> None:
        self._fan_out(account_id, type_states)
        for hook in self._hooks:
            try:
                result = hook(account_id, dict(type_states))
            except Exception:
                log.exception("push hook %r failed", hook)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._hook_done)

    def _fan_out(self, account_id: str, type_states: TypeStates) -> None:
        """Hand a StateChange to the account's subscribers (not the hooks).

        Subscribers with the same type filter get the very same `changed` map, so a sink can encode it
        once for all of them; nobody may modify it.
        """
        self.generation += 1
        subs = self._by_account.get(account_id)
        if not subs:
            return
        everything: Changed = {account_id: dict(type_states)}
        filtered: dict[frozenset[str], Changed | None] = {}
        for sub in tuple(subs):   # a sink may close its subscription, which edits the set
            type_filter = sub.type_filter
            if type_filter is None:
                changed: Changed | None = everything
            else:
                if type_filter in filtered:
                    changed = filtered[type_filter]
                else:
                    kept = {t: s for t, s in type_states.items() if t in type_filter}
                    changed = filtered[type_filter] = {account_id: kept} if kept else None
                if changed is None:
                    continue
            if sub.closed:
                continue
            sink = sub.sink
            if sink is not None and not sub.pending:
                try:
                    if sink(changed):
                        continue
                except Exception:
                    log.exception("push sink %r failed", sink)
            sub._merge(account_id, changed[account_id])

    def _hook_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("push hook failed", exc_info=task.exception())

    def subscriber_count(self) -> int:
        return len({s for subs in self._by_account.values() for s in subs})

    def _reindex(self, sub: Subscription, account_ids: frozenset[str]) -> None:
        self._remove(sub)
        sub.account_ids = account_ids
        for account_id in account_ids:
            self._by_account.setdefault(account_id, set()).add(sub)

    def _remove(self, sub: Subscription) -> None:
        for account_id in sub.account_ids:
            subs = self._by_account.get(account_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_account[account_id]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
