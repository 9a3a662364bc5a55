"""Thread (RFC 8621 §3): /get; /changes is the generic one. Threading itself happens at import (ingest.py)."""

from __future__ import annotations

from typing import Any

from jmaple.core.capability import DataType, Property
from jmaple.core.context import MethodContext
from jmaple.core.errors import MethodError, invalid_arguments
from jmaple.core.methods import Args, check_count
from jmaple.mail import storage
from jmaple.mail.email import _ReadOnlyStore
from jmaple.store import changes

THREAD = DataType(
    name="Thread",
    id_prefix="T",
    properties=(
        Property("id", "Id", server_set=True, immutable=True),
        Property("emailIds", "Id[]", server_set=True),
    ),
    store=_ReadOnlyStore(),
    standard_methods=("changes",),   # Thread/changes (§3.2) is the generic one
)


async def thread_get(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Thread/get (RFC 8621 §3.1): emailIds by receivedAt, oldest first, ties by id."""
    a = Args(args, ("accountId", "ids", "properties"))
    ids = a.ids("ids", creation_refs=True)
    properties = a.strings("properties")
    if properties is not None:
        unknown = [p for p in properties if p not in ("id", "emailIds")]
        if unknown:
            raise invalid_arguments(f"properties: unknown property {unknown[0]!r}")
    if ids is None:
        # §3.1 lets a server refuse ids null for Thread; every thread would be too many to be useful.
        raise MethodError("requestTooLarge", "ids must be given for Thread/get")
    check_count(ctx, len(ids), ctx.config.limits.max_objects_in_get, "ids")
    wanted = list(dict.fromkeys(ctx.resolve_id(i) or i for i in ids))
    state = await changes.state(ctx.conn, ctx.account_id, "Thread")
    found = await storage.thread_email_ids(ctx.conn, ctx.account_id, wanted)
    show_emails = properties is None or "emailIds" in properties
    return {
        "accountId": ctx.account_id,
        "state": state,
        "list": [{"id": t, **({"emailIds": found[t]} if show_emails else {})} for t in wanted if t in found],
        "notFound": [t for t in wanted if t not in found],
    }

