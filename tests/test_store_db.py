"""Database (jmaple.store.db): the writer survives cancellation; failed opens leave no thread behind."""

from __future__ import annotations

import asyncio

from jmaple.config import StorageConfig
from jmaple.store.db import Database


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


async def test_opening_something_that_is_not_a_database_fails_cleanly(tmp_path):
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    try:
        async with Database.open(path, StorageConfig()):
            raise AssertionError("opened a non-database")
    except Exception as exc:
        assert "not a database" in str(exc) or "file is not a database" in str(exc)
