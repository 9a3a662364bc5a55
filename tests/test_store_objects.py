"""JsonObjects (jmaple.store.objects): the core's store for objects kept whole as JSON, and its cache."""

from __future__ import annotations

import orjson
import pytest

import notes
from jmaple.app import open_runtime
from jmaple.config import Config
from jmaple.store import changes
from jmaple.store.objects import JsonObjects
from jmaple.users import create_user


@pytest.fixture
async def runtime(config):
    async with open_runtime(config, [notes.PLUGIN]) as runtime:
        yield runtime


@pytest.fixture
async def accounts(runtime):
    return [(await create_user(runtime, f"{n}@example.org", n, "pw-" + n * 8)).account_id for n in ("a", "b")]


def store(cache_bytes: int = 1 << 20) -> JsonObjects:
    """A second store on the notes table (its own cache), with two of its properties."""
    return JsonObjects("test_notes", "Note", ("id", "title", "rank"), cache_bytes=cache_bytes)


async def write(runtime, account_id, *, insert=(), update=(), delete=(), s=None) -> None:
    """Write through a store and record the changes, as the standard /set does (one transaction)."""
    s = s or store()
    async with runtime.db.write() as tx:
        await s.insert(tx, account_id, list(insert))
        await s.update(tx, account_id, list(update))
        await s.delete(tx, account_id, list(delete))
        await changes.record(tx, account_id, "Note", created=[o["id"] for o in insert],
                             updated=[o["id"] for o in update], destroyed=list(delete))


async def read_json(runtime, s, account_id, ids):
    async with runtime.db.read() as conn:
        state, found, text = await s.get_json(conn, account_id, ids)
        return state, found, orjson.loads(text)


async def test_objects_are_written_with_exactly_the_declared_properties(runtime, accounts):
    a, b = accounts
    await write(runtime, a, insert=[{"id": "t1", "title": "ü \u2028 \"q\"", "stray": 1}, {"rank": 3, "id": "t2"}])
    await write(runtime, b, insert=[{"id": "t1", "title": "other account"}])
    async with runtime.db.read() as conn:
        assert await store().get(conn, a, ["t2", "t1"]) == [{"id": "t2", "title": None, "rank": 3},
                                                            {"id": "t1", "title": "ü \u2028 \"q\"", "rank": None}]
        assert [list(o) for o in await store().get(conn, a, None)] == [["id", "title", "rank"]] * 2


async def test_get_json_answers_what_get_answers_with_the_state_of_that_data(runtime, accounts):
    a, b = accounts
    s = store()
    await write(runtime, a, insert=[{"id": f"t{i}", "title": f"é{i}" * i, "rank": i} for i in range(60)])
    await write(runtime, b, insert=[{"id": "t0", "title": "not yours"}])
    async with runtime.db.read() as conn:
        state = await changes.state(conn, a, "Note")
    for _ in range(2):   # read from the database, then from memory
        for ids in (["t5", "t1", "t59"], ["t3", "missing", "t4"], ["missing"], [], None, [f"t{i}" for i in range(60)],
                    ["t7"]):
            got_state, found, objects = await read_json(runtime, s, a, ids)
            async with runtime.db.read() as conn:
                assert objects == await s.get(conn, a, ids)
            assert found == [o["id"] for o in objects] and got_state == state
    assert await read_json(runtime, s, "nobody", ["t1"]) == ("0", [], [])
    assert await read_json(runtime, s, "nobody", None) == ("0", [], [])


async def test_what_is_kept_in_memory_is_used_until_the_state_moves(runtime, accounts):
    [a, _] = accounts
    s = store()
    await write(runtime, a, insert=[{"id": "t1", "title": "one"}, {"id": "t2", "title": "two"}])
    await read_json(runtime, s, a, ["t1", "t2"])
    # A write that does not record its change (which the store's contract forbids) is not seen: proof
    # that the objects come from memory while the state stands.
    async with runtime.db.write() as tx:
        await tx.execute("UPDATE test_notes SET data = ? WHERE id = 't1'", (s.encode({"id": "t1", "title": "x"}),))
    assert (await read_json(runtime, s, a, ["t1"]))[2] == [{"id": "t1", "title": "one", "rank": None}]
    # Any recorded change of the type, by whichever connection, is seen at once.
    await write(runtime, a, update=[{"id": "t2", "title": "deux"}])
    _, _, objects = await read_json(runtime, s, a, ["t1", "t2"])
    assert objects == [{"id": "t1", "title": "x", "rank": None}, {"id": "t2", "title": "deux", "rank": None}]
    await write(runtime, a, delete=["t1"])
    assert (await read_json(runtime, s, a, ["t1", "t2"]))[1] == ["t2"]


