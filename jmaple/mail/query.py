"""Email/query and Email/queryChanges (RFC 8621 §4.4, §4.5): inMailbox, receivedAt order, collapseThreads.

The search issue completes them with every filter and sort; until then any other filter condition is
unsupportedFilter and any other sort unsupportedSort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jmaple.core.context import MethodContext
from jmaple.core.errors import MethodError, invalid_arguments
from jmaple.core.methods import (
    Args, check_filter_size, check_sort_size, is_id, query_changes_response, query_changes_since, window,
)
from jmaple.mail import storage
from jmaple.store import changes

_SUPPORTED_FILTERS = frozenset({"inMailbox"})
# What Email/query can sort by; the account's emailQuerySortOptions (RFC 8621 §1.3.1) lists exactly these.
SORT_PROPERTIES = ("receivedAt",)


def _mailboxes(ctx: MethodContext, value: Any) -> set[str | None]:
    """The inMailbox ids an AND of conditions names (None: no inMailbox); raises for anything else.

    The caller has checked the filter's size and depth (check_filter_size)."""
    if not isinstance(value, dict):
        raise invalid_arguments("filter must be an object")
    if "operator" in value:
        if value.get("operator") not in ("AND", "OR", "NOT") or set(value) != {"operator", "conditions"} \
                or not isinstance(value["conditions"], list):
            raise invalid_arguments("filter: a FilterOperator has operator AND, OR or NOT and conditions")
        if value["operator"] != "AND":
            raise MethodError("unsupportedFilter", f"the {value['operator']} operator is not supported yet")
        found: set[str | None] = set()
        for condition in value["conditions"]:
            found |= _mailboxes(ctx, condition)
        return found
    unknown = sorted(set(value) - _SUPPORTED_FILTERS)
    if unknown:
        raise MethodError("unsupportedFilter", f"filtering on {unknown[0]!r} is not supported yet")
    if "inMailbox" not in value:
        return {None}
    mailbox_id = value["inMailbox"]
    if not isinstance(mailbox_id, str) or not (is_id(mailbox_id) or mailbox_id.startswith("#")):
        raise invalid_arguments("filter: inMailbox must be an Id")
    return {ctx.resolve_id(mailbox_id) or mailbox_id}


def _ascending(value: Any) -> bool:
    if value is None:
        return False   # no sort asked: newest first, as every client's first view wants
    if not isinstance(value, list):
        raise invalid_arguments("sort must be a list of Comparators")
    if not value:
        return False
    check_sort_size(value)
    if len(value) > 1:
        raise MethodError("unsupportedSort", "only one comparator (receivedAt) is supported yet")
    comparator = value[0]
    if not isinstance(comparator, dict):
        raise invalid_arguments("sort: a Comparator is an object")
    # RFC 8620 §5.5 lets a data type add Comparator properties (§4.4.2 adds "keyword"), and clients send
    # more (jmapc: anchorOffset, calculateTotal, position): those not used here are ignored.
    ascending = comparator.get("isAscending", True)
    if not isinstance(ascending, bool) or not isinstance(comparator.get("property"), str) \
            or not isinstance(comparator.get("collation", ""), str):
        raise invalid_arguments("sort: property and collation must be Strings, isAscending a Boolean")
    if comparator["property"] not in SORT_PROPERTIES:
        raise MethodError("unsupportedSort", f"sorting by {comparator['property']!r} is not supported yet")
    return ascending


@dataclass(frozen=True)
class _EmailQuery:
    """The arguments Email/query and Email/queryChanges share (RFC 8621 §4.4, §4.5), checked."""

    mailboxes: tuple[str, ...]    # every inMailbox the filter ANDs; () for the whole account
    ascending: bool
    collapse: bool
    calculate_total: bool

    @classmethod
    def parse(cls, ctx: MethodContext, a: Args) -> _EmailQuery:
        filter_value = a.args.get("filter")
        if filter_value is not None:
            check_filter_size(filter_value)   # RFC 8620 §5.5: a filter too large to process is unsupportedFilter
        boxes = _mailboxes(ctx, filter_value) if filter_value is not None else {None}
        return cls(tuple(sorted(b for b in boxes if b is not None)), _ascending(a.args.get("sort")),
                   a.boolean("collapseThreads"), a.boolean("calculateTotal"))

    async def ids(self, ctx: MethodContext) -> list[str]:
        """Every result, in order."""
        if len(self.mailboxes) <= 1:
            return await storage.query_email_ids(ctx.conn, ctx.account_id, next(iter(self.mailboxes), None),
                                                 ascending=self.ascending, collapse_threads=self.collapse)
        # In several mailboxes at once: scan the first, keep what is in all the others too.
        first, *rest = self.mailboxes
        candidates = await storage.query_email_ids(ctx.conn, ctx.account_id, first, ascending=self.ascending,
                                                   collapse_threads=False)
        states = await storage.email_states(ctx.conn, ctx.account_id, candidates)
        ids = []
        seen: set[str] = set()
        for email_id in candidates:
            state_of = states[email_id]
            if set(rest) <= state_of.mailbox_ids and not (self.collapse and state_of.thread_id in seen):
                seen.add(state_of.thread_id)
                ids.append(email_id)
        return ids


