"""Database: SQLite in WAL mode, one locked writer, a few readers, numbered migrations."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import itertools
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite

from jmaple.config import StorageConfig

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
T = TypeVar("T")


class Busy(Exception):
    """The database stayed locked by another writer for longer than the busy timeout."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer Jmaple than this one."""


class MigrationFailed(Exception):
    """A migration file failed; its transaction was rolled back."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _rows(rows: list[tuple[Any, ...]]) -> Any:
    return rows


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


# A read runs on the event loop while it is quick: a hop to the connection's thread costs more than a
# typical read (see DESIGN.md's cost model). SQLite calls a progress handler every PROGRESS_STEPS
# virtual-machine steps of a statement, counted over its executions (~0.3 ms of work; a 50-row IN takes
# ~1,200 steps). The handler interrupts a read that has run for INLINE_BUDGET since its first call and
# then used INLINE_BUDGET more of CPU time (CPU time too, since a process descheduled meanwhile is not
# running a slow read; the cheap wall clock first, as reading the CPU clock is a system call), or that has
# held the loop INLINE_WALL_CAP past its budget whatever its CPU time (a read waiting on the disk). The read
# then runs again on the thread, and its SQL goes straight there for the next SLOW_SECONDS (SLOW_MEMORY
# statements at most).
INLINE_BUDGET = 0.001
INLINE_WALL_CAP = 0.01
PROGRESS_STEPS = 10_000
SLOW_SECONDS = 60.0
SLOW_MEMORY = 512
_NOT_INLINE: Any = object()


class _Reader:
    """A reader connection: its aiosqlite thread, and its sqlite3 connection for reads run inline.

    Inline reads use no busy timeout, so a lock can never stall the event loop: they move to the
    thread, which waits up to the configured timeout.
    """

    __slots__ = ("aio", "raw", "slow", "busy_ms", "inflight", "wall_deadline", "cpu_deadline", "serial")

    def __init__(self, aio: aiosqlite.Connection, slow: dict[str, float], busy_timeout: float, serial: int):
        self.aio = aio
        self.serial = serial   # of its Database
        self.raw: sqlite3.Connection = aio._conn   # opened with check_same_thread=False
        self.slow = slow
        self.busy_ms = int(busy_timeout * 1000)
        self.inflight: asyncio.Future[Any] | None = None   # a hop still running on the thread
        self.wall_deadline: float | None = None
        self.cpu_deadline: float | None = None

    def _progress(self) -> bool:
        if self.wall_deadline is None:
            self.wall_deadline = time.perf_counter() + INLINE_BUDGET
            return False
        now = time.perf_counter()
        if self.cpu_deadline is None:
            if now < self.wall_deadline:
                return False
            self.cpu_deadline = time.thread_time() + INLINE_BUDGET
            return False
        # A read waiting on the disk uses little CPU: the wall clock bounds how long it may hold the loop.
        return time.thread_time() > self.cpu_deadline or now > self.wall_deadline + INLINE_WALL_CAP

    def _is_slow(self, sql: str | None) -> bool:
        until = self.slow.get(sql)   # type: ignore[arg-type]
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self.slow[sql]   # type: ignore[arg-type]  # time to try it inline again
        return False

    def run_inline(self, conn: Conn, sql: str | None, params: Sequence[Any] | dict[str, Any]) -> Any:
        """conn's queued reads, then sql, run here; _NOT_INLINE for whatever must go to the thread."""
        if self.slow and self._is_slow(sql) or (self.inflight is not None and not self.inflight.done()):
            return _NOT_INLINE
        raw = self.raw
        queued = conn._queued
        self.wall_deadline = self.cpu_deadline = None
        raw.set_progress_handler(self._progress, PROGRESS_STEPS)
        try:
            while queued:
                item = queued[0]
                if self.slow and self._is_slow(item.sql):
                    return _NOT_INLINE
                try:
                    item.rows = raw.execute(item.sql, item.params).fetchall()
                except Exception as exc:   # reported to whoever awaits that statement, as on the thread
                    if isinstance(exc, sqlite3.OperationalError) and self._give_up(item.sql, exc):
                        return _NOT_INLINE
                    item.error = exc
                item.done = True
                del queued[0]
            if sql is None:
                return None
            try:
                return raw.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if self._give_up(sql, exc):
                    return _NOT_INLINE
                raise
        finally:
            raw.set_progress_handler(None, 0)

    def _give_up(self, sql: str, exc: sqlite3.OperationalError) -> bool:
        """Whether a read that failed inline should run again on the thread (too slow, or locked)."""
        if str(exc) == "interrupted":
            if len(self.slow) >= SLOW_MEMORY:
                del self.slow[next(iter(self.slow))]
            self.slow[sql] = time.monotonic() + SLOW_SECONDS
            return True
        return _is_busy(exc)


