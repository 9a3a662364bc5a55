"""pushState tokens and SSE event ids (RFC 8887 §4.3.5, RFC 8620 §7.3): what changed while a client was away."""

from __future__ import annotations

import re
from collections.abc import Iterable

from jmaple.store import changes
from jmaple.store.db import Conn

Changed = dict[str, dict[str, str]]


def encode(seq: int) -> str:
    """A token naming the point in the server's commit order up to which the client has been told."""
    return f"s{seq}"


# ASCII digits only: str.isdigit() also accepts "²" and friends, which int() then refuses.
TOKEN = re.compile(r"s([0-9]{1,18})")


def decode(token: str | None) -> int | None:
    """The commit sequence number an encode()d token names; None for anything else (never raises)."""
    match = TOKEN.fullmatch(token) if isinstance(token, str) else None
    return int(match[1]) if match else None


async def changed_since(conn: Conn, account_ids: Iterable[str], token: str | None, current: int,
                        type_filter: frozenset[str] | None) -> Changed:
    """The states of every type changed after `token`; every current state if the token means nothing here."""
    ids = list(account_ids)
    seq = decode(token)
    if seq is None or seq > current:
        found = await changes.states(conn, ids)
    else:
        found = await changes.states_since(conn, ids, seq)
    out: Changed = {}
    for account_id, type_states in found.items():
        kept = {t: s for t, s in type_states.items() if type_filter is None or t in type_filter}
        if kept:
            out[account_id] = kept
    return out


def state_change(changed: Changed, push_state: str) -> dict[str, object]:
    """The StateChange object, the same on SSE, WebSocket and webhooks (RFC 8620 §7.1, RFC 8887 §4.3.5.1)."""
    return {"@type": "StateChange", "changed": changed, "pushState": push_state}
