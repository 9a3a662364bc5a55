"""Modseqs, state strings and the change log behind /changes and /queryChanges (RFC 8620 §5.2, §5.6)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jmaple.store.db import Conn, Later, Transaction


@dataclass(frozen=True)
class Change:
    """One object's entry in the change log, as seen from a state `since`."""

    object_id: str
    created_modseq: int
    modseq: int
    full_modseq: int
    is_destroyed: bool
    # The modseq at which a client at `since` first learns of this object: its creation when that came
    # after `since`, else its last change. Pages of /changes end on these.
    page_modseq: int


async def _next_seq(tx: Transaction) -> int:
    if tx.seq is None:
        tx.seq = await tx.value("UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value")
    return tx.seq


async def _allocate(tx: Transaction, account_id: str, count: int) -> int:
    """Reserve `count` modseqs in the account; returns the first. Must run inside the write transaction."""
    top = await tx.value("UPDATE accounts SET modseq = modseq + ? WHERE id = ? RETURNING modseq",
                         (count, account_id))
    if top is None:
        raise LookupError(f"no account {account_id}")
    return top - count + 1


async def _set_state(tx: Transaction, account_id: str, type_name: str, modseq: int) -> None:
    seq = await _next_seq(tx)
    await tx.execute(
        "INSERT INTO type_states (account_id, type, modseq, seq) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (account_id, type) DO UPDATE SET modseq = excluded.modseq, seq = excluded.seq",
        (account_id, type_name, modseq, seq))
    tx.changed.setdefault(account_id, {})[type_name] = modseq


async def record(tx: Transaction, account_id: str, type_name: str, *,
                 created: Sequence[str] = (), updated: Sequence[str] = (),
                 destroyed: Sequence[str] = (), counters_only: Sequence[str] = ()) -> None:
    """Log changed objects, each under its own new modseq, and move the type's state.

    `counters_only` are updates that touched nothing but the type's counter properties
    (for updatedProperties). Must run inside the write transaction.
    """
    count = len(created) + len(updated) + len(destroyed) + len(counters_only)
    if not count:
        return
    modseq = await _allocate(tx, account_id, count)
    rows_created, rows_updated, rows_counters, rows_destroyed = [], [], [], []
    for object_id in created:
        rows_created.append((account_id, type_name, object_id, modseq, modseq, modseq))
        modseq += 1
    for object_id in updated:
        rows_updated.append((account_id, type_name, object_id, modseq, modseq))
        modseq += 1
    for object_id in counters_only:
        rows_counters.append((account_id, type_name, object_id, modseq))
        modseq += 1
    for object_id in destroyed:
        rows_destroyed.append((account_id, type_name, object_id, modseq, modseq, int(tx.now)))
        modseq += 1
    await tx.executemany(
        "INSERT INTO changes (account_id, type, object_id, created_modseq, modseq, full_modseq)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET created_modseq = excluded.created_modseq,"
        " modseq = excluded.modseq, full_modseq = excluded.full_modseq, destroyed_at = NULL", rows_created)
    await tx.executemany(
        "INSERT INTO changes (account_id, type, object_id, created_modseq, modseq, full_modseq)"
        " VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT DO UPDATE SET"
        " modseq = excluded.modseq, full_modseq = excluded.full_modseq", rows_updated)
    await tx.executemany(
        "INSERT INTO changes (account_id, type, object_id, created_modseq, modseq, full_modseq)"
        " VALUES (?1, ?2, ?3, 0, ?4, 0) ON CONFLICT DO UPDATE SET modseq = excluded.modseq", rows_counters)
    await tx.executemany(
        "INSERT INTO changes (account_id, type, object_id, created_modseq, modseq, full_modseq, destroyed_at)"
        " VALUES (?, ?, ?, 0, ?, ?, ?) ON CONFLICT DO UPDATE SET"
        " modseq = excluded.modseq, full_modseq = excluded.full_modseq, destroyed_at = excluded.destroyed_at",
        rows_destroyed)
    await _set_state(tx, account_id, type_name, modseq - 1)


async def bump(tx: Transaction, account_id: str, type_name: str) -> None:
    """Move the state of a type that has no objects (a push-only type such as EmailDelivery)."""
    await _set_state(tx, account_id, type_name, await _allocate(tx, account_id, 1))


_STATE = "SELECT modseq, horizon FROM type_states WHERE account_id = ? AND type = ?"


