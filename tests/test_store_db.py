"""Database (jmaple.store.db): the writer survives cancellation; failed opens leave no thread behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3

import pytest

from jmaple.config import StorageConfig
from jmaple.store.db import Database, MigrationFailed


async def test_a_cancelled_transaction_leaves_the_writer_usable(tmp_path):
    """A client that disconnects mid-request cancels its task; the next write must still work."""
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig(synchronous="NORMAL")) as db:
        async with db.write() as tx:
            await tx.execute("CREATE TABLE t (x INTEGER)")

        async def write(n: int) -> None:
            async with db.write() as tx:
                await tx.execute("INSERT INTO t VALUES (?)", (n,))

        for n in range(30):
            task = asyncio.ensure_future(write(n))
            for _ in range(n % 6):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await write(1000)
        async with db.read() as conn:
            assert await conn.value("SELECT count(*) FROM t WHERE x = 1000") == 1


async def test_the_writer_zeroes_deleted_rows_whatever_sqlite_was_built_with(tmp_path):
    """RFC 8620 §7.2 (erasing a push subscription's URL and keys): PRAGMA secure_delete is on at open."""
    path = tmp_path / "db.sqlite3"
    async with Database.open(path, StorageConfig(synchronous="NORMAL")) as db:
        async with db.write() as tx:
            assert await tx.value("PRAGMA secure_delete") == 1
            await tx.execute("CREATE TABLE t (x TEXT)")
            await tx.execute("INSERT INTO t VALUES ('keep-0c1d'), ('erase-9f3e')")
        async with db.write() as tx:
            await tx.execute("DELETE FROM t WHERE x = 'erase-9f3e'")
    # Closed: the WAL was checkpointed into the database file and removed.
    files = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite3*"))
    assert b"keep-0c1d" in files and b"erase-9f3e" not in files


async def test_opening_something_that_is_not_a_database_fails_cleanly(tmp_path):
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    try:
        async with Database.open(path, StorageConfig()):
            raise AssertionError("opened a non-database")
    except Exception as exc:
        assert "not a database" in str(exc) or "file is not a database" in str(exc)


SLOW_READ = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
             " SELECT count(*) FROM c")


async def test_a_read_too_slow_for_the_event_loop_finishes_on_its_thread_while_the_loop_turns(tmp_path):
    """Quick reads run on the event loop; one past the inline budget moves to the reader's thread."""
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig()) as db:
        async with db.read() as conn:
            assert await conn.all("SELECT 1") == [(1,)]
            read = asyncio.ensure_future(conn.value(SLOW_READ))
            turns = 0
            while not read.done():
                turns += 1
                await asyncio.sleep(0)
            assert read.result() == 300000
            assert turns > 10
            assert await conn.value(SLOW_READ) == 300000   # known to be slow now: straight to the thread
            assert await conn.value("SELECT 2") == 2


async def test_a_cancelled_slow_read_gives_its_reader_back_only_when_its_thread_is_done(tmp_path):
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig(readers=1)) as db:

        async def slow() -> int:
            async with db.read() as conn:
                return await conn.value(SLOW_READ)

        for _ in range(3):
            task = asyncio.ensure_future(slow())
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with db.read() as conn:   # the one reader: usable once its thread has finished
                assert await conn.value("SELECT 42") == 42


async def test_a_queued_read_runs_with_the_next_statement_and_keeps_its_own_result_or_error(tmp_path):
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig()) as db:
        async with db.write() as tx:
            await tx.execute("CREATE TABLE t (x INTEGER)")
            await tx.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        async with db.read() as conn:
            count = conn.later("SELECT count(*) FROM t", (), lambda rows: rows[0][0])
            broken = conn.later("SELECT nope FROM nowhere")
            assert await conn.all("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
            assert await count == 2
            with pytest.raises(sqlite3.OperationalError, match="no such table"):
                await broken
            alone = conn.later("SELECT 3")
            assert await alone == [(3,)]   # nothing came after it: it runs on its own
        async with db.write() as tx:
            total = tx.later("SELECT sum(x) FROM t", (), lambda rows: rows[0][0])
            broken = tx.later("SELECT nope FROM nowhere")
            await tx.execute("INSERT INTO t VALUES (3)")
            assert await total == 3   # read before the insert that followed it
            with pytest.raises(sqlite3.OperationalError):
                await broken


async def test_a_queued_read_failing_in_python_keeps_its_error_to_itself(tmp_path):
    """A queued statement whose parameters sqlite3 refuses (an int over 64 bits) fails only itself."""
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig()) as db:
        async with db.read() as conn:
            huge = conn.later("SELECT ?", (2**70,))
            assert await conn.all("SELECT 1") == [(1,)]
            assert await conn.all("SELECT 2") == [(2,)]
            with pytest.raises(OverflowError):
                await huge


SLOW_FAILING_READ = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
                     " SELECT json('not json') FROM (SELECT count(*) FROM c)")


async def test_a_read_failing_after_its_caller_was_cancelled_logs_nothing(tmp_path, caplog):
    """The caller went away (a client disconnected); the read it left behind fails on its thread: that
    must not end up as asyncio's "Task exception was never retrieved"."""
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig(readers=1)) as db:

        async def read() -> None:
            async with db.read() as conn:
                await conn.all(SLOW_FAILING_READ)

        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(2):
                task = asyncio.ensure_future(read())
                await asyncio.sleep(0.02)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                async with db.read() as conn:   # waits for the reader's thread to be done
                    assert await conn.value("SELECT 1") == 1
            del task
            gc.collect()
            await asyncio.sleep(0)
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_failing_migration_leaves_nothing_behind_and_names_itself(tmp_path, monkeypatch):
    """Each migration runs in its own transaction: a file that fails half-way leaves no table and no
    record of itself, the ones before it stay applied, and a later start retries it."""
    package = tmp_path / "broken_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "0001_first.sql").write_text("CREATE TABLE first (x INTEGER);\n")
    (package / "0002_half.sql").write_text(
        "CREATE TABLE half (x INTEGER);\nINSERT INTO half VALUES (1);\nINSERT INTO nowhere VALUES (1);\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    async with Database.open(tmp_path / "db.sqlite3", StorageConfig()) as db:
        with pytest.raises(MigrationFailed, match="broken/0002_half.sql"):
            await db.migrate([("broken", "broken_migrations")])
        async with db.read() as conn:
            tables = {r[0] for r in await conn.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
            recorded = await conn.all("SELECT version FROM schema_migrations WHERE namespace = 'broken'")
        assert "first" in tables and "half" not in tables
        assert recorded == [(1,)]
        (package / "0002_half.sql").write_text("CREATE TABLE half (x INTEGER);\n")   # fixed by a new release
        assert await db.migrate([("broken", "broken_migrations")]) == ["broken/0002_half.sql"]
