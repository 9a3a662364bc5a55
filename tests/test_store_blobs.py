"""The blob store: content-addressed files, the upload quota, references and collection (RFC 8620 §6)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

import pytest

from jmaple.app import open_runtime
from jmaple.config import Config
from jmaple.store.blobs import blob_id_of
from jmaple.users import create_user

HOUR = 3600


class Clock:
    """The configuration's injected clock, moved by the tests."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextlib.asynccontextmanager
async def store(tmp_path, clock, **limits):
    config = Config.for_tests(data_dir=tmp_path / "data", clock=clock, limits=limits)
    async with open_runtime(config) as runtime:
        alice = await create_user(runtime, "alice@example.org", "Alice", "pw")
        bob = await create_user(runtime, "bob@example.org", "Bob", "pw")
        yield runtime, alice, bob


async def readable(runtime, user, blob_ids) -> set[str]:
    async with runtime.db.read() as conn:
        return await runtime.blobs.readable(conn, user.account_id, blob_ids, user_id=user.id)


async def upload(runtime, user, data: bytes) -> str:
    stored = await runtime.blobs.upload(runtime.db, user.account_id, user.id, data, "application/octet-stream")
    return stored.blob_id


def files(runtime) -> list[str]:
    return sorted(p.name for p in runtime.blobs.root.rglob("*") if p.is_file())


async def test_an_upload_is_one_file_named_by_its_content(tmp_path, clock):
    async with store(tmp_path, clock) as (runtime, alice, bob):
        data = b"hello blob"
        stored = await runtime.blobs.upload(runtime.db, alice.account_id, alice.id, data, "text/plain")
        assert stored.blob_id == "B" + hashlib.sha256(data).hexdigest() == blob_id_of(data)
        assert (stored.account_id, stored.type, stored.size) == (alice.account_id, "text/plain", len(data))
        path = runtime.blobs.path(stored.blob_id)
        assert path.read_bytes() == data
        assert path.parent.parent == runtime.blobs.root
        # Written to a temporary name and renamed: nothing else is left behind.
        await upload(runtime, bob, data)
        await upload(runtime, alice, b"another")
        assert files(runtime) == sorted([stored.blob_id, blob_id_of(b"another")])
        assert await runtime.blobs.read(stored.blob_id) == data


async def test_register_rewrites_a_file_collected_between_write_and_commit(tmp_path, clock):
    async with store(tmp_path, clock) as (runtime, alice, bob):
        blob_id = await runtime.blobs.write(b"racing")
        runtime.blobs.path(blob_id).unlink()
        async with runtime.db.write() as tx:
            await runtime.blobs.register(tx, blob_id, b"racing")
        assert runtime.blobs.path(blob_id).read_bytes() == b"racing"


async def test_over_quota_the_oldest_unreferenced_uploads_are_evicted(tmp_path, clock):
    """RFC 8620 §6: over quota, unreferenced blobs are deleted oldest first until the new one fits."""
    async with store(tmp_path, clock, max_size_upload=100, upload_quota=250) as (runtime, alice, bob):
        blobs = []
        for n in range(3):
            blobs.append(await upload(runtime, alice, bytes([n]) * 100))
            clock.now += 10
        assert await readable(runtime, alice, blobs) == {blobs[1], blobs[2]}
        # Another user's uploads count against their own quota only.
        bobs = await upload(runtime, bob, b"b" * 100)
        assert await readable(runtime, alice, blobs) == {blobs[1], blobs[2]}
        assert await readable(runtime, bob, [bobs]) == {bobs}
        # A referenced blob does not count and is never evicted.
        async with runtime.db.write() as tx:
            await runtime.blobs.add_refs(tx, alice.account_id, "Note:N1", [blobs[1]])
        clock.now += 10
        newest = await upload(runtime, alice, b"n" * 100)
        assert await readable(runtime, alice, [*blobs, newest]) == {blobs[1], blobs[2], newest}
        clock.now += 10
        last = await upload(runtime, alice, b"l" * 100)
        assert await readable(runtime, alice, [*blobs, newest, last]) == {blobs[1], newest, last}


async def test_an_upload_of_bytes_another_user_uploaded_to_the_same_account_is_separate(tmp_path, clock):
    """Each user's upload has its own expiry and quota, even for identical bytes in one account."""
    async with store(tmp_path, clock, upload_lifetime_hours=1) as (runtime, alice, bob):
        first = await upload(runtime, alice, b"shared")
        clock.now += HOUR - 60
        await runtime.blobs.upload(runtime.db, alice.account_id, bob.id, b"shared", "text/plain")
        clock.now += 120
        await runtime.blobs.collect(runtime.db)
        assert await readable(runtime, alice, [first]) == set()   # alice's own upload expired
        async with runtime.db.read() as conn:
            assert await runtime.blobs.readable(conn, alice.account_id, [first], user_id=bob.id) == {first}


async def test_the_new_upload_is_kept_even_when_several_share_a_second(tmp_path, clock):
    async with store(tmp_path, clock, max_size_upload=100, upload_quota=250) as (runtime, alice, bob):
        blobs = [await upload(runtime, alice, bytes([n]) * 100) for n in range(5)]
        kept = await readable(runtime, alice, blobs)
        assert blobs[-1] in kept and len(kept) == 2


async def test_re_uploading_resets_the_expiry(tmp_path, clock):
    """RFC 8620 §6: re-uploading identical content should reset its expiry."""
    async with store(tmp_path, clock, upload_lifetime_hours=1) as (runtime, alice, bob):
        blob_id = await upload(runtime, alice, b"again")
        clock.now += HOUR - 60
        await upload(runtime, alice, b"again")
        clock.now += 120
        await runtime.blobs.collect(runtime.db)
        assert await readable(runtime, alice, [blob_id]) == {blob_id}
        assert runtime.blobs.path(blob_id).exists()


