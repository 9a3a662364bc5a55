"""Interoperability with the third-party jmapc client on Mail (RFC 8621): a client's first sync and the next one.

The app is served over TLS exactly as in test_interop_jmapc.py (its `peer` fixture); mail arrives on the
server side, as delivery would bring it, and the client sees it only through jmapc.
"""

from __future__ import annotations

from datetime import datetime, timezone

import jmapc
from jmapc.methods import (
    EmailGet, EmailGetResponse, EmailQuery, EmailQueryChanges, EmailQueryChangesResponse, EmailQueryResponse,
    MailboxGet, MailboxGetResponse, ThreadGet, ThreadGetResponse,
)
from jmapc.models import Email, EmailAddress, EmailQueryFilterCondition, Mailbox, Thread

from jmaple.keys import RUNTIME
from jmaple.mail import storage
from jmaple.mail.ingest import ImportItem, import_messages
from test_interop_jmapc import Peer, blocking, peer  # noqa: F401  (fixture)


def message(subject: str, message_id: str, in_reply_to: str | None = None) -> bytes:
    reply = f"In-Reply-To: <{in_reply_to}>\r\nReferences: <{in_reply_to}>\r\n" if in_reply_to else ""
    return (f"From: Bob Example <bob@example.net>\r\nTo: Alice <alice@example.org>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 01 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n{reply}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{subject}: see you there.\r\n"
            ).encode()


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=timezone.utc)


async def deliver(peer: Peer, role: str, raw: bytes, when: datetime, keywords: tuple[str, ...] = ()) -> str:  # noqa: F811
    """Store a message in the mailbox with this role, as delivery would; returns the Email id."""
    runtime = peer.server.app[RUNTIME]
    async with runtime.db.write() as tx:
        box = (await storage.mailbox_ids_by_role(tx, peer.account_id))[role]
        (result,) = await import_messages(tx, runtime, peer.account_id,
                                          [ImportItem(raw, (box,), keywords, when.timestamp())])
    return result.id


def first_sync(inbox_id: str) -> list:
    """RFC 8620 §3.7's example, as a jmapc user writes it: the Inbox's threads, newest first, their emails
    through back-references to each earlier result."""
    return [
        EmailQuery(filter=EmailQueryFilterCondition(in_mailbox=inbox_id), collapse_threads=True,
                   calculate_total=True, limit=10),
        EmailGet(ids=jmapc.Ref("/ids"),
                 properties=["threadId", "mailboxIds", "keywords", "receivedAt", "subject", "from", "preview"]),
        ThreadGet(ids=jmapc.Ref("/list/*/threadId")),
        EmailGet(ids=jmapc.Ref("/list/*/emailIds"), properties=["subject", "keywords"]),
    ]


async def test_jmapc_first_sync_sees_mailboxes_threads_and_emails_then_the_next_sync_sees_what_arrived(
        peer):  # noqa: F811
    """RFC 8621 §2.1 Mailbox/get, §4.4 Email/query, §4.2 Email/get, §3.1 Thread/get with result references
    (RFC 8620 §3.7), then §4.5 Email/queryChanges, all as jmapc parses them."""
    lunch = await deliver(peer, "inbox", message("Lunch?", "lunch@x"), at(1, 10))
    reply = await deliver(peer, "inbox", message("Re: Lunch?", "reply@x", "lunch@x"), at(1, 11), ("$seen",))
    report = await deliver(peer, "inbox", message("Report", "report@x"), at(2))
    await deliver(peer, "archive", message("Old news", "news@x"), at(1, 1))
    client = peer.client(cls=jmapc.Client)
    assert await blocking(lambda: client.account_id) == peer.account_id

    boxes = await blocking(client.request, MailboxGet(ids=None), True, True)
    assert isinstance(boxes, MailboxGetResponse) and boxes.not_found == []
    by_role = {m.role: m for m in boxes.data}
    assert {role: m.name for role, m in by_role.items()} == {
        "inbox": "Inbox", "drafts": "Drafts", "sent": "Sent", "archive": "Archive", "junk": "Junk", "trash": "Trash"}
    inbox = by_role["inbox"]
    assert inbox == Mailbox(id=inbox.id, name="Inbox", sort_order=1, total_emails=3, unread_emails=2,
                            total_threads=2, unread_threads=2, is_subscribed=True, role="inbox", parent_id=None)
    assert (by_role["archive"].total_emails, by_role["trash"].total_emails) == (1, 0)

    responses = await blocking(client.request, first_sync(inbox.id), True)
    assert [r.id for r in responses] == ["0.Email/query", "1.Email/get", "2.Thread/get", "3.Email/get"]
    query, emails, threads, thread_emails = (r.response for r in responses)
    assert isinstance(query, EmailQueryResponse)
    assert query.ids == [report, reply] and query.total == 2 and query.can_calculate_changes is True
    assert isinstance(emails, EmailGetResponse) and emails.not_found == []
    bob = [EmailAddress(name="Bob Example", email="bob@example.net")]
    reply_email, report_email = sorted(emails.data, key=lambda e: e.subject)
    assert report_email == Email(id=report, thread_id=report_email.thread_id, mailbox_ids={inbox.id: True},
                                 keywords={}, received_at=at(2), subject="Report", mail_from=bob,
                                 preview="Report: see you there.")
    assert reply_email.keywords == {"$seen": True} and reply_email.received_at == at(1, 11)
    assert isinstance(threads, ThreadGetResponse)
    assert threads.data == [Thread(id=report_email.thread_id, email_ids=[report]),
                            Thread(id=reply_email.thread_id, email_ids=[lunch, reply])]
    assert isinstance(thread_emails, EmailGetResponse)
    assert [(e.id, e.subject) for e in thread_emails.data] == [
        (report, "Report"), (lunch, "Lunch?"), (reply, "Re: Lunch?")]

    # Later: a reply to the report arrives, and now stands for its thread.
    answer = await deliver(peer, "inbox", message("Re: Report", "answer@x", "report@x"), at(3))
    changes = await blocking(client.request, EmailQueryChanges(
        filter=EmailQueryFilterCondition(in_mailbox=inbox.id), collapse_threads=True,
        since_query_state=query.query_state, calculate_total=True), True, True)
    assert isinstance(changes, EmailQueryChangesResponse)
    assert changes.old_query_state == query.query_state and changes.total == 2
    ids = [i for i in query.ids if i not in changes.removed]
    for item in changes.added:
        ids.insert(item.index, item.id)
    assert ids == [answer, reply]
    again = await blocking(client.request, first_sync(inbox.id)[0], True, True)
    assert again.ids == ids and again.query_state == changes.new_query_state
