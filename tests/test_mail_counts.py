"""Mailbox counts (RFC 8621 §2) and the mail storage the Email methods build on: threads, change logs, indexes."""

from __future__ import annotations

import random

import pytest

from jmaple.keys import RUNTIME
from jmaple.mail import storage
from jmaple.store import changes
from test_mail_mailbox import (
    add_emails, assert_counts_consistent, call, counts_of, create, destroy_emails, email, ids_by_name, mail_client,
    mailbox_state, mailboxes, set_mailboxes, update_emails,
)


@pytest.fixture
async def mail(aiohttp_client, tmp_path):
    return await mail_client(aiohttp_client, tmp_path)


async def test_unread_emails_leaves_out_seen_and_draft_emails(mail):
    """RFC 8621 §2 unreadEmails: emails with neither $seen nor $draft."""
    ids = await ids_by_name(mail)
    inbox = ids["Inbox"]
    await add_emails(mail, email([inbox]), email([inbox], keywords=("$seen",)), email([inbox], keywords=("$draft",)),
                     email([inbox], keywords=("$flagged",)), email([inbox], keywords=("$SEEN",)))
    assert counts_of((await mailboxes(mail))["Inbox"]) == [5, 2, 5, 2]
    await assert_counts_consistent(mail)


async def test_threads_count_once_per_mailbox_and_are_unread_if_any_email_is(mail):
    """RFC 8621 §2 totalThreads / unreadThreads: an unread email anywhere in the thread counts."""
    ids = await ids_by_name(mail)
    read = email([ids["Inbox"]], thread="T", keywords=("$seen",))
    unread_elsewhere = email([ids["Archive"]], thread="T")
    await add_emails(mail, read, email([ids["Inbox"]], thread="T", keywords=("$seen",)), unread_elsewhere)
    got = await mailboxes(mail)
    assert counts_of(got["Inbox"]) == [2, 0, 1, 1]
    assert counts_of(got["Archive"]) == [1, 1, 1, 1]
    await update_emails(mail, keywords={unread_elsewhere.id: ["$seen"]})
    got = await mailboxes(mail)
    assert counts_of(got["Inbox"]) == [2, 0, 1, 0] and counts_of(got["Archive"]) == [1, 0, 1, 0]
    await assert_counts_consistent(mail)


async def test_the_trash_rule_of_unread_threads_follows_the_rfc_example(mail):
    """RFC 8621 §2: one thread, an unread email in the trash and a read one in the inbox: 1 and 0."""
    ids = await ids_by_name(mail)
    trashed = email([ids["Trash"]], thread="T")
    await add_emails(mail, trashed, email([ids["Inbox"]], thread="T", keywords=("$seen",)))
    got = await mailboxes(mail)
    assert (got["Trash"]["unreadThreads"], got["Inbox"]["unreadThreads"]) == (1, 0)
    # In the trash and the inbox both, it is no longer only in the trash: both count it.
    await update_emails(mail, mailbox_ids={trashed.id: [ids["Trash"], ids["Inbox"]]})
    got = await mailboxes(mail)
    assert (got["Trash"]["unreadThreads"], got["Inbox"]["unreadThreads"]) == (1, 1)
    # An unread email outside the trash does not make the thread unread in the trash.
    await update_emails(mail, mailbox_ids={trashed.id: [ids["Inbox"]]})
    await add_emails(mail, email([ids["Trash"]], thread="T", keywords=("$seen",)))
    got = await mailboxes(mail)
    assert (got["Trash"]["unreadThreads"], got["Inbox"]["unreadThreads"]) == (0, 1)
    await assert_counts_consistent(mail)


async def test_moving_the_trash_role_recounts_unread_threads(mail):
    """RFC 8621 §2: which mailbox is the trash decides unreadThreads elsewhere."""
    ids = await ids_by_name(mail)
    await add_emails(mail, email([ids["Trash"]], thread="T"), email([ids["Inbox"]], thread="T", keywords=("$seen",)))
    since = await mailbox_state(mail)
    result = await set_mailboxes(mail, update={ids["Trash"]: {"role": None}})
    assert result["updated"] == {ids["Trash"]: None}
    assert (await mailboxes(mail))["Inbox"]["unreadThreads"] == 1
    await assert_counts_consistent(mail)
    changed = await call(mail, "Mailbox/changes", {"sinceState": since})
    assert set(changed["updated"]) == {ids["Trash"], ids["Inbox"]}
    await set_mailboxes(mail, update={ids["Junk"]: {"role": "trash"}})
    await set_mailboxes(mail, update={ids["Junk"]: {"role": None}, ids["Trash"]: {"role": "trash"}})
    assert (await mailboxes(mail))["Inbox"]["unreadThreads"] == 0
    await assert_counts_consistent(mail)


