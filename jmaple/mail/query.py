"""Email/query (RFC 8621 §4.4) for the first view: inMailbox, receivedAt order, collapseThreads.

The search issue completes it with every filter and sort; until then any other filter condition is
unsupportedFilter and any other sort unsupportedSort. Email/queryChanges always answers
cannotCalculateChanges (and Email/query says canCalculateChanges: false), which RFC 8620 §5.6 allows.
"""

from __future__ import annotations

from typing import Any

from jmaple.core.context import MethodContext
from jmaple.core.errors import MethodError, invalid_arguments
from jmaple.core.methods import Args, is_id, window
from jmaple.mail import storage
from jmaple.store import changes

_SUPPORTED_FILTERS = frozenset({"inMailbox"})
_MAX_FILTER_DEPTH = 32


def _mailboxes(ctx: MethodContext, value: Any, depth: int = 0) -> set[str | None]:
    """The inMailbox ids an AND of conditions names (None: no inMailbox); raises for anything else."""
    if depth > _MAX_FILTER_DEPTH:
        raise invalid_arguments("filter is nested too deeply")
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
            found |= _mailboxes(ctx, condition, depth + 1)
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
    if len(value) > 1:
        raise MethodError("unsupportedSort", "only one comparator (receivedAt) is supported yet")
    comparator = value[0]
    if not isinstance(comparator, dict) or not set(comparator) <= {"property", "isAscending", "collation"}:
        raise invalid_arguments("sort: a Comparator has property, isAscending and collation")
    ascending = comparator.get("isAscending", True)
    if not isinstance(ascending, bool) or not isinstance(comparator.get("property"), str) \
            or not isinstance(comparator.get("collation", ""), str):
        raise invalid_arguments("sort: property must be a String and isAscending a Boolean")
    if comparator["property"] != "receivedAt":
        raise MethodError("unsupportedSort", f"sorting by {comparator['property']!r} is not supported yet")
    return ascending


async def email_query(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/query (RFC 8621 §4.4): inMailbox (alone or ANDed), by receivedAt, with collapseThreads."""
    a = Args(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
                    "calculateTotal", "collapseThreads"))
    filter_value = a.args.get("filter")
    boxes = _mailboxes(ctx, filter_value) if filter_value is not None else {None}
    ascending = _ascending(a.args.get("sort"))
    position = a.int("position")
    anchor = a.id("anchor")
    anchor_offset = a.int("anchorOffset")
    limit = a.int("limit", None, nullable=True, minimum=0)
    calculate_total = a.boolean("calculateTotal")
    collapse = a.boolean("collapseThreads")
    cap = ctx.config.limits.max_query_limit
    clamped = limit is None or limit > cap
    if clamped:
        limit = cap
    state = await changes.state(ctx.conn, ctx.account_id, "Email")
    named = {b for b in boxes if b is not None}
    if len(named) > 1:
        # In several mailboxes at once: scan the first, keep what is in all the others too.
        first, *rest = sorted(named)
        candidates = await storage.query_email_ids(ctx.conn, ctx.account_id, first, ascending=ascending,
                                                   collapse_threads=False)
        states = await storage.email_states(ctx.conn, ctx.account_id, candidates)
        ids = []
        seen: set[str] = set()
        for email_id in candidates:
            state_of = states[email_id]
            if set(rest) <= state_of.mailbox_ids and not (collapse and state_of.thread_id in seen):
                seen.add(state_of.thread_id)
                ids.append(email_id)
    elif anchor is None and position >= 0:
        # The first view: one page straight from the index, the total from the maintained counts.
        mailbox_id = next(iter(named), None)
        if collapse:
            ids = await storage.query_email_ids(ctx.conn, ctx.account_id, mailbox_id, ascending=ascending,
                                                collapse_threads=True)
            page = ids[position:position + limit]
        else:
            page = await storage.query_email_page(ctx.conn, ctx.account_id, mailbox_id, ascending=ascending,
                                                  offset=position, limit=limit)
        response = {"accountId": ctx.account_id, "queryState": state, "canCalculateChanges": False,
                    "position": position, "ids": page}
        if calculate_total:
            response["total"] = await storage.query_total(ctx.conn, ctx.account_id, mailbox_id, threads=collapse)
        if clamped:
            response["limit"] = limit
        return response
    else:
        ids = await storage.query_email_ids(ctx.conn, ctx.account_id, next(iter(named), None), ascending=ascending,
                                            collapse_threads=collapse)
    position, page = window(ids, position, anchor and (ctx.resolve_id(anchor) or anchor), anchor_offset, limit)
    response: dict[str, Any] = {
        "accountId": ctx.account_id,
        "queryState": state,
        "canCalculateChanges": False,
        "position": position,
        "ids": page,
    }
    if calculate_total:
        response["total"] = len(ids)
    if clamped:
        response["limit"] = limit
    return response


async def email_query_changes(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/queryChanges (RFC 8621 §4.5): not calculated yet, so always cannotCalculateChanges."""
    Args(args, ("accountId", "filter", "sort", "sinceQueryState", "maxChanges", "upToId", "calculateTotal",
                "collapseThreads")).string("sinceQueryState", nullable=False)
    raise MethodError("cannotCalculateChanges", "Email/queryChanges is not supported yet: query again")
