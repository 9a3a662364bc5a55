"""JsonObjects: a ready-made store (core/capability.Store) for a plugin's objects kept whole as JSON."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from jmaple.store.db import Conn, Transaction

_TABLE = re.compile(r"[a-z_][a-z0-9_]*")


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
    """

    def __init__(self, table: str, properties: Iterable[str]):
        if not _TABLE.fullmatch(table):
            raise ValueError(f"table name {table!r}: lower-case letters, digits and _ only")
        self.table = table
        self.properties = tuple(properties)
        if "id" not in self.properties:
            raise ValueError("the properties of a data type include id")
        self._select_ids = (f"SELECT t.data FROM json_each(?) j CROSS JOIN {table} t"
                            " ON t.account_id = ? AND t.id = j.value")
        self._select_all = f"SELECT data FROM {table} WHERE account_id = ? ORDER BY id"
        # One row for the whole answer: the ids found, and their objects as one JSON array.
        self._json_ids = (f"SELECT group_concat(t.id, ' '), group_concat(t.data, ',') FROM json_each(?) j"
                          f" CROSS JOIN {table} t ON t.account_id = ? AND t.id = j.value")
        self._json_all = (f"SELECT group_concat(id, ' '), group_concat(data, ',')"
                          f" FROM (SELECT id, data FROM {table} WHERE account_id = ? ORDER BY id)")

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

    async def get_json(self, conn: Conn, account_id: str, ids: Sequence[str] | None) -> tuple[list[str], str]:
        """(ids found, their objects as one JSON array) — what get() answers, still encoded, in one row.

        ids must not repeat (the standard /get drops repeats first).
        """
        if ids is None:
            row = await conn.one(self._json_all, (account_id,))
        elif not ids:
            return [], "[]"
        else:
            row = await conn.one(self._json_ids, (orjson.dumps(ids).decode(), account_id))
        if row is None or row[0] is None:
            return [], "[]"
        return row[0].split(" "), f"[{row[1]}]"

    async def insert(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await tx.executemany(f"INSERT INTO {self.table} (account_id, id, data) VALUES (?, ?, ?)",
                             [(account_id, o["id"], self.encode(o)) for o in objects])

    async def update(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await tx.executemany(f"UPDATE {self.table} SET data = ? WHERE account_id = ? AND id = ?",
                             [(self.encode(o), account_id, o["id"]) for o in objects])

    async def delete(self, tx: Transaction, account_id: str, ids: list[str]) -> None:
        await tx.executemany(f"DELETE FROM {self.table} WHERE account_id = ? AND id = ?",
                             [(account_id, i) for i in ids])