async def test_collect_removes_expired_unreferenced_blobs_and_keeps_the_rest(tmp_path, clock):
    async with store(tmp_path, clock, upload_lifetime_hours=1) as (runtime, alice, bob):
        expired = await upload(runtime, alice, b"expired")
        referenced = await upload(runtime, alice, b"referenced")
        shared = await upload(runtime, bob, b"expired")          # the same bytes, uploaded by bob too
        async with runtime.db.write() as tx:
            await runtime.blobs.add_refs(tx, alice.account_id, "Note:N1", [referenced])
        clock.now += HOUR / 2
        assert await runtime.blobs.collect(runtime.db) == 0      # nothing is deleted within the first hour
        clock.now += HOUR / 2 + 1
        bobs_young = await upload(runtime, bob, b"young")
        assert await runtime.blobs.collect(runtime.db) == 1      # both uploads of "expired" ran out
        assert await readable(runtime, alice, [expired, referenced]) == {referenced}
        assert await readable(runtime, bob, [shared, bobs_young]) == {bobs_young}
        assert files(runtime) == sorted([referenced, bobs_young])
        async with runtime.db.read() as conn:
            assert await runtime.blobs.check(conn) == []


async def test_a_blob_outlives_the_call_that_drops_its_last_reference(tmp_path, clock):
    """RFC 8620 §6: never deleted during the call that removed the last reference."""
    async with store(tmp_path, clock, upload_lifetime_hours=1) as (runtime, alice, bob):
        blob_id = await upload(runtime, alice, b"attachment")
        async with runtime.db.write() as tx:
            await runtime.blobs.add_refs(tx, alice.account_id, "Note:N1", [blob_id])
        clock.now += 2 * HOUR
        await runtime.blobs.collect(runtime.db)          # the upload expires; the reference holds it
        assert runtime.blobs.path(blob_id).exists()
        # One call destroys the old holder and creates a new one with the same blob.
        async with runtime.db.write() as tx:
            await runtime.blobs.drop_refs(tx, alice.account_id, ["Note:N1"])
            await runtime.blobs.add_refs(tx, alice.account_id, "Note:N2", [blob_id])
        await runtime.blobs.collect(runtime.db)
        assert await readable(runtime, alice, [blob_id]) == {blob_id}
        # The last reference goes: the file stays until the next collection.
        async with runtime.db.write() as tx:
            await runtime.blobs.drop_refs(tx, alice.account_id, ["Note:N2"])
        assert runtime.blobs.path(blob_id).read_bytes() == b"attachment"
        assert await runtime.blobs.collect(runtime.db) == 1
        assert not runtime.blobs.path(blob_id).exists()
        assert files(runtime) == []


async def test_a_blob_referenced_in_another_account_survives(tmp_path, clock):
    async with store(tmp_path, clock, upload_lifetime_hours=1) as (runtime, alice, bob):
        blob_id = await upload(runtime, alice, b"forwarded")
        async with runtime.db.write() as tx:
            await runtime.blobs.add_refs(tx, bob.account_id, "Note:N9", [blob_id])
        clock.now += 2 * HOUR
        await runtime.blobs.collect(runtime.db)
        assert await readable(runtime, alice, [blob_id]) == set()
        assert await readable(runtime, bob, [blob_id]) == {blob_id}
        assert runtime.blobs.path(blob_id).exists()


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_collect_removes_old_files_without_a_row_and_stale_temporary_files(tmp_path, clock):
    async with store(tmp_path, clock) as (runtime, alice, bob):
        kept = await upload(runtime, alice, b"kept")
        young = await runtime.blobs.write(b"mid-upload")            # no row yet: an upload in progress
        old = await runtime.blobs.write(b"failed transaction")      # no row, ever
        age(runtime.blobs.path(old), 2 * HOUR)
        age(runtime.blobs.path(kept), 2 * HOUR)
        stale = runtime.blobs.path(kept).parent / ".tmp-crashed"
        stale.write_bytes(b"half")
        age(stale, 2 * HOUR)
        fresh = runtime.blobs.path(kept).parent / ".tmp-writing"
        fresh.write_bytes(b"half")
        assert await runtime.blobs.collect(runtime.db) == 1
        assert files(runtime) == sorted([".tmp-writing", kept, young])


async def test_check_reports_missing_truncated_corrupted_and_orphan_files(tmp_path, clock):
    async with store(tmp_path, clock) as (runtime, alice, bob):
        missing, truncated, corrupted, fine = [await upload(runtime, alice, d)
                                               for d in (b"missing", b"truncated", b"corrupted", b"fine")]
        orphan = await runtime.blobs.write(b"orphan")
        async with runtime.db.read() as conn:
            assert await runtime.blobs.check(conn) == [
                f"orphan blob file {runtime.blobs.path(orphan)} (no row; the next collection removes it)"]
        runtime.blobs.path(missing).unlink()
        runtime.blobs.path(truncated).write_bytes(b"trunc")
        runtime.blobs.path(corrupted).write_bytes(b"CORRUPTED")
        async with runtime.db.read() as conn:
            problems = await runtime.blobs.check(conn)
        assert len(problems) == 4
        text = "\n".join(problems)
        assert f"blob {missing}: file {runtime.blobs.path(missing)} is missing" in text
        assert f"blob {truncated}: file {runtime.blobs.path(truncated)} has 5 bytes, expected 9" in text
        assert f"blob {corrupted}: file {runtime.blobs.path(corrupted)} is corrupted" in text
        assert fine not in text
