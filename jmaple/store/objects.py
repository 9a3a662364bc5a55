"""JsonObjects: a ready-made store (core/capability.Store) for a plugin's objects kept whole as JSON."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from jmaple.store import changes
from jmaple.store.db import Conn, Transaction

_TABLE = re.compile(r"[a-z_][a-z0-9_]*")
CACHE_BYTES = 8 << 20   # encoded objects kept in memory per store, over all accounts


class JsonObjects:
    """A data type's objects, each kept whole as one JSON text, in a table the plugin's migration creates:

        CREATE TABLE <table> (
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            id TEXT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (account_id, id)
        ) WITHOUT ROWID;

    An object is written with exactly the type's `properties` (null for one it lacks), in their order.
    That lets get_json hand the stored JSON to the standard /get as it is: a /get of all properties
    decodes nothing. A subclass whose get() answers something other than the stored rows must override
    get_json too, or set it to None.

    get_json keeps the objects it read in memory (about `cache_bytes` over all accounts), each account's
    valid for one state of the type: like /changes, it relies on every write of an object recording
    its change (changes.record) in the same transaction, which moves the state. Any process may write:
    the state is read from the database on every call.

    A plugin that adds a property to the type ships a migration that adds it to every row, e.g.
    `UPDATE t SET data = json_insert(data, '$.colour', json('null'))`: rows are sent as they are stored.
    The registry checks that type_name and properties are the data type's (check_type).
    """

    OVERHEAD = 100   # bytes of memory per object kept besides its JSON (bytes object, dict slot, id)

    def __init__(self, table: str, type_name: str, properties: Iterable[str], *, cache_bytes: int = CACHE_BYTES):
        if not _TABLE.fullmatch(table):
            raise ValueError(f"table name {table!r}: lower-case letters, digits and _ only")
        self.table = table
        self.type_name = type_name
        self.properties = tuple(properties)
        if "id" not in self.properties:
            raise ValueError("the properties of a data type include id")
        self.cache_bytes = cache_bytes
        # (database serial, account id) -> the account's objects at one state
        self._cache: OrderedDict[tuple[int, str], _Snapshot] = OrderedDict()
        self._cached_bytes = 0
        self._select_ids = (f"SELECT t.data FROM json_each(?) j CROSS JOIN {table} t"
                            " ON t.account_id = ? AND t.id = j.value")
        self._select_all = f"SELECT data FROM {table} WHERE account_id = ? ORDER BY id"
        # One row, one snapshot: the state, then the ids found and each one's length in bytes (JSON
        # arrays), and the objects joined by commas.
        self._json_ids = (
            "SELECT (SELECT modseq FROM type_states WHERE account_id = ?1 AND type = ?2),"
            " json_group_array(t.id), json_group_array(length(CAST(t.data AS BLOB))),"
            f" CAST(group_concat(t.data, ',') AS BLOB) FROM json_each(?3) j CROSS JOIN {table} t"
            " ON t.account_id = ?1 AND t.id = j.value")
        self._json_all = (
            "SELECT (SELECT modseq FROM type_states WHERE account_id = ?1 AND type = ?2),"
            " json_group_array(id), CAST(group_concat(data, ',') AS BLOB)"
            f" FROM (SELECT id, data FROM {table} WHERE account_id = ?1 ORDER BY id)")

    def check_type(self, data_type: Any) -> str | None:
        """Why this store cannot serve data_type (core.capability.DataType), or None."""
        if data_type.name != self.type_name:
            return f"its store {self.table!r} is for type {self.type_name!r}"
        names = tuple(p.name for p in data_type.properties)
        if names != self.properties:
            return f"its store {self.table!r} keeps the properties {', '.join(self.properties)}, not {', '.join(names)}"
        return None

    def encode(self, obj: dict[str, Any]) -> bytes:
        return orjson.dumps({p: obj.get(p) for p in self.properties})

    async def get(self, conn: Conn, account_id: str, ids: Sequence[str] | None) -> list[dict[str, Any]]:
        """The objects of ids found, in the order asked; all of the account's (by id) for None."""
        if ids is None:
            rows = await conn.all(self._select_all, (account_id,))
        elif not ids:
            return []
        else:
            rows = await conn.all(self._select_ids, (orjson.dumps(ids).decode(), account_id))
        return [orjson.loads(r[0]) for r in rows]

    async def get_json(self, conn: Conn, account_id: str,
                       ids: Sequence[str] | None) -> tuple[str, list[str], bytes]:
        """(the type's state, the ids found, their objects as one JSON array): what get() answers, in
        the order asked, still encoded, with the state of exactly that data. ids must not repeat."""
        database = conn.reader_of   # None in a transaction, whose rows may yet be rolled back
        key = (database, account_id) if database is not None and ids else None
        cached = self._cache.get(key) if key is not None else None
        if cached is not None:
            state = await changes.state(conn, account_id, self.type_name)
            if state == cached.state:
                objects = cached.objects
                if all(i in objects for i in ids):   # type: ignore[union-attr]  # ids is not None here
                    if key in self._cache:   # (another call may have dropped it meanwhile)
                        self._cache.move_to_end(key)
                    return state, list(ids), _array([objects[i] for i in ids])   # type: ignore[union-attr]
        if ids is None:
            state_row, found, text = await conn.one(self._json_all, (account_id, self.type_name))
            return str(state_row or 0), orjson.loads(found), b"[" + (text or b"") + b"]"
        if not ids:
            return await changes.state(conn, account_id, self.type_name), [], b"[]"
        state_row, found, lengths, text = await conn.one(
            self._json_ids, (account_id, self.type_name, orjson.dumps(ids).decode()))
        state = str(state_row or 0)
        if text is None:
            return state, [], b"[]"
        found_ids = orjson.loads(found)
        if key is not None:
            self._remember(key, state, found_ids, orjson.loads(lengths), text)
        return state, found_ids, b"[" + text + b"]"

    def _remember(self, key: tuple[int, str], state: str, ids: list[str], lengths: list[int],
                  text: bytes) -> None:
        """Keep the objects just read at `state` (the same snapshot) in place of the account's older ones;
        a read that raced a newer one changes nothing."""
        size = len(text) + self.OVERHEAD * len(ids)
        if size > self.cache_bytes:
            return
        old = self._cache.get(key)
        if old is None:
            snapshot = _Snapshot(state)
        else:
            if old.state != state and int(old.state) > int(state):
                return
            del self._cache[key]
            self._cached_bytes -= old.size
            snapshot = old if old.state == state else _Snapshot(state)
        start = 0
        objects = snapshot.objects
        for object_id, length in zip(ids, lengths):
            if object_id not in objects:
                objects[object_id] = text[start:start + length]
                snapshot.size += length + self.OVERHEAD
            start += length + 1
        self._cache[key] = snapshot
        self._cached_bytes += snapshot.size
        while self._cached_bytes > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.size

    async def insert(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await tx.executemany(f"INSERT INTO {self.table} (account_id, id, data) VALUES (?, ?, ?)",
                             [(account_id, o["id"], self.encode(o)) for o in objects])

    async def update(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await tx.executemany(f"UPDATE {self.table} SET data = ? WHERE account_id = ? AND id = ?",
                             [(self.encode(o), account_id, o["id"]) for o in objects])

    async def delete(self, tx: Transaction, account_id: str, ids: list[str]) -> None:
        await tx.executemany(f"DELETE FROM {self.table} WHERE account_id = ? AND id = ?",
                             [(account_id, i) for i in ids])


def _array(parts: list[bytes]) -> bytes:
    """A JSON array of encoded values, copying each only once (brackets ride on the first and last)."""
    if len(parts) == 1:
        return b"[" + parts[0] + b"]"
    return b",".join([b"[" + parts[0], *parts[1:-1], parts[-1] + b"]"])


class _Snapshot:
    """Encoded objects of one account, all read at one state of the type."""

    __slots__ = ("state", "objects", "size")

    def __init__(self, state: str):
        self.state = state
        self.objects: dict[str, bytes] = {}
        self.size = 0
