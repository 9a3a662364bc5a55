"""The demo mailbox of `jmapled dev`: generated the same every time, imported once per data directory."""

from __future__ import annotations

import email
import email.policy
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from jmaple.app import open_runtime
from jmaple.cli import DEV_LOGIN, ensure_demo_user, seed_dev_data
from jmaple.config import Config
from jmaple.mail import devdata, storage
from jmaple.users import find_user


@pytest.fixture(scope="module")
def messages() -> list[devdata.DevMessage]:
    return devdata.generate()


def test_generation_is_deterministic_and_quick(messages):
    start = time.perf_counter()
    again = devdata.generate()
    assert time.perf_counter() - start < 2.0
    assert again == messages
    assert devdata.generate(seed=1) != messages


def test_the_demo_mailbox_looks_like_real_mail(messages):
    assert 300 <= len(messages) <= 600
    parsed = [email.message_from_bytes(m.raw, policy=email.policy.default) for m in messages]
    assert all(not p.defects for p in parsed)
    replies = [p for p in parsed if p["In-Reply-To"]]
    assert len(replies) > 150
    assert all(p["Subject"].startswith("Re: ") and p["References"].split()[-1] == p["In-Reply-To"]
               for p in replies)
    types = Counter(p.get_content_type() for p in parsed)
    assert types["multipart/mixed"] > 20 and types["multipart/alternative"] > 50 and types["text/plain"] > 100
    attachments = [a for p in parsed for a in p.iter_attachments()]
    kinds = Counter(a.get_content_type() for a in attachments)
    assert kinds["application/pdf"] > 5 and kinds["image/png"] > 5
    assert all(a.get_content().startswith(b"%PDF-" if a.get_content_type() == "application/pdf"
                                          else b"\x89PNG\r\n\x1a\n") for a in attachments)
    folders = Counter(m.folder for m in messages)
    assert folders[()] > 100 and folders[("Archive",)] > 50 and folders[("Sent",)] > 50
    assert sum("$seen" not in m.keywords for m in messages) > 30
    assert sum("$flagged" in m.keywords for m in messages) > 5
    assert [m.received_at for m in messages] == sorted(m.received_at for m in messages)
    assert max(m.received_at for m in messages) <= devdata.BASE_DATE + 30 * devdata.DAY


async def seeded_view(data_dir: Path) -> tuple[int, int, dict[str, Any]]:
    """(first seed's count, second seed's count, what the demo account holds without its ids)."""
    config = Config.from_dict({"server": {"data_dir": str(data_dir)}, "auth": {"scrypt_n": 1024}})
    async with open_runtime(config) as runtime:
        await ensure_demo_user(runtime)
        account_id = (await find_user(runtime, DEV_LOGIN)).account_id
        async with runtime.db.read() as conn:
            before = sum(m.total_emails for m in await storage.mailboxes(conn, account_id, None))
        await seed_dev_data(runtime)
        async with runtime.db.read() as conn:
            first = sum(m.total_emails for m in await storage.mailboxes(conn, account_id, None)) - before
        second = await devdata.seed(runtime, account_id)
        async with runtime.db.read() as conn:
            view: dict[str, Any] = {}
            all_ids: list[str] = []
            for row in await storage.mailboxes(conn, account_id, None):
                ids = await storage.mailbox_email_ids(conn, account_id, row.id)
                all_ids += ids
                states = await storage.email_states(conn, account_id, ids)
                view[row.role or row.name] = (row.total_emails, row.unread_emails, row.total_threads,
                                              row.unread_threads,
                                              [(s.received_at, sorted(s.keywords)) for s in states.values()])
            states = await storage.email_states(conn, account_id, all_ids)
            threads = await storage.thread_email_ids(conn, account_id, {s.thread_id for s in states.values()})
            received = {i: s.received_at for i, s in states.items()}
            view["thread shapes"] = sorted([received[i] for i in ids] for ids in threads.values())
            assert await storage.problems(conn) == []
    for key, value in view.items():
        if key != "thread shapes":
            view[key] = (*value[:4], sorted(value[4]))
    return first, second, view


async def test_seeding_imports_once_and_the_same_mail_everywhere(tmp_path):
    start = time.perf_counter()
    first, second, view = await seeded_view(tmp_path / "one")
    assert time.perf_counter() - start < 10
    assert first == len(devdata.generate()) and second == 0
    assert view["inbox"][0] > 100 and view["inbox"][1] > 30 and view["sent"][0] > 50 and view["archive"][0] > 50
    shapes = Counter(len(t) for t in view["thread shapes"])
    assert shapes[1] > 30 and sum(n for size, n in shapes.items() if size >= 3) > 30
    _, _, other = await seeded_view(tmp_path / "two")
    assert other == view


async def test_a_demo_account_emptied_by_its_user_is_not_seeded_again(tmp_path):
    """Issue 4: `jmapled dev` seeds its demo account once per data directory: after the user destroyed all
    the demo mail, a restart leaves the account empty."""
    config = Config.from_dict({"server": {"data_dir": str(tmp_path / "data")}, "auth": {"scrypt_n": 1024}})
    async with open_runtime(config) as runtime:
        await ensure_demo_user(runtime)
        await seed_dev_data(runtime)
        account_id = (await find_user(runtime, DEV_LOGIN)).account_id
        async with runtime.db.write() as tx:
            ids = await storage.query_email_ids(tx, account_id, None, ascending=True, collapse_threads=False)
            assert len(ids) == len(devdata.generate())
            await storage.destroy_emails(tx, account_id, ids)
    async with open_runtime(config) as runtime:    # a restart
        await ensure_demo_user(runtime)
        await seed_dev_data(runtime)
        assert await devdata.seed(runtime, account_id) == 0
        async with runtime.db.read() as conn:
            assert await storage.query_email_ids(conn, account_id, None, ascending=True,
                                                 collapse_threads=False) == []
            assert len(await storage.mailboxes(conn, account_id, None)) == 6
        # A data directory seeded before the marker existed: its Email state has moved, so it is only marked.
        async with runtime.db.write() as tx:
            await tx.execute("UPDATE mail_accounts SET demo_seeded_at = NULL")
        assert await devdata.seed(runtime, account_id) == 0
        async with runtime.db.read() as conn:
            assert await storage.is_demo_seeded(conn, account_id)