def _state_string(rows: list[tuple[int, int]]) -> str:
    return str(rows[0][0]) if rows else "0"


def _state_and_horizon(rows: list[tuple[int, int]]) -> tuple[int, int]:
    return (rows[0][0], rows[0][1]) if rows else (0, 0)


async def state(conn: Conn, account_id: str, type_name: str) -> str:
    """The type's current state string ("0" before its first change)."""
    return _state_string(await conn.all(_STATE, (account_id, type_name)))


def state_later(conn: Conn, account_id: str, type_name: str) -> Later[str]:
    """state(), read in the same hop as conn's next statement and before it (Conn.later): a state read
    first is never newer than the data read after it."""
    return conn.later(_STATE, (account_id, type_name), _state_string)


def state_and_horizon_later(conn: Conn, account_id: str, type_name: str) -> Later[tuple[int, int]]:
    """(modseq, horizon) of the type: its state and the oldest state /changes can still answer from, read
    in the same hop as conn's next statement and before it (Conn.later)."""
    return conn.later(_STATE, (account_id, type_name), _state_and_horizon)


async def states(conn: Conn, account_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Every account's {type: state} (types never changed are absent)."""
    ids = list(account_ids)
    out: dict[str, dict[str, str]] = {a: {} for a in ids}
    if not ids:
        return out
    rows = await conn.all(
        f"SELECT account_id, type, modseq FROM type_states WHERE account_id IN ({','.join('?' * len(ids))})", ids)
    for account_id, type_name, modseq in rows:
        out[account_id][type_name] = str(modseq)
    return out


async def states_since(conn: Conn, account_ids: Iterable[str], seq: int) -> dict[str, dict[str, str]]:
    """The {type: state} of each account's types whose state moved after global sequence `seq`."""
    ids = list(account_ids)
    out: dict[str, dict[str, str]] = {}
    if not ids:
        return out
    rows = await conn.all(
        f"SELECT account_id, type, modseq FROM type_states WHERE seq > ? AND account_id IN ({','.join('?' * len(ids))})",
        (seq, *ids))
    for account_id, type_name, modseq in rows:
        out.setdefault(account_id, {})[type_name] = str(modseq)
    return out


async def since(conn: Conn, account_id: str, type_name: str, modseq: int, limit: int | None) -> list[Change]:
    """Objects changed after `modseq` in page_modseq order, at most `limit` of them.

    Ordering by page_modseq rather than by last change lets a page that ends at page_modseq P report
    every object created up to P as created, even one changed again later: a later page then reports
    it updated or destroyed, never created after it was deemed updated (RFC 8620 §5.2).
    """
    rows = await conn.all(
        "SELECT object_id, created_modseq, modseq, full_modseq, destroyed_at IS NOT NULL,"
        " CASE WHEN created_modseq > ?3 THEN created_modseq ELSE modseq END AS page_modseq FROM changes"
        " WHERE account_id = ?1 AND type = ?2 AND modseq > ?3 ORDER BY page_modseq LIMIT ?4",
        (account_id, type_name, modseq, -1 if limit is None else limit))
    return [Change(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]


async def committed_since(conn: Conn, seq: int) -> tuple[int, list[tuple[str, str, int]]]:
    """(highest seq, [(account_id, type, modseq)]) of every state moved after global `seq`."""
    rows = await conn.all("SELECT account_id, type, modseq, seq FROM type_states WHERE seq > ? ORDER BY seq",
                          (seq,))
    top = max((r[3] for r in rows), default=seq)
    return top, [(r[0], r[1], r[2]) for r in rows]


async def current_seq(conn: Conn) -> int:
    return await conn.value("SELECT value FROM meta WHERE key = 'seq'", (), 0)


async def prune_tombstones(tx: Transaction, older_than: float) -> int:
    """Drop tombstones destroyed before `older_than` and raise each type's horizon past them."""
    rows = await tx.all(
        "DELETE FROM changes WHERE destroyed_at IS NOT NULL AND destroyed_at < ?"
        " RETURNING account_id, type, modseq", (int(older_than),))
    horizons: dict[tuple[str, str], int] = {}
    for account_id, type_name, modseq in rows:
        key = (account_id, type_name)
        horizons[key] = max(horizons.get(key, 0), modseq)
    await tx.executemany(
        "UPDATE type_states SET horizon = max(horizon, ?) WHERE account_id = ? AND type = ?",
        [(m, a, t) for (a, t), m in horizons.items()])
    return len(rows)