def model_counts(emails: dict[str, tuple[str, set[str], set[str]]], trash: str | None,
                 mailbox_ids: list[str]) -> dict[str, storage.MailboxCounts]:
    """§2's definitions applied literally to (thread, mailboxes, keywords) of every email."""
    def unread(keywords: set[str]) -> bool:
        return not {"$seen", "$draft"} & keywords

    out = {}
    for m in mailbox_ids:
        inside = [e for e in emails.values() if m in e[1]]
        threads = {e[0] for e in inside}
        if m == trash:
            counted = [e for e in emails.values() if trash in e[1]]
        else:
            counted = [e for e in emails.values() if e[1] != {trash}]
        unread_threads = {t for t in threads if any(e[0] == t and unread(e[2]) for e in counted)}
        out[m] = storage.MailboxCounts(len(inside), sum(unread(e[2]) for e in inside), len(threads),
                                       len(unread_threads))
    return out


async def test_counts_stay_right_through_hundreds_of_random_operations(mail):
    """RFC 8621 §2: after every change, the maintained counts equal a recount and a literal model."""
    rng = random.Random(8621)
    await create(mail, a={"name": "A"}, b={"name": "B", "parentId": "#a"})
    boxes = list((await ids_by_name(mail)).values())
    roles = {m["id"]: m["role"] for m in (await mailboxes(mail)).values()}
    model: dict[str, tuple[str, set[str], set[str]]] = {}
    threads = ["T0"]
    words = ["$seen", "$draft", "$flagged", "work"]
    runtime = mail.app[RUNTIME]
    for step in range(300):
        op = rng.random()
        async with runtime.db.write() as tx:
            if op < 0.35 or not model:
                if rng.random() < 0.3:
                    threads.append(f"T{len(threads)}")
                record = email(rng.sample(boxes, rng.randint(1, 3)), thread=rng.choice(threads),
                               keywords=tuple(rng.sample(words, rng.randint(0, 2))),
                               received_at=1_700_000_000 + rng.randint(0, 1000))
                await storage.insert_emails(tx, mail.account_id, [record])
                model[record.id] = (record.thread_id, set(record.mailbox_ids), set(record.keywords))
            elif op < 0.55:
                chosen = rng.sample(sorted(model), min(len(model), rng.randint(1, 4)))
                new = {i: rng.sample(boxes, rng.randint(1, 3)) for i in chosen}
                await storage.update_emails(tx, mail.account_id, mailbox_ids=new)
                for i, b in new.items():
                    model[i] = (model[i][0], set(b), model[i][2])
            elif op < 0.75:
                chosen = rng.sample(sorted(model), min(len(model), rng.randint(1, 4)))
                new = {i: rng.sample(words, rng.randint(0, 3)) for i in chosen}
                await storage.update_emails(tx, mail.account_id, keywords=new)
                for i, k in new.items():
                    model[i] = (model[i][0], model[i][1], set(k))
            elif op < 0.9:
                chosen = rng.sample(sorted(model), min(len(model), rng.randint(1, 3)))
                assert sorted(await storage.destroy_emails(tx, mail.account_id, chosen)) == sorted(chosen)
                for i in chosen:
                    del model[i]
            elif op < 0.95:
                box = rng.choice(boxes)
                destroyed, updated = await storage.remove_mailbox_emails(tx, mail.account_id, box)
                for i in destroyed:
                    assert model.pop(i)[1] == {box}
                for i in updated:
                    model[i][1].discard(box)
            else:
                # The trash role moves to another mailbox, or away altogether.
                old = next((m for m, r in roles.items() if r == "trash"), None)
                new_trash = rng.choice([None, *[m for m in boxes if roles.get(m) is None]])
                rows = await storage.mailboxes(tx, mail.account_id, None)
                by_id = {r.id: r for r in rows}
                for m, role in ((old, None), (new_trash, "trash")):
                    if m is not None:
                        r = by_id[m]
                        await storage.update_mailboxes(tx, mail.account_id,
                                                       [(m, r.name, r.parent_id, role, r.sort_order)])
                        roles[m] = role
        trash = next((m for m, r in roles.items() if r == "trash"), None)
        counts = await assert_counts_consistent(mail)
        assert counts == model_counts(model, trash, boxes), f"step {step}"
    got = {m["id"]: m for m in (await call(mail, "Mailbox/get", {"ids": None}))["list"]}
    assert {m: storage.MailboxCounts(*counts_of(got[m])) for m in boxes} == model_counts(model, trash, boxes)
    async with runtime.db.read() as conn:
        assert await storage.problems(conn) == []
        for thread_id, emails in (await storage.thread_email_ids(conn, mail.account_id, threads)).items():
            assert sorted(emails) == sorted(i for i, e in model.items() if e[0] == thread_id)


