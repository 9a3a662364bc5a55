"""Database: SQLite in WAL mode, one locked writer, a few readers, numbered migrations."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from jmaple.config import StorageConfig

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class Busy(Exception):
    """The database stayed locked by another writer for longer than the busy timeout."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer Jmaple than this one."""


class MigrationFailed(Exception):
    """A migration file failed; its transaction was rolled back."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class Conn:
    """One connection with the few calls storage functions use; each call is one hop to its thread."""

    def __init__(self, connection: aiosqlite.Connection):
        self._c = connection

    async def all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(await self._c.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise Busy(str(exc)) from exc
            raise

    async def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def value(self, sql: str, params: Sequence[Any] | dict[str, Any] = (), default: Any = None) -> Any:
        row = await self.one(sql, params)
        return row[0] if row else default

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        try:
            async with self._c.execute(sql, params) as cursor:
                return cursor.rowcount
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise Busy(str(exc)) from exc
            raise

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        try:
            await self._c.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise Busy(str(exc)) from exc
            raise


class Transaction(Conn):
    """The writer inside BEGIN IMMEDIATE; records what changed so the Dispatcher can publish it."""

    def __init__(self, connection: aiosqlite.Connection, now: float):
        super().__init__(connection)
        self.now = now
        # account_id -> {type: modseq} of every type whose state this transaction moved.
        self.changed: dict[str, dict[str, int]] = {}
        self.seq: int | None = None
        self._after_commit: list[Callable[[], Any]] = []

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run callback once the transaction has committed (never after a rollback)."""
        self._after_commit.append(callback)


class Database:
    """The one SQLite database of a data directory."""

    def __init__(self, path: Path, storage: StorageConfig, clock: Callable[[], float]):
        self.path = path
        self.storage = storage
        self.clock = clock
        self._writer: aiosqlite.Connection | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._write_lock = asyncio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: Path, storage: StorageConfig,
                   clock: Callable[[], float] = time.time) -> AsyncIterator[Database]:
        db = cls(path, storage, clock)
        try:
            await db._connect()
            yield db
        finally:
            await db.close()

    async def _connection(self, *, readonly: bool) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.storage.busy_timeout)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.storage.busy_timeout * 1000)}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute(f"PRAGMA synchronous = {self.storage.synchronous}")
            if readonly:
                await conn.execute("PRAGMA query_only = ON")
        except BaseException:
            await conn.close()   # its thread would otherwise keep the process alive
            raise
        return conn

    async def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connection(readonly=False)
        async with self._writer.execute("PRAGMA journal_mode = WAL") as cursor:
            mode = (await cursor.fetchone())[0]
        if mode != "wal":
            raise RuntimeError(f"{self.path}: could not switch to WAL mode (got {mode})")
        for _ in range(self.storage.readers):
            conn = await self._connection(readonly=True)
            self._all_readers.append(conn)
            self._readers.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all_readers:
            await conn.close()
        self._all_readers.clear()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        """A reader connection (a WAL snapshot per statement; read the state before the data)."""
        conn = await self._readers.get()
        try:
            yield Conn(conn)
        finally:
            self._readers.put_nowait(conn)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        """The writer inside one transaction: COMMIT on success, ROLLBACK on any exception.

        Raises Busy when another process holds the write lock for longer than the busy timeout.
        """
        assert self._writer is not None
        async with self._write_lock:
            tx = Transaction(self._writer, self.clock())
            try:
                await self._statement("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise Busy(str(exc)) from exc
                raise
            except BaseException:
                await self._rollback()
                raise
            try:
                yield tx
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._statement("COMMIT")
            except BaseException:
                await self._rollback()
                raise
            # Still under the lock: the next writer sees the callbacks' effects (e.g. unlinked files).
            for callback in tx._after_commit:
                try:
                    callback()
                except Exception:
                    log.exception("after-commit callback failed")

    async def _statement(self, sql: str) -> None:
        """Run BEGIN/COMMIT/ROLLBACK to completion even if the caller is cancelled meanwhile: a cancelled
        await would otherwise leave the shared writer connection inside a transaction."""
        assert self._writer is not None
        task = asyncio.ensure_future(self._writer.execute(sql))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise

    async def _rollback(self) -> None:
        assert self._writer is not None
        if self._writer.in_transaction:
            await self._statement("ROLLBACK")

    async def data_version(self) -> int:
        """PRAGMA data_version of one reader: it moves whenever any other connection commits."""
        async with self.read() as conn:
            return await conn.value("PRAGMA data_version")

    async def migrate(self, components: Sequence[tuple[str, str]]) -> list[str]:
        """Apply pending migrations of each (namespace, package); returns what was applied.

        Raises SchemaTooNew when the database knows a later version than the code ships.
        """
        assert self._writer is not None
        await self._writer.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " namespace TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
            " applied_at INTEGER NOT NULL, PRIMARY KEY (namespace, version))")
        applied: list[str] = []
        async with self._write_lock:
            for namespace, package in components:
                files = migration_files(package)
                rows = await Conn(self._writer).all(
                    "SELECT version FROM schema_migrations WHERE namespace = ?", (namespace,))
                done = {r[0] for r in rows}
                latest = max(files, default=0)
                if done and max(done) > latest:
                    raise SchemaTooNew(
                        f"{self.path}: schema {namespace!r} is at version {max(done)}, this Jmaple knows "
                        f"only up to {latest}; run the newer jmapled or restore a backup")
                for version in sorted(set(files) - done):
                    name, sql = files[version]
                    await self._apply(namespace, version, name, sql)
                    applied.append(f"{namespace}/{name}")
        return applied

    async def _apply(self, namespace: str, version: int, name: str, sql: str) -> None:
        assert self._writer is not None
        # executescript runs the whole file; BEGIN/COMMIT around it makes the file atomic.
        script = (f"BEGIN IMMEDIATE;\n{sql}\n;"
                  f"INSERT INTO schema_migrations VALUES ('{namespace}', {version}, '{name}', "
                  f"{int(self.clock())});\nCOMMIT;")
        try:
            await self._writer.executescript(script)
        except sqlite3.Error as exc:
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")
            raise MigrationFailed(f"migration {namespace}/{name} failed: {exc}") from exc
        log.info("applied migration %s/%s", namespace, name)

    async def schema_versions(self) -> dict[str, int]:
        async with self.read() as conn:
            rows = await conn.all("SELECT namespace, max(version) FROM schema_migrations GROUP BY namespace")
        return dict(rows)


def migration_files(package: str) -> dict[int, tuple[str, str]]:
    """version -> (file name, SQL) of a migrations package holding 0001_*.sql files."""
    out: dict[int, tuple[str, str]] = {}
    for entry in importlib.resources.files(package).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            version = int(match.group(1))
            if version in out:
                raise RuntimeError(f"{package}: two migrations numbered {version}")
            out[version] = (entry.name, entry.read_text(encoding="utf-8"))
    return out