class Conn:
    """One connection with the few calls storage functions use.

    On the writer each call is one hop to its thread; on a reader, a quick read runs on the event loop
    and a slow one on the thread. Statements queued with `later()` ride along with the connection's next
    statement (one hop for both), in the order they were issued.
    """

    def __init__(self, connection: aiosqlite.Connection, reader: _Reader | None = None):
        self._c = connection
        self._reader = reader
        self._queued: list[Later[Any]] = []

    @property
    def reader_of(self) -> int | None:
        """The serial of the Database whose reader this is; None for the writer (a transaction)."""
        return self._reader.serial if self._reader is not None else None

    async def all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        try:
            if self._reader is not None:
                rows = self._reader.run_inline(self, sql, params)
                if rows is not _NOT_INLINE:
                    return rows   # type: ignore[no-any-return]
            elif not self._queued:
                return await self._c.execute_fetchall(sql, params)   # type: ignore[return-value]  # a list
            return await self._hop(sql, params)   # type: ignore[no-any-return]
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

    def later(self, sql: str, params: Sequence[Any] | dict[str, Any] = (),
              convert: Callable[[list[tuple[Any, ...]]], T] = _rows) -> Later[T]:
        """Queue a read to run just before this connection's next statement, in the same hop.

        Await the result (before leaving the read() or write() block) for convert(rows); if no
        statement came in between, the read runs on its own then.
        """
        queued = Later(self, sql, params, convert)
        self._queued.append(queued)
        return queued

    async def _flush(self) -> None:
        """Run the queued statements now."""
        if self._reader is not None and self._reader.run_inline(self, None, ()) is not _NOT_INLINE:
            return
        await self._hop(None, ())

    async def _hop(self, sql: str | None, params: Sequence[Any] | dict[str, Any], fetch: bool = True) -> Any:
        """One trip to the connection's thread: the queued statements, then sql (rows, or its rowcount)."""
        queued, self._queued = self._queued, []
        reader = self._reader
        raw = self._c._conn   # aiosqlite's sqlite3 connection, used on its own thread (below)

        def run() -> Any:
            if reader is not None:
                raw.execute(f"PRAGMA busy_timeout = {reader.busy_ms}")
            try:
                for item in queued:
                    try:
                        item.rows = raw.execute(item.sql, item.params).fetchall()
                    except Exception as exc:   # reported to whoever awaits that statement
                        item.error = exc
                if sql is None:
                    return None
                cursor = raw.execute(sql, params)
                return cursor.fetchall() if fetch else cursor.rowcount
            finally:
                if reader is not None:
                    raw.execute("PRAGMA busy_timeout = 0")

        failure: BaseException = asyncio.CancelledError()
        try:
            if reader is None:
                return await self._c._execute(run)
            # A reader goes back to the pool only once its thread is done with it (even if the caller
            # is cancelled meanwhile): the next user may run reads inline on the same connection.
            task = reader.inflight = asyncio.ensure_future(self._c._execute(run))
            # If the caller is cancelled, nobody awaits the task: retrieve its outcome, so that a failure
            # after the cancellation is not logged as "exception was never retrieved".
            task.add_done_callback(_retrieve)
            return await asyncio.shield(task)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            for item in queued:
                item.done = True
                if item.rows is None and item.error is None:   # the trip ended before it ran
                    item.error = failure if isinstance(failure, Exception) else asyncio.CancelledError()

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        try:
            if self._queued or self._reader is not None:
                return await self._hop(sql, params, fetch=False)   # type: ignore[no-any-return]
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
            if self._queued:
                await self._flush()
            await self._c.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise Busy(str(exc)) from exc
            raise