async def test_storage_logs_email_thread_and_delivery_changes(mail):
    """RFC 8621 §1.5: EmailDelivery moves when an email is added, and on nothing else."""
    ids = await ids_by_name(mail)
    runtime = mail.app[RUNTIME]

    async def states() -> dict[str, str]:
        async with runtime.db.read() as conn:
            return {t: await changes.state(conn, mail.account_id, t) for t in ("Email", "Thread", "EmailDelivery")}

    first, reply = email([ids["Inbox"]], thread="T1"), email([ids["Inbox"]], thread="T1")
    await add_emails(mail, first)
    s1 = await states()
    await add_emails(mail, reply)
    s2 = await states()
    assert all(s2[t] != s1[t] for t in s1)
    async with runtime.db.read() as conn:
        log = await changes.since(conn, mail.account_id, "Thread", int(s1["Thread"]), None)
    assert [(c.object_id, c.created_modseq > int(s1["Thread"])) for c in log] == [("T1", False)]
    assert await update_emails(mail, keywords={first.id: ["$seen"]}) == [first.id]
    assert await update_emails(mail, keywords={first.id: ["$SEEN"]}, mailbox_ids={"Enope": [ids["Sent"]]}) == []
    s3 = await states()
    assert (s3["EmailDelivery"], s3["Thread"]) == (s2["EmailDelivery"], s2["Thread"]) and s3["Email"] != s2["Email"]
    await destroy_emails(mail, [first.id, reply.id, "Enope"])
    s4 = await states()
    assert s4["EmailDelivery"] == s2["EmailDelivery"]
    async with runtime.db.read() as conn:
        log = await changes.since(conn, mail.account_id, "Thread", int(s3["Thread"]), None)
        assert await storage.thread_email_ids(conn, mail.account_id, ["T1"]) == {}
        assert await storage.threads_by_message_ids(conn, mail.account_id, [first.message_id]) == []
    assert [(c.object_id, c.is_destroyed) for c in log] == [("T1", True)]


async def test_threading_lookups_and_thread_order(mail):
    """RFC 8621 §3: emailIds oldest first; message ids find the thread that names them."""
    ids = await ids_by_name(mail)
    late = email([ids["Inbox"]], thread="T9", received_at=200)
    early = email([ids["Inbox"]], thread="T9", received_at=100)
    await add_emails(mail, late, early)
    async with mail.app[RUNTIME].db.read() as conn:
        assert await storage.thread_email_ids(conn, mail.account_id, ["T9", "Tnone"]) == {"T9": [early.id, late.id]}
        found = await storage.threads_by_message_ids(conn, mail.account_id, [late.message_id, "x@y"])
        assert found == [(late.message_id, "T9", "subject T9")]
        assert await storage.mailbox_email_ids(conn, mail.account_id, ids["Inbox"]) == [late.id, early.id]
        assert await storage.mailbox_email_ids(conn, mail.account_id, ids["Inbox"], offset=1, limit=5) == [early.id]


async def test_a_mailbox_listing_by_received_at_is_one_index_scan(mail):
    """The first view of every client (Email/query inMailbox, newest first) needs no sorting step."""
    ids = await ids_by_name(mail)
    async with mail.app[RUNTIME].db.read() as conn:
        for sql, args in [
            ("SELECT email_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?"
             " ORDER BY received_at DESC, email_id DESC LIMIT 50", (mail.account_id, ids["Inbox"])),
            ("SELECT email_id, thread_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?"
             " ORDER BY received_at, email_id LIMIT 50", (mail.account_id, ids["Inbox"])),
            ("SELECT id FROM emails WHERE account_id = ? ORDER BY received_at DESC, id DESC LIMIT 50",
             (mail.account_id,)),
            ("SELECT id FROM emails WHERE account_id = ? AND thread_id = ? ORDER BY received_at, id",
             (mail.account_id, "T1")),
        ]:
            plan = " | ".join(r[-1] for r in await conn.all("EXPLAIN QUERY PLAN " + sql, args))
            assert "USING" in plan and "INDEX" in plan and "TEMP B-TREE" not in plan, plan
