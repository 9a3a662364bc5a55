"""Content-addressed blob files under the data directory, uploads, references and collection (RFC 8620 §6)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from jmaple.config import LimitsConfig
from jmaple.store.db import Conn, Database, Transaction

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
ORPHAN_AGE = 3600.0   # seconds before a file without a row counts as abandoned, not mid-upload


@dataclass(frozen=True)
class Upload:
    account_id: str
    blob_id: str
    type: str
    size: int


def blob_id_of(data: bytes) -> str:
    return "B" + hashlib.sha256(data).hexdigest()


def is_blob_id(value: str) -> bool:
    return len(value) == 65 and value[0] == "B" and all(c in "0123456789abcdef" for c in value[1:])


def _unlink_paths(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class BlobStore:
    """Blob files named by the SHA-256 of their content, written atomically and durably."""

    def __init__(self, root: Path, limits: LimitsConfig):
        self.root = root
        self.limits = limits
        root.mkdir(parents=True, exist_ok=True)

    def path(self, blob_id: str) -> Path:
        return self.root / blob_id[1:3] / blob_id

    def exists(self, blob_id: str) -> bool:
        return is_blob_id(blob_id) and self.path(blob_id).exists()

    def _write_sync(self, blob_id: str, data: bytes) -> None:
        final = self.path(blob_id)
        if final.exists():
            return
        final.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def write(self, data: bytes) -> str:
        """Store bytes (a no-op when the same content is already there); returns the blob id."""
        blob_id = blob_id_of(data)
        await asyncio.to_thread(self._write_sync, blob_id, data)
        return blob_id

    async def read(self, blob_id: str) -> bytes:
        return await asyncio.to_thread(self.path(blob_id).read_bytes)

    async def register(self, tx: Transaction, blob_id: str, data: bytes) -> None:
        """Record a blob written with `write`; rewrites the file if a collection removed it meanwhile."""
        await tx.execute("INSERT INTO blobs (id, size, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                         (blob_id, len(data), int(tx.now)))
        if not self.path(blob_id).exists():
            await asyncio.to_thread(self._write_sync, blob_id, data)

    async def upload(self, db: Database, account_id: str, user_id: str, data: bytes, content_type: str) -> Upload:
        """Store an upload for an account, evicting the user's oldest unreferenced uploads over the quota."""
        blob_id = await self.write(data)
        async with db.write() as tx:
            await self.register(tx, blob_id, data)
            await tx.execute(
                "INSERT INTO blob_uploads (account_id, blob_id, user_id, type, size, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET created_at = excluded.created_at,"
                " type = excluded.type",
                (account_id, blob_id, user_id, content_type, len(data), int(tx.now)))
            await self._enforce_quota(tx, user_id, {(account_id, blob_id)})
        return Upload(account_id, blob_id, content_type, len(data))

    async def _enforce_quota(self, tx: Transaction, user_id: str, keep: set[tuple[str, str]]) -> None:
        # RFC 8620 §6.1: over quota, unreferenced uploads are deleted oldest first. The new uploads
        # (`keep`) count first whatever their timestamp (several uploads can share a second).
        rows = await tx.all(
            "SELECT u.account_id, u.blob_id, u.size FROM blob_uploads u WHERE u.user_id = ?"
            " AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob_id = u.blob_id AND r.account_id = u.account_id)"
            " ORDER BY u.created_at DESC", (user_id,))
        rows.sort(key=lambda r: (r[0], r[1]) not in keep)   # stable: the kept first, then newest first
        total = 0
        evict = []
        for account_id, blob_id, size in rows:
            total += size
            if total > self.limits.upload_quota and (account_id, blob_id) not in keep:
                evict.append((account_id, blob_id, user_id))
        await tx.executemany("DELETE FROM blob_uploads WHERE account_id = ? AND blob_id = ? AND user_id = ?", evict)

    # RFC 8620 §6.1: an unreferenced blob is readable only by whoever uploaded it, even in a shared
    # account; a blob an object of the account holds is readable by everyone who may read the account.
    _READABLE = ("SELECT blob_id FROM blob_uploads WHERE account_id = ? AND user_id = ? AND blob_id IN ({marks})"
                 " UNION SELECT blob_id FROM blob_refs WHERE account_id = ? AND blob_id IN ({marks})")

    async def may_read(self, conn: Conn, account_id: str, blob_id: str, *, user_id: str) -> bool:
        """Whether user_id uploaded the blob to the account, or an object of the account references it."""
        return blob_id in await self.readable(conn, account_id, (blob_id,), user_id=user_id)

    async def readable(self, conn: Conn, account_id: str, blob_ids: Iterable[str], *, user_id: str) -> set[str]:
        """Those of blob_ids that user_id may read in the account (see _READABLE)."""
        ids = list(set(blob_ids))
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = await conn.all(self._READABLE.format(marks=marks), (account_id, user_id, *ids, account_id, *ids))
        return {r[0] for r in rows}

    async def grant_upload(self, tx: Transaction, account_id: str, user_id: str,
                           blob_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make blobs readable in another account as if user_id uploaded them there (Blob/copy).

        The copies count against the user's upload quota like uploads; returns (copied, over quota):
        blobs that do not fit even after evicting the user's older unreferenced uploads are not copied.
        """
        ids = list(dict.fromkeys(blob_ids))
        if not ids:
            return [], []
        marks = ",".join("?" * len(ids))
        sizes = dict(await tx.all(f"SELECT id, size FROM blobs WHERE id IN ({marks})", ids))
        # Those already referenced in the target account cost nothing; the others must fit in the quota.
        held = {r[0] for r in await tx.all(
            f"SELECT DISTINCT blob_id FROM blob_refs WHERE account_id = ? AND blob_id IN ({marks})",
            (account_id, *ids))}
        copied: list[str] = []
        refused: list[str] = []
        total = 0
        for blob_id in ids:
            size = 0 if blob_id in held else sizes.get(blob_id, 0)
            if total + size > self.limits.upload_quota:
                refused.append(blob_id)
            else:
                total += size
                copied.append(blob_id)
        await tx.executemany(
            "INSERT INTO blob_uploads (account_id, blob_id, user_id, type, size, created_at)"
            " SELECT ?, id, ?, 'application/octet-stream', size, ? FROM blobs WHERE id = ?"
            " ON CONFLICT DO UPDATE SET created_at = excluded.created_at",
            [(account_id, user_id, int(tx.now), b) for b in copied])
        await self._enforce_quota(tx, user_id, {(account_id, b) for b in copied})
        return copied, refused

    async def add_refs(self, tx: Transaction, account_id: str, owner: str, blob_ids: Iterable[str]) -> None:
        """Record that an object (`owner`, e.g. "Email:M1") of the account holds these blobs."""
        await tx.executemany("INSERT INTO blob_refs (account_id, blob_id, owner) VALUES (?, ?, ?)"
                             " ON CONFLICT DO NOTHING", [(account_id, b, owner) for b in set(blob_ids)])

    async def drop_refs(self, tx: Transaction, account_id: str, owners: Iterable[str]) -> None:
        """Forget an object's blobs; the files stay until the next collection."""
        await tx.executemany("DELETE FROM blob_refs WHERE account_id = ? AND owner = ?",
                             [(account_id, o) for o in owners])

    async def collect(self, db: Database) -> int:
        """Delete expired uploads, then every blob nothing refers to; returns how many files went.

        A blob whose last reference a method dropped therefore outlives that call (RFC 8620 §6) and
        goes at the next collection. Files without a row (an upload whose transaction failed, or a
        crash mid-write) go once they are an hour old, so an upload in progress is never touched.
        """
        lifetime = self.limits.upload_lifetime_hours * 3600
        async with db.write() as tx:
            await tx.execute("DELETE FROM blob_uploads WHERE created_at < ?", (int(tx.now) - lifetime,))
            rows = await tx.all(
                "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM blob_uploads u WHERE u.blob_id = blobs.id)"
                " AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob_id = blobs.id) RETURNING id")
            doomed = [r[0] for r in rows]
            # Unlinked inside the write lock, so a concurrent upload of the same bytes rewrites the file.
            tx.after_commit(lambda: self._unlink(doomed))
        # Scanning the directory may be slow: do it in a thread, outside the write lock.
        old_files, stale_temps = await asyncio.to_thread(self._old_files, time.time() - ORPHAN_AGE)
        orphans: list[str] = []
        for start in range(0, len(old_files), 500):
            chunk = old_files[start:start + 500]
            async with db.write() as tx:
                rows = await tx.all(f"SELECT id FROM blobs WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                known = {r[0] for r in rows}
                unknown = [b for b in chunk if b not in known]
                tx.after_commit(lambda unknown=unknown: self._unlink(unknown))
            orphans.extend(unknown)
        await asyncio.to_thread(_unlink_paths, stale_temps)
        return len(doomed) + len(orphans)

    def _old_files(self, cutoff: float) -> tuple[list[str], list[Path]]:
        """Blob ids of files last modified before cutoff, and temporary files as old."""
        blob_ids: list[str] = []
        temps: list[Path] = []
        for path in self.root.glob("*/*"):
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            if path.name.startswith(TEMP_PREFIX):
                temps.append(path)
            elif is_blob_id(path.name):
                blob_ids.append(path.name)
        return blob_ids, temps

    def _unlink(self, blob_ids: list[str]) -> None:
        _unlink_paths([self.path(b) for b in blob_ids])

    async def check(self, conn: Conn) -> list[str]:
        """Problems between the blob table and the files: missing, truncated or corrupted files (each is
        hashed), orphan files, references to blobs without a row."""
        rows = await conn.all("SELECT id, size FROM blobs")
        problems = await asyncio.to_thread(self._check_files, dict(rows))
        dangling = await conn.all(
            "SELECT account_id, blob_id, owner FROM blob_refs WHERE blob_id NOT IN (SELECT id FROM blobs)")
        problems.extend(f"{owner} in account {a} refers to missing blob {b}" for a, b, owner in dangling)
        return problems

    def _check_files(self, known: dict[str, int]) -> list[str]:
        problems = []
        for blob_id, size in known.items():
            path = self.path(blob_id)
            try:
                with open(path, "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
                    actual = fh.tell()
            except FileNotFoundError:
                problems.append(f"blob {blob_id}: file {path} is missing")
                continue
            except OSError as exc:
                problems.append(f"blob {blob_id}: file {path} cannot be read: {exc}")
                continue
            if actual != size:
                problems.append(f"blob {blob_id}: file {path} has {actual} bytes, expected {size}")
            elif digest != blob_id[1:]:
                problems.append(f"blob {blob_id}: file {path} is corrupted (its content does not match its id)")
        for path in self.root.glob("*/B*"):
            if path.name not in known:
                problems.append(f"orphan blob file {path} (no row; the next collection removes it)")
        return problems
