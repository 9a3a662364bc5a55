"""A small third-party capability used only by the tests: Note, with /get /set /changes /query /copy.

It touches nothing in the core: a plugin with its own migration, storage, data type and filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

from jmaple.core.capability import Capability, DataType, Filter, Plugin, Property
from jmaple.core.errors import SetFailure
from jmaple.store.db import Conn, Transaction

NOTES = "https://jmaple.test/notes"


class NoteStore:
    async def get(self, conn: Conn, account_id: str, ids: Sequence[str] | None) -> list[dict[str, Any]]:
        if ids is None:
            rows = await conn.all("SELECT data FROM test_notes WHERE account_id = ? ORDER BY id", (account_id,))
        else:
            if not ids:
                return []
            rows = await conn.all(
                f"SELECT data FROM test_notes WHERE account_id = ? AND id IN ({','.join('?' * len(ids))})",
                (account_id, *ids))
        return [orjson.loads(r[0]) for r in rows]

    async def insert(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await tx.executemany("INSERT INTO test_notes (account_id, id, data) VALUES (?, ?, ?)",
                             [(account_id, o["id"], orjson.dumps(o)) for o in objects])

    async def update(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await tx.executemany("UPDATE test_notes SET data = ? WHERE account_id = ? AND id = ?",
                             [(orjson.dumps(o), account_id, o["id"]) for o in objects])

    async def delete(self, tx: Transaction, account_id: str, ids: list[str]) -> None:
        await tx.executemany("DELETE FROM test_notes WHERE account_id = ? AND id = ?",
                             [(account_id, i) for i in ids])


async def validate(ctx: Any, new: dict[str, Any], old: dict[str, Any] | None) -> None:
    if new.get("title") == "forbidden":
        raise SetFailure("forbidden", "that title is not allowed")
    if old is None:
        new["createdAt"] = datetime.fromtimestamp(ctx.runtime.config.clock(), timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    if new.get("parentId") is not None:
        found = await NOTE.store.get(ctx.conn, ctx.account_id, [new["parentId"]])
        if not found:
            raise SetFailure("invalidProperties", "no such parent", ("parentId",))
    new["size"] = len(new.get("body", ""))


async def before_destroy(ctx: Any, obj: dict[str, Any]) -> None:
    if obj.get("pinned"):
        raise SetFailure("forbidden", "unpin the note first")


NOTE = DataType(
    name="Note",
    id_prefix="N",
    properties=(
        Property("id", "Id", server_set=True, immutable=True, sortable=True),
        Property("title", "String", default="", sortable=True, max_length=200),
        Property("body", "String", default=""),
        Property("pinned", "Boolean", default=False, sortable=True),
        Property("rank", "Int", default=0, sortable=True),
        Property("parentId", "Id", nullable=True, default=None, references="Note"),
        Property("tags", "String[Boolean]", default={}),
        Property("createdAt", "UTCDate", server_set=True, sortable=True),
        Property("size", "UnsignedInt", server_set=True, sortable=True),
    ),
    store=NoteStore(),
    filters={
        "title": Filter("String", lambda o, v: v.lower() in o.get("title", "").lower()),
        "pinned": Filter("Boolean", lambda o, v: o.get("pinned") is v),
        "minRank": Filter("Int", lambda o, v: o.get("rank", 0) >= v),
        "hasTag": Filter("String", lambda o, v: v in o.get("tags", {})),
    },
    validate=validate,
    before_destroy=before_destroy,
)

PLUGIN = Plugin(
    name="notes",
    capabilities=(Capability(NOTES, session_info=lambda config: {"maxNoteSize": 10000},
                             account_info=lambda config, access: {"canPin": access.may_write},
                             data_types=(NOTE,)),),
    migrations="notes_migrations",
)
