"""The core capability (RFC 8620 §2, §4, §6.3), registered through the same contract as any plugin."""

from __future__ import annotations

from typing import Any

from jmaple.config import Config
from jmaple.core.capability import CORE, Capability, Method, Plugin
from jmaple.core.context import MethodContext
from jmaple.core.errors import SetError, invalid_arguments
from jmaple.core.session import SessionUrl
from jmaple.core.methods import COLLATIONS, Args, check_count
from jmaple.store.blobs import is_blob_id
from jmaple.store.db import Transaction


def core_session_info(config: Config) -> dict[str, Any]:
    limits = config.limits
    return {
        "maxSizeUpload": limits.max_size_upload,
        "maxConcurrentUpload": limits.max_concurrent_upload,
        "maxSizeRequest": limits.max_size_request,
        "maxConcurrentRequests": limits.max_concurrent_requests,
        "maxCallsInRequest": limits.max_calls_in_request,
        "maxObjectsInGet": limits.max_objects_in_get,
        "maxObjectsInSet": limits.max_objects_in_set,
        "collationAlgorithms": list(COLLATIONS),
    }


async def core_echo(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Core/echo (RFC 8620 §4): return the arguments unchanged."""
    return args


async def blob_copy(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Blob/copy (RFC 8620 §6.3): make blobs of one account readable in another."""
    a = Args(args, ("fromAccountId", "accountId", "blobIds"))
    from_account = a.id("fromAccountId", nullable=False)
    blob_ids = a.ids("blobIds", nullable=False)
    assert blob_ids is not None and from_account is not None
    if from_account == ctx.account_id:
        raise invalid_arguments("fromAccountId and accountId must differ")
    check_count(ctx, len(blob_ids), ctx.config.limits.max_objects_in_set, "blobIds")
    tx = ctx.conn
    assert isinstance(tx, Transaction)
    blobs = ctx.runtime.blobs
    readable = await blobs.readable(tx, from_account, [b for b in blob_ids if is_blob_id(b)],
                                    user_id=ctx.principal.user_id)
    copied, refused = await blobs.grant_upload(tx, ctx.account_id, ctx.principal.user_id,
                                               [b for b in blob_ids if b in readable])
    missing = {b: SetError("blobNotFound").to_json() for b in blob_ids if b not in readable}
    # A copy counts against the upload quota like an upload (RFC 8620 §6.1, §5.3 overQuota).
    missing.update({b: SetError("overQuota", "the copy does not fit in your upload quota").to_json()
                    for b in refused})
    return {
        "fromAccountId": from_account,
        "accountId": ctx.account_id,
        "copied": {b: b for b in copied} or None,
        "notCopied": missing or None,
    }


WEBSOCKET = "urn:ietf:params:jmap:websocket"
# A vendor capability: POST there for a ticket to open EventSource/WebSocket from a browser.
TICKET = "https://jmaple.org/capabilities/ticket"


def websocket_session_info(config: Config) -> dict[str, Any]:
    """RFC 8887 §3: where the WebSocket endpoint is, and that it pushes."""
    return {"url": SessionUrl("/jmap/ws", websocket=True), "supportsPush": True}


def ticket_session_info(config: Config) -> dict[str, Any]:
    return {"url": SessionUrl("/jmap/ticket"), "endpoints": ["eventsource", "websocket"],
            "lifetime": 60}


PLUGIN = Plugin(
    name="core",
    capabilities=(
        Capability(
            CORE,
            session_info=core_session_info,
            methods={
                "Core/echo": Method(core_echo, account=None, uses_db=False),
                "Blob/copy": Method(blob_copy, writes=True, from_account="fromAccountId"),
            },
        ),
        Capability(WEBSOCKET, session_info=websocket_session_info),
        Capability(TICKET, session_info=ticket_session_info),
    ),
    migrations="jmaple.store.migrations",
)