async def email_query(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/query (RFC 8621 §4.4): inMailbox (alone or ANDed), by receivedAt, with collapseThreads."""
    a = Args(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
                    "calculateTotal", "collapseThreads"))
    q = _EmailQuery.parse(ctx, a)
    position = a.int("position")
    anchor = a.id("anchor")
    anchor_offset = a.int("anchorOffset")
    limit = a.int("limit", None, nullable=True, minimum=0)
    cap = ctx.config.limits.max_query_limit
    clamped = limit is None or limit > cap
    if clamped:
        limit = cap
    # The state before the results: each statement reads its own snapshot, so the results may be newer
    # than the state, never older; Email/queryChanges from it reports such a change again, harmlessly.
    state = await changes.state(ctx.conn, ctx.account_id, "Email")
    response: dict[str, Any] = {"accountId": ctx.account_id, "queryState": state, "canCalculateChanges": True}
    if len(q.mailboxes) <= 1 and anchor is None and position >= 0:
        # The first view: one page straight from the index, the total from the maintained counts.
        mailbox_id = next(iter(q.mailboxes), None)
        if q.collapse:
            ids = await storage.query_email_ids(ctx.conn, ctx.account_id, mailbox_id, ascending=q.ascending,
                                                collapse_threads=True)
            page = ids[position:position + limit]
        else:
            page = await storage.query_email_page(ctx.conn, ctx.account_id, mailbox_id, ascending=q.ascending,
                                                  offset=position, limit=limit)
        response.update(position=position, ids=page)
        if q.calculate_total:
            response["total"] = await storage.query_total(ctx.conn, ctx.account_id, mailbox_id, threads=q.collapse)
    else:
        ids = await q.ids(ctx)
        position, page = window(ids, position, anchor and (ctx.resolve_id(anchor) or anchor), anchor_offset, limit)
        response.update(position=position, ids=page)
        if q.calculate_total:
            response["total"] = len(ids)
    if clamped:
        response["limit"] = limit
    return response


async def email_query_changes(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/queryChanges (RFC 8621 §4.5): every Email that may have moved in or out, removed and re-added.

    receivedAt and id never change, so an email keeps its place relative to the others and only the
    emails changed since the old state (mailboxes, keywords, created, destroyed) can have entered, left
    or moved. With collapseThreads, which email stands for a thread can change when any of the thread's
    emails changes, so every email of such a thread counts as changed.
    """
    a = Args(args, ("accountId", "filter", "sort", "sinceQueryState", "maxChanges", "upToId", "calculateTotal",
                    "collapseThreads"))
    q = _EmailQuery.parse(ctx, a)
    since_state = a.string("sinceQueryState", nullable=False)
    max_changes = a.int("maxChanges", None, nullable=True, minimum=0)
    up_to_id = a.id("upToId")
    current, rows = await query_changes_since(ctx, "Email", since_state)
    changed = {c.object_id for c in rows}
    if q.collapse and changed:
        since = int(since_state)   # checked by query_changes_since
        # Threads of the emails changed, and of those destroyed (only the Thread log still knows those).
        threads = await storage.email_thread_ids(ctx.conn, ctx.account_id, changed)
        threads |= {c.object_id for c in await changes.since(ctx.conn, ctx.account_id, "Thread", since, None)}
        for email_ids in (await storage.thread_email_ids(ctx.conn, ctx.account_id, threads)).values():
            changed.update(email_ids)
    ids = await q.ids(ctx)
    # RFC 8620 §5.6 lets a server ignore upToId when the filter is on mutable properties (mailboxIds).
    # It is honoured here all the same: the sort is immutable and every email that may have entered or
    # left is reported, so the client's results up to upToId come out right; past it nothing is added.
    up_to_index = None
    if up_to_id is not None:
        try:
            up_to_index = ids.index(up_to_id)
        except ValueError:
            pass   # gone from the results: every change is reported
    return query_changes_response(ctx, since_state, current, changed, ids, max_changes, q.calculate_total,
                                  up_to_index)
