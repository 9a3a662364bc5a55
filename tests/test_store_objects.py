"""JsonObjects (jmaple.store.objects): the core's store for objects kept whole as JSON."""

from __future__ import annotations

import orjson
import pytest

from jmaple.config import StorageConfig
from jmaple.store.db import Database
from jmaple.store.objects import JsonObjects

TABLE = ("CREATE TABLE things (account_id TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL,"
         " PRIMARY KEY (account_id, id)) WITHOUT ROWID")


@pytest.fixture
async def db(tmp_path):
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig(synchronous="NORMAL")) as db:
        async with db.write() as tx:
            await tx.execute(TABLE)
        yield db


async def test_objects_are_written_with_exactly_the_declared_properties(db):
    store = JsonObjects("things", ("id", "name", "size"))
    async with db.write() as tx:
        await store.insert(tx, "A1", [{"id": "t1", "name": "ü \u2028 \"q\"", "stray": 1}, {"size": 3, "id": "t2"}])
        await store.insert(tx, "A2", [{"id": "t1", "name": "other account"}])
    async with db.read() as conn:
        assert await store.get(conn, "A1", ["t2", "t1"]) == [{"id": "t2", "name": None, "size": 3},
                                                              {"id": "t1", "name": "ü \u2028 \"q\"", "size": None}]
        assert [list(o) for o in await store.get(conn, "A1", None)] == [["id", "name", "size"]] * 2


async def test_get_json_answers_what_get_answers_still_encoded(db):
    store = JsonObjects("things", ("id", "n"))
    async with db.write() as tx:
        await store.insert(tx, "A1", [{"id": f"t{i}", "n": {"deep": [i, None, "é"]}} for i in range(60)])
        await store.insert(tx, "A2", [{"id": "t0", "n": "not yours"}])
    async with db.read() as conn:
        for ids in (["t5", "t1", "t59"], ["t3", "missing", "t4"], ["missing"], [], None, [f"t{i}" for i in range(60)]):
            found, text = await store.get_json(conn, "A1", ids)
            objects = await store.get(conn, "A1", ids)
            assert orjson.loads(text) == objects
            assert found == [o["id"] for o in objects]
        assert await store.get_json(conn, "A3", None) == ([], "[]")   # an account without objects


async def test_updates_and_deletes_touch_one_account_only(db):
    store = JsonObjects("things", ("id", "n"))
    async with db.write() as tx:
        await store.insert(tx, "A1", [{"id": "t1", "n": 1}, {"id": "t2", "n": 2}])
        await store.insert(tx, "A2", [{"id": "t1", "n": 1}])
        await store.update(tx, "A1", [{"id": "t1"}])
        await store.delete(tx, "A1", ["t2"])
    async with db.read() as conn:
        assert await store.get_json(conn, "A1", None) == (["t1"], '[{"id":"t1","n":null}]')
        assert await store.get(conn, "A2", None) == [{"id": "t1", "n": 1}]


@pytest.mark.parametrize("table", ["Things", "things; DROP TABLE x", "", "1things", "thïngs"])
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(table):
    with pytest.raises(ValueError, match="table name"):
        JsonObjects(table, ("id",))


def test_the_properties_must_include_the_id():
    with pytest.raises(ValueError, match="include id"):
        JsonObjects("things", ("name",))
