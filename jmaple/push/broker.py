"""PushBroker: publish StateChanges, coalesce them per subscriber, call on_publish hooks (RFC 8620 §7.1)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

TypeStates = dict[str, str]
Changed = dict[str, TypeStates]          # accountId -> {type: state}, the "changed" of a StateChange
Hook = Callable[[str, TypeStates], Any]   # may return an awaitable, run as its own task


def _newer(a: str, b: str) -> str:
    """The later of two state strings (ours are decimal modseqs)."""
    try:
        return a if int(a) >= int(b) else b
    except ValueError:
        return b


class Subscription:
    """One subscriber: a merged map of the newest pending states and an event that wakes its writer.

    However long the reader stalls, this holds at most one state per (account, type): constant memory,
    and nothing is lost, since a newer state covers every older one.
    """

    def __init__(self, broker: PushBroker, account_ids: Iterable[str], type_filter: frozenset[str] | None):
        self._broker = broker
        self.account_ids: frozenset[str] = frozenset(account_ids)
        self.type_filter = type_filter
        self.pending: Changed = {}
        self.ready = asyncio.Event()
        self.closed = False

    def _offer(self, account_id: str, type_states: TypeStates) -> None:
        if self.type_filter is not None:
            type_states = {t: s for t, s in type_states.items() if t in self.type_filter}
            if not type_states:
                return
        merged = self.pending.setdefault(account_id, {})
        for type_name, state in type_states.items():
            old = merged.get(type_name)
            merged[type_name] = state if old is None else _newer(state, old)
        self.ready.set()

    def take(self) -> Changed:
        """Everything pending since the last take (possibly empty)."""
        changed, self.pending = self.pending, {}
        self.ready.clear()
        return changed

    async def next(self) -> Changed:
        """Wait for the next non-empty batch of changes; {} once the subscription is closed."""
        while not self.closed:
            await self.ready.wait()
            changed = self.take()
            if changed:
                return changed
        return {}

    def set_accounts(self, account_ids: Iterable[str]) -> None:
        """Follow a grant given or revoked while the stream is open."""
        self._broker._reindex(self, frozenset(account_ids))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._broker._remove(self)
            self.ready.set()

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
        for sub in self._by_account.get(account_id, ()):
            sub._offer(account_id, type_states)
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
