"""A small third-party capability used only by the tests: Note, Notebook and NoteSettings.

It touches nothing in the core: a plugin with its own migrations, data types and filters, its objects kept
in the core's ready-made JSON store (jmaple.store.objects.JsonObjects).
Note has the standard methods of RFC 8620 §5 (with references to other Notes and to Notebooks);
Notebook keeps a server-maintained counter, noteCount, so its /changes reports updatedProperties;
NoteSettings is a singleton.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from jmaple.core.capability import Capability, DataType, Filter, Plugin, Property
from jmaple.core.errors import SetFailure
from jmaple.store import changes
from jmaple.store.db import Conn, Transaction
from jmaple.store.objects import JsonObjects

NOTES = "https://jmaple.test/notes"
MAX_NOTE_SIZE = 10_000


class NoteStore(JsonObjects):
    """Notes; writing one moves the noteCount of the Notebooks it leaves and joins."""

    async def insert(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await super().insert(tx, account_id, objects)
        await count_notes(tx, account_id, [o.get("notebookId") for o in objects], [])

    async def update(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        old = {o["id"]: o for o in await self.get(tx, account_id, [o["id"] for o in objects])}
        await super().update(tx, account_id, objects)
        moved = [(o.get("notebookId"), old[o["id"]].get("notebookId")) for o in objects
                 if o.get("notebookId") != old[o["id"]].get("notebookId")]
        await count_notes(tx, account_id, [new for new, _ in moved], [gone for _, gone in moved])

    async def delete(self, tx: Transaction, account_id: str, ids: list[str]) -> None:
        old = await self.get(tx, account_id, ids)
        await super().delete(tx, account_id, ids)
        await count_notes(tx, account_id, [], [o.get("notebookId") for o in old])


async def count_notes(tx: Transaction, account_id: str, joined: list[str | None], left: list[str | None]) -> None:
    """Move noteCount of the Notebooks notes joined and left; a change of the counter alone."""
    delta: dict[str, int] = {}
    for notebook_id in joined:
        if notebook_id:
            delta[notebook_id] = delta.get(notebook_id, 0) + 1
    for notebook_id in left:
        if notebook_id:
            delta[notebook_id] = delta.get(notebook_id, 0) - 1
    delta = {k: v for k, v in delta.items() if v}
    if not delta:
        return
    notebooks = await NOTEBOOK.store.get(tx, account_id, list(delta))
    for notebook in notebooks:
        notebook["noteCount"] += delta[notebook["id"]]
    await JsonObjects.update(NOTEBOOK.store, tx, account_id, notebooks)
    await changes.record(tx, account_id, "Notebook", counters_only=[n["id"] for n in notebooks])


async def validate(ctx: Any, new: dict[str, Any], old: dict[str, Any] | None) -> None:
    title = new.get("title")
    if title == "forbidden":
        raise SetFailure("forbidden", "that title is not allowed")
    if title == "crash":
        raise RuntimeError("validate crashed (a test of serverFail and rollback)")
    if old is None:
        new["createdAt"] = datetime.fromtimestamp(ctx.runtime.config.clock(), timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    if new.get("parentId") is not None and new["parentId"] != (old or {}).get("parentId"):
        if new["parentId"] == new["id"] or not await NOTE.store.get(ctx.conn, ctx.account_id, [new["parentId"]]):
            raise SetFailure("invalidProperties", "no such parent", ("parentId",))
    linked = [i for i in new.get("linkedIds", {}) if i not in (old or {}).get("linkedIds", {})]
    if linked and len(await NOTE.store.get(ctx.conn, ctx.account_id, linked)) < len(linked):
        raise SetFailure("invalidProperties", "linkedIds names a note that does not exist", ("linkedIds",))
    if new.get("notebookId") is not None and new["notebookId"] != (old or {}).get("notebookId"):
        if not await NOTEBOOK.store.get(ctx.conn, ctx.account_id, [new["notebookId"]]):
            raise SetFailure("invalidProperties", "no such notebook", ("notebookId",))
    new["size"] = len(new.get("body", ""))


async def before_destroy(ctx: Any, obj: dict[str, Any]) -> None:
    if obj.get("pinned"):
        raise SetFailure("forbidden", "unpin the note first")


NOTE_PROPERTIES = (
    Property("id", "Id", server_set=True, immutable=True, sortable=True),
    Property("title", "String", default="", sortable=True, max_length=200),
    Property("body", "String", default=""),
    Property("pinned", "Boolean", default=False, sortable=True),
    Property("rank", "Int", default=0, sortable=True),
    Property("parentId", "Id", nullable=True, default=None, references="Note"),
    Property("notebookId", "Id", nullable=True, default=None, references="Notebook"),
    Property("tags", "String[Boolean]", default={}),
    Property("linkedIds", "Id[Boolean]", default={}, references="Note"),
    Property("createdAt", "UTCDate", server_set=True, immutable=True, sortable=True),
    Property("size", "UnsignedInt", server_set=True, sortable=True),
)

NOTE = DataType(
    name="Note",
    id_prefix="N",
    properties=NOTE_PROPERTIES,
    store=NoteStore("test_notes", "Note", [p.name for p in NOTE_PROPERTIES]),
    filters={
        "title": Filter("String", lambda o, v: v.lower() in o.get("title", "").lower()),
        "pinned": Filter("Boolean", lambda o, v: o.get("pinned") is v),
        "minRank": Filter("Int", lambda o, v: o.get("rank", 0) >= v),
        "hasTag": Filter("String", lambda o, v: v in o.get("tags", {})),
        "createdBefore": Filter("UTCDate", lambda o, v: o["createdAt"] < v, immutable=True),
    },
    validate=validate,
    before_destroy=before_destroy,
    max_size=MAX_NOTE_SIZE,
)


async def before_destroy_notebook(ctx: Any, obj: dict[str, Any]) -> None:
    if obj["noteCount"]:
        raise SetFailure("notebookHasNotes", f"{obj['noteCount']} notes are still in it")


NOTEBOOK_PROPERTIES = (
    Property("id", "Id", server_set=True, immutable=True, sortable=True),
    Property("name", "String", sortable=True, max_length=100),
    Property("labels", "String[]", default=[]),
    Property("noteCount", "UnsignedInt", server_set=True, default=0, counter=True, sortable=True),
)

NOTEBOOK = DataType(
    name="Notebook",
    id_prefix="B",
    properties=NOTEBOOK_PROPERTIES,
    store=JsonObjects("test_notebooks", "Notebook", [p.name for p in NOTEBOOK_PROPERTIES]),
    standard_methods=("get", "changes", "set", "query", "queryChanges"),
    filters={"name": Filter("String", lambda o, v: o["name"] == v)},
    before_destroy=before_destroy_notebook,
    max_objects=5,
)


class SettingsStore(JsonObjects):
    """The one NoteSettings of an account; read as the defaults until it is first written."""

    get_json = None   # get() answers a row that is not stored

    async def get(self, conn: Conn, account_id: str, ids: Sequence[str] | None) -> list[dict[str, Any]]:
        if ids is not None and "singleton" not in ids:
            return []
        stored = await super().get(conn, account_id, ["singleton"])
        return stored or [{"id": "singleton", "defaultSort": "title", "showPinnedFirst": True}]

    async def update(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await tx.executemany(
            f"INSERT INTO {self.table} (account_id, id, data) VALUES (?, ?, ?)"
            " ON CONFLICT (account_id, id) DO UPDATE SET data = excluded.data",
            [(account_id, o["id"], self.encode(o)) for o in objects])


NOTE_SETTINGS = DataType(
    name="NoteSettings",
    properties=(
        Property("id", "Id", server_set=True, immutable=True),
        Property("defaultSort", "String", default="title"),
        Property("showPinnedFirst", "Boolean", default=True),
    ),
    store=SettingsStore("test_note_settings", "NoteSettings", ("id", "defaultSort", "showPinnedFirst")),
    standard_methods=("get", "changes", "set"),
    singleton=True,
)

PLUGIN = Plugin(
    name="notes",
    capabilities=(Capability(NOTES, session_info=lambda config: {"maxNoteSize": MAX_NOTE_SIZE},
                             account_info=lambda config, access: {"canPin": access.may_write},
                             data_types=(NOTE, NOTEBOOK, NOTE_SETTINGS)),),
    migrations="notes_migrations",
)