async def test_a_change_by_another_process_is_seen(runtime, accounts, config):
    [a, _] = accounts
    s = store()
    await write(runtime, a, insert=[{"id": "t1", "title": "one"}])
    await read_json(runtime, s, a, ["t1"])
    async with open_runtime(config, [notes.PLUGIN]) as other:   # its own database connections, as the CLI
        await write(other, a, update=[{"id": "t1", "title": "changed elsewhere"}])
    assert (await read_json(runtime, s, a, ["t1"]))[2] == [{"id": "t1", "title": "changed elsewhere", "rank": None}]


async def test_reads_inside_a_transaction_that_rolls_back_are_not_kept(runtime, accounts):
    [a, _] = accounts
    s = store()
    await write(runtime, a, insert=[{"id": "t1", "title": "committed"}])

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        async with runtime.db.write() as tx:
            await s.update(tx, a, [{"id": "t1", "title": "rolled back"}])
            await changes.record(tx, a, "Note", updated=["t1"])
            state, _, text = await s.get_json(tx, a, ["t1"])
            assert orjson.loads(text)[0]["title"] == "rolled back"
            raise Rollback
    # The same state number may come again with other data; nothing of the rolled-back one may answer.
    await write(runtime, a, update=[{"id": "t1", "title": "second"}])
    got_state, _, objects = await read_json(runtime, s, a, ["t1"])
    assert got_state == state and objects[0]["title"] == "second"


async def test_memory_stays_within_its_bound_and_answers_stay_right(runtime, accounts):
    a, b = accounts
    s = store(cache_bytes=400)
    await write(runtime, a, insert=[{"id": f"t{i}", "title": "a" * 50} for i in range(4)])
    await write(runtime, b, insert=[{"id": f"t{i}", "title": "b" * 50} for i in range(4)])
    for _ in range(3):
        for account, letter in ((a, "a"), (b, "b")):
            for ids in (["t0", "t1"], ["t2", "t3"], ["t0", "t1", "t2", "t3"]):
                _, found, objects = await read_json(runtime, s, account, ids)
                assert found == ids and all(o["title"] == letter * 50 for o in objects)
                assert s._cached_bytes <= 400
    huge = store(cache_bytes=10)   # an answer larger than the bound is not kept at all
    await read_json(runtime, huge, a, ["t0"])
    assert huge._cached_bytes == 0


@pytest.mark.parametrize("table", ["Things", "things; DROP TABLE x", "", "1things", "thïngs"])
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(table):
    with pytest.raises(ValueError, match="table name"):
        JsonObjects(table, "Thing", ("id",))


def test_the_properties_must_include_the_id():
    with pytest.raises(ValueError, match="include id"):
        JsonObjects("things", "Thing", ("name",))


async def test_an_id_with_a_separator_in_it_does_not_shift_the_others(runtime, accounts):
    """Ids made by a plugin itself may hold characters core ids never do; none may lend its object to another."""
    [a, _] = accounts
    s = store()
    await write(runtime, a, insert=[{"id": "x y", "title": "XY"}, {"id": "z,\"", "title": "Z"}])
    for _ in range(2):   # from the database, then from memory
        _, found, objects = await read_json(runtime, s, a, ["x", "y", "x y", "z,\""])
        assert found == ["x y", "z,\""] and [o["title"] for o in objects] == ["XY", "Z"]
        assert (await read_json(runtime, s, a, ["x"]))[1:] == ([], [])
        assert (await read_json(runtime, s, a, ["y"]))[1:] == ([], [])


async def test_two_databases_in_one_process_never_answer_for_each_other(tmp_path, accounts, runtime):
    """The same store object serves every database a process opens (tests open many): an account id and
    state that happen to be the same in two of them must not share what is kept in memory."""
    [a, _] = accounts
    s = store()
    async with runtime.db.read() as conn:
        modseq = await conn.value("SELECT modseq FROM accounts WHERE id = ?", (a,))
    await write(runtime, a, insert=[{"id": "t1", "title": "first database"}])
    other_config = Config.for_tests(data_dir=tmp_path / "other")
    async with open_runtime(other_config, [notes.PLUGIN]) as other:
        async with other.db.write() as tx:   # the same account id, and the same state, in another database
            await tx.execute("INSERT INTO users (id, login, password_hash, created_at) VALUES ('U', 'u', '', 0)")
            await tx.execute("INSERT INTO accounts (id, owner_id, name, modseq, created_at) VALUES (?, 'U', 'u', ?, 0)",
                             (a, modseq))
        await write(other, a, insert=[{"id": "t1", "title": "second database"}])
        assert (await read_json(runtime, s, a, ["t1"]))[2][0]["title"] == "first database"
        first_state = (await read_json(runtime, s, a, ["t1"]))[0]
        assert (await read_json(other, s, a, ["t1"]))[0] == first_state
        assert (await read_json(other, s, a, ["t1"]))[2][0]["title"] == "second database"