class Later(Generic[T]):
    """A statement queued on a Conn (Conn.later); await it for its converted rows."""

    __slots__ = ("conn", "sql", "params", "convert", "rows", "error", "done")

    def __init__(self, conn: Conn, sql: str, params: Sequence[Any] | dict[str, Any],
                 convert: Callable[[list[tuple[Any, ...]]], T]):
        self.conn = conn
        self.sql = sql
        self.params = params
        self.convert = convert
        self.rows: list[tuple[Any, ...]] | None = None
        self.error: BaseException | None = None
        self.done = False

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done:
            yield from self.conn._flush().__await__()
        if self.error is not None:
            if isinstance(self.error, sqlite3.OperationalError) and _is_busy(self.error):
                raise Busy(str(self.error)) from self.error
            raise self.error
        assert self.rows is not None
        return self.convert(self.rows)


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


_DATABASES = itertools.count(1)


class Database:
    """The one SQLite database of a data directory."""

    def __init__(self, path: Path, storage: StorageConfig, clock: Callable[[], float]):
        self.serial = next(_DATABASES)   # tells apart the databases one process opens (e.g. in tests)
        self.path = path
        self.storage = storage
        self.clock = clock
        self._writer: aiosqlite.Connection | None = None
        self._readers: asyncio.Queue[_Reader] = asyncio.Queue()
        self._all_readers: list[_Reader] = []
        self._slow: dict[str, float] = {}   # SQL of reads too slow to run on the event loop -> until when
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
        # A reader's sqlite3 connection also runs quick reads on the event loop's thread (_Reader);
        # never two threads at once, as a reader is used by one holder at a time.
        conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.storage.busy_timeout,
                                       check_same_thread=not readonly)
        try:
            # A reader waits for locks only on its thread (Conn._hop), never inline.
            busy_ms = 0 if readonly else int(self.storage.busy_timeout * 1000)
            await conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute(f"PRAGMA synchronous = {self.storage.synchronous}")
            if readonly:
                await conn.execute("PRAGMA query_only = ON")
            else:
                # RFC 8620 §7.2 wants a destroyed push subscription's URL and keys erased from storage.
                # Without this (SQLite's default unless built with SQLITE_SECURE_DELETE) an updated or
                # deleted row leaves its old bytes in free space until reused; with it they are zeroed.
                # Only writes pay, and little: the pages written are the same.
                await conn.execute("PRAGMA secure_delete = ON")
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
            reader = _Reader(await self._connection(readonly=True), self._slow, self.storage.busy_timeout,
                             self.serial)
            self._all_readers.append(reader)
            self._readers.put_nowait(reader)

    async def close(self) -> None:
        for reader in self._all_readers:
            await reader.aio.close()
        self._all_readers.clear()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    def read(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        """A reader connection (a WAL snapshot per statement; read the state before the data)."""
        return _Reading(self._readers)

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


class _Reading:
    """Database.read(): a plain class rather than a generator, as it runs for every read-only call."""

    __slots__ = ("_readers", "_reader")

    def __init__(self, readers: asyncio.Queue[_Reader]):
        self._readers = readers

    async def __aenter__(self) -> Conn:
        try:
            self._reader = self._readers.get_nowait()
        except asyncio.QueueEmpty:
            self._reader = await self._readers.get()
        return Conn(self._reader.aio, self._reader)

    async def __aexit__(self, *exc_info: object) -> None:
        reader = self._reader
        if reader.inflight is not None and not reader.inflight.done():
            # A cancelled caller left a read running on the thread: the reader returns when it ends.
            reader.inflight.add_done_callback(lambda _: self._readers.put_nowait(reader))
        else:
            reader.inflight = None
            self._readers.put_nowait(reader)


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
