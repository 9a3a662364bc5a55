"""Storage of the Mail capability (RFC 8621 §2-§4): every SQL statement of jmaple/mail lives here.

Functions take the connection or transaction first and plain values in and out. Those that change
emails keep everything that follows from the change consistent in the same transaction: the four
counts of every Mailbox touched (RFC 8621 §2, with its trash rule for unreadThreads), the change log
of Email, Thread and Mailbox (counts alone as counter-only updates, so Mailbox/changes can report
updatedProperties), and the EmailDelivery state (§1.5) when emails are added. Callers never call
changes.record for Email or Thread themselves.

Blob references are the caller's: an Email holds its blobs under the owner `email_blob_owner(id)`
(BlobStore.add_refs on insert, drop_refs after destroy_emails).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jmaple.store import changes
from jmaple.store.db import Conn, Transaction

CHUNK = 500   # ids per IN (...) list, well below SQLite's limit on bound parameters
COUNT_PROPERTIES = ("totalEmails", "unreadEmails", "totalThreads", "unreadThreads")


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


def email_blob_owner(email_id: str) -> str:
    """The blob_refs owner under which an Email holds its blobs."""
    return f"Email:{email_id}"


def is_unread(keywords: Iterable[str]) -> bool:
    """RFC 8621 §2: an email counts as unread when it has neither $seen nor $draft."""
    found = {k.lower() for k in keywords}
    return "$seen" not in found and "$draft" not in found


# --- accounts -------------------------------------------------------------------------------------

async def account_owner(conn: Conn, account_id: str) -> str | None:
    """The id of the user who owns the account."""
    return await conn.value("SELECT owner_id FROM accounts WHERE id = ?", (account_id,))


async def unprovisioned_accounts(conn: Conn) -> list[str]:
    """Accounts the Mail capability has not given their default mailboxes yet, oldest first."""
    rows = await conn.all("SELECT a.id FROM accounts a WHERE NOT EXISTS"
                          " (SELECT 1 FROM mail_accounts p WHERE p.account_id = a.id) ORDER BY a.created_at, a.id")
    return [r[0] for r in rows]


async def is_provisioned(conn: Conn, account_id: str) -> bool:
    return bool(await conn.value("SELECT 1 FROM mail_accounts WHERE account_id = ?", (account_id,)))


async def mark_provisioned(tx: Transaction, account_id: str) -> None:
    """Record that the account has had its default mailboxes (it never gets them again)."""
    await tx.execute("INSERT INTO mail_accounts (account_id, provisioned_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                     (account_id, int(tx.now)))


async def is_demo_seeded(conn: Conn, account_id: str) -> bool:
    return bool(await conn.value(
        "SELECT 1 FROM mail_accounts WHERE account_id = ? AND demo_seeded_at IS NOT NULL", (account_id,)))


async def mark_demo_seeded(tx: Transaction, account_id: str) -> None:
    """Record that `jmapled dev` filled the (provisioned) account with its demo mail."""
    await tx.execute("UPDATE mail_accounts SET demo_seeded_at = ? WHERE account_id = ?", (int(tx.now), account_id))


# --- mailboxes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MailboxRow:
    """One mailbox as stored, with one user's subscription."""

    id: str
    name: str
    parent_id: str | None
    role: str | None
    sort_order: int
    total_emails: int
    unread_emails: int
    total_threads: int
    unread_threads: int
    is_subscribed: bool


@dataclass(frozen=True)
class MailboxCounts:
    total_emails: int = 0
    unread_emails: int = 0
    total_threads: int = 0
    unread_threads: int = 0


_MAILBOX = ("SELECT m.id, m.name, m.parent_id, m.role, m.sort_order, m.total_emails, m.unread_emails,"
            " m.total_threads, m.unread_threads, s.user_id IS NOT NULL FROM mailboxes m"
            " LEFT JOIN mailbox_subscriptions s ON s.user_id = ? AND s.account_id = m.account_id"
            " AND s.mailbox_id = m.id WHERE m.account_id = ?")


async def mailboxes(conn: Conn, account_id: str, user_id: str | None,
                    ids: Sequence[str] | None = None) -> list[MailboxRow]:
    """The account's mailboxes (all, or those of `ids` that exist), isSubscribed as `user_id` sees it."""
    if ids is None:
        rows = await conn.all(_MAILBOX + " ORDER BY m.sort_order, m.name, m.id", (user_id, account_id))
    else:
        rows = []
        for chunk in _chunks(list(ids)):
            rows += await conn.all(_MAILBOX + f" AND m.id IN ({_marks(chunk)})", (user_id, account_id, *chunk))
    return [MailboxRow(*r[:9], bool(r[9])) for r in rows]


async def mailbox_tree(conn: Conn, account_id: str) -> dict[str, str | None]:
    """Every mailbox id of the account with its parent id."""
    return dict(await conn.all("SELECT id, parent_id FROM mailboxes WHERE account_id = ?", (account_id,)))


async def existing_mailbox_ids(conn: Conn, account_id: str, ids: Collection[str]) -> set[str]:
    """Those of `ids` that are mailboxes of the account."""
    found: set[str] = set()
    items = list(ids)
    for chunk in _chunks(items):
        rows = await conn.all(f"SELECT id FROM mailboxes WHERE account_id = ? AND id IN ({_marks(chunk)})",
                              (account_id, *chunk))
        found.update(r[0] for r in rows)
    return found


async def mailbox_ids_by_role(conn: Conn, account_id: str) -> dict[str, str]:
    """role -> mailbox id, for every mailbox that has a role."""
    return dict(await conn.all("SELECT role, id FROM mailboxes WHERE account_id = ? AND role IS NOT NULL",
                               (account_id,)))


async def sibling_named(conn: Conn, account_id: str, parent_id: str | None, name: str) -> str | None:
    """The id of the mailbox under `parent_id` (None: top level) called exactly `name`, if any."""
    return await conn.value(
        "SELECT id FROM mailboxes WHERE account_id = ? AND coalesce(parent_id, '') = ? AND name = ?",
        (account_id, parent_id or "", name))


async def has_children(conn: Conn, account_id: str, mailbox_id: str) -> bool:
    return bool(await conn.value("SELECT 1 FROM mailboxes WHERE account_id = ? AND parent_id = ? LIMIT 1",
                                 (account_id, mailbox_id)))


async def has_emails(conn: Conn, account_id: str, mailbox_id: str) -> bool:
    return bool(await conn.value(
        "SELECT 1 FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ? LIMIT 1", (account_id, mailbox_id)))


async def insert_mailboxes(tx: Transaction, account_id: str,
                           rows: Iterable[tuple[str, str, str | None, str | None, int]]) -> None:
    """Insert (id, name, parent_id, role, sort_order) rows with zero counts; the caller logs them."""
    await tx.executemany(
        "INSERT INTO mailboxes (account_id, id, name, parent_id, role, sort_order) VALUES (?, ?, ?, ?, ?, ?)",
        [(account_id, *row) for row in rows])


async def update_mailboxes(tx: Transaction, account_id: str,
                           rows: Iterable[tuple[str, str, str | None, str | None, int]]) -> None:
    """Write (id, name, parent_id, role, sort_order) of existing mailboxes; the caller logs them.

    The rows are written together: they may exchange names and roles among themselves (the unique
    indexes see no intermediate state), but must leave names and roles unique in the account.

    A mailbox that gains or loses the trash role changes unreadThreads elsewhere (RFC 8621 §2):
    the counts of the threads it holds are recalculated and logged here.
    """
    rows = list(rows)
    if not rows:
        return
    old_roles: dict[str, str | None] = {}
    for chunk in _chunks([r[0] for r in rows]):
        old_roles.update(await tx.all(
            f"SELECT id, role FROM mailboxes WHERE account_id = ? AND id IN ({_marks(chunk)})", (account_id, *chunk)))
    trash_moves = [r[0] for r in rows if r[0] in old_roles and (old_roles[r[0]] == "trash") != (r[3] == "trash")]
    threads: list[str] = []
    for mailbox_id in trash_moves:
        threads += [r[0] for r in await tx.all(
            "SELECT DISTINCT thread_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?",
            (account_id, mailbox_id))]
    async with _counted(tx, account_id, threads):
        if len(rows) > 1:
            # First park them under names no mailbox can have (no control characters, RFC 8621 §2) and
            # without roles, so that the unique indexes never see two rows with one name or role.
            await tx.executemany("UPDATE mailboxes SET name = ?, role = NULL WHERE account_id = ? AND id = ?",
                                 [("\x01" + r[0], account_id, r[0]) for r in rows])
        await tx.executemany(
            "UPDATE mailboxes SET name = ?, parent_id = ?, role = ?, sort_order = ? WHERE account_id = ? AND id = ?",
            [(name, parent_id, role, sort_order, account_id, mailbox_id)
             for mailbox_id, name, parent_id, role, sort_order in rows])


async def delete_mailboxes(tx: Transaction, account_id: str, ids: Sequence[str]) -> None:
    """Delete mailboxes (their subscriptions go with them); they must hold no emails and no children."""
    for chunk in _chunks(list(ids)):
        await tx.execute(f"DELETE FROM mailboxes WHERE account_id = ? AND id IN ({_marks(chunk)})",
                         (account_id, *chunk))


async def set_subscribed(tx: Transaction, user_id: str, account_id: str, mailbox_ids: Iterable[str],
                         subscribed: bool) -> None:
    """Subscribe or unsubscribe one user to mailboxes of an account (isSubscribed, RFC 8621 §2)."""
    if subscribed:
        await tx.executemany(
            "INSERT INTO mailbox_subscriptions (user_id, account_id, mailbox_id) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING", [(user_id, account_id, m) for m in mailbox_ids])
    else:
        await tx.executemany(
            "DELETE FROM mailbox_subscriptions WHERE user_id = ? AND account_id = ? AND mailbox_id = ?",
            [(user_id, account_id, m) for m in mailbox_ids])


# --- emails ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmailRecord:
    """What insert_emails stores of one Email, filled in from the parsed message.

    `thread_keys` are the ids of its Message-ID, In-Reply-To and References header fields (without
    angle brackets), remembered for threading later messages. Dates are Unix seconds (UTC).
    `base_subject` (RFC 5256 §2.1) is kept on a new thread and is what Email/query sorts "subject" by.
    `parsed` is opaque here: whatever Email/get needs so that it never parses the message again.
    """

    id: str
    blob_id: str
    thread_id: str
    size: int
    received_at: int
    mailbox_ids: Collection[str]
    keywords: Collection[str] = ()
    thread_keys: Collection[str] = ()
    message_id: str | None = None
    sent_at: int | None = None
    base_subject: str = ""
    sort_from: str = ""
    sort_to: str = ""
    has_attachment: bool = False
    preview: str = ""
    parsed: bytes | None = None


@dataclass(frozen=True)
class EmailState:
    """An email's mutable metadata, as email_states returns it."""

    thread_id: str
    received_at: int
    mailbox_ids: frozenset[str]
    keywords: frozenset[str]


async def insert_emails(tx: Transaction, account_id: str, emails: Sequence[EmailRecord]) -> None:
    """Store new emails, creating their threads as needed.

    Every mailbox id must exist in the account and every email name at least one (the caller checks;
    a bad id fails the foreign key). Keywords are stored lower-case. Logs Email created, Thread
    created or updated, the counts of the mailboxes touched, and moves EmailDelivery (RFC 8621 §1.5).
    """
    if not emails:
        return
    thread_ids = list(dict.fromkeys(e.thread_id for e in emails))
    existing = await _existing(tx, "threads", account_id, thread_ids)
    new_threads = [t for t in thread_ids if t not in existing]
    async with _counted(tx, account_id, thread_ids):
        subjects = {}
        for email in emails:
            subjects.setdefault(email.thread_id, email.base_subject)
        await tx.executemany("INSERT INTO threads (account_id, id, base_subject) VALUES (?, ?, ?)",
                             [(account_id, t, subjects[t]) for t in new_threads])
        await tx.executemany(
            "INSERT INTO emails (account_id, id, blob_id, thread_id, size, received_at, sent_at, message_id,"
            " sort_subject, sort_from, sort_to, has_attachment, preview, is_unread, parsed)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(account_id, e.id, e.blob_id, e.thread_id, e.size, e.received_at, e.sent_at, e.message_id,
              e.base_subject, e.sort_from, e.sort_to, int(e.has_attachment), e.preview,
              int(is_unread(e.keywords)), e.parsed) for e in emails])
        await tx.executemany(
            "INSERT INTO email_mailboxes (account_id, email_id, mailbox_id, received_at, thread_id)"
            " VALUES (?, ?, ?, ?, ?)",
            [(account_id, e.id, m, e.received_at, e.thread_id) for e in emails for m in set(e.mailbox_ids)])
        await tx.executemany(
            "INSERT INTO email_keywords (account_id, email_id, keyword) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(account_id, e.id, k.lower()) for e in emails for k in e.keywords])
        await tx.executemany(
            "INSERT INTO thread_message_ids (account_id, message_id, thread_id) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [(account_id, k, e.thread_id) for e in emails for k in set(e.thread_keys)])
    await changes.record(tx, account_id, "Email", created=[e.id for e in emails])
    await changes.record(tx, account_id, "Thread", created=new_threads, updated=list(existing))
    await changes.bump(tx, account_id, "EmailDelivery")


async def email_states(conn: Conn, account_id: str, email_ids: Collection[str]) -> dict[str, EmailState]:
    """thread, receivedAt, mailboxes and keywords of those of `email_ids` that exist."""
    ids = list(dict.fromkeys(email_ids))
    base: dict[str, tuple[str, int]] = {}
    boxes: dict[str, set[str]] = {}
    words: dict[str, set[str]] = {}
    for chunk in _chunks(ids):
        marks = _marks(chunk)
        for email_id, thread_id, received_at in await conn.all(
                f"SELECT id, thread_id, received_at FROM emails WHERE account_id = ? AND id IN ({marks})",
                (account_id, *chunk)):
            base[email_id] = (thread_id, received_at)
        for email_id, mailbox_id in await conn.all(
                f"SELECT email_id, mailbox_id FROM email_mailboxes WHERE account_id = ? AND email_id IN ({marks})",
                (account_id, *chunk)):
            boxes.setdefault(email_id, set()).add(mailbox_id)
        for email_id, keyword in await conn.all(
                f"SELECT email_id, keyword FROM email_keywords WHERE account_id = ? AND email_id IN ({marks})",
                (account_id, *chunk)):
            words.setdefault(email_id, set()).add(keyword)
    return {i: EmailState(t, r, frozenset(boxes.get(i, ())), frozenset(words.get(i, ())))
            for i, (t, r) in base.items()}


async def update_emails(tx: Transaction, account_id: str, *,
                        mailbox_ids: Mapping[str, Collection[str]] | None = None,
                        keywords: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """Give emails new sets of mailboxes and/or keywords (the whole new set of each); returns the ids changed.

    Unknown ids are ignored; an email's mailbox set must not become empty and its mailbox ids must
    exist (the caller checks). Logs Email updated and the counts of the mailboxes touched.
    """
    mailbox_ids = mailbox_ids or {}
    keywords = keywords or {}
    current = await email_states(tx, account_id, [*mailbox_ids, *keywords])
    add_boxes, drop_boxes, add_words, drop_words, unread = [], [], [], [], []
    changed: list[str] = []
    for email_id, state in current.items():
        boxes = frozenset(mailbox_ids[email_id]) if email_id in mailbox_ids else state.mailbox_ids
        words = frozenset(k.lower() for k in keywords[email_id]) if email_id in keywords else state.keywords
        if boxes == state.mailbox_ids and words == state.keywords:
            continue
        changed.append(email_id)
        add_boxes += [(account_id, email_id, m, state.received_at, state.thread_id)
                      for m in boxes - state.mailbox_ids]
        drop_boxes += [(account_id, email_id, m) for m in state.mailbox_ids - boxes]
        add_words += [(account_id, email_id, k) for k in words - state.keywords]
        drop_words += [(account_id, email_id, k) for k in state.keywords - words]
        if is_unread(words) != is_unread(state.keywords):
            unread.append((int(is_unread(words)), account_id, email_id))
    if not changed:
        return []
    threads = list(dict.fromkeys(current[i].thread_id for i in changed))
    async with _counted(tx, account_id, threads):
        await tx.executemany(
            "DELETE FROM email_mailboxes WHERE account_id = ? AND email_id = ? AND mailbox_id = ?", drop_boxes)
        await tx.executemany(
            "INSERT INTO email_mailboxes (account_id, email_id, mailbox_id, received_at, thread_id)"
            " VALUES (?, ?, ?, ?, ?)", add_boxes)
        await tx.executemany(
            "DELETE FROM email_keywords WHERE account_id = ? AND email_id = ? AND keyword = ?", drop_words)
        await tx.executemany("INSERT INTO email_keywords (account_id, email_id, keyword) VALUES (?, ?, ?)",
                             add_words)
        await tx.executemany("UPDATE emails SET is_unread = ? WHERE account_id = ? AND id = ?", unread)
    await changes.record(tx, account_id, "Email", updated=changed)
    return changed


async def destroy_emails(tx: Transaction, account_id: str, email_ids: Collection[str]) -> list[str]:
    """Delete emails; returns the ids that existed. A thread left without emails goes too.

    Logs Email destroyed, Thread updated or destroyed, and the counts of the mailboxes touched.
    The caller drops the emails' blob references (email_blob_owner).
    """
    ids = list(dict.fromkeys(email_ids))
    found: dict[str, str] = {}
    for chunk in _chunks(ids):
        found.update(await tx.all(f"SELECT id, thread_id FROM emails WHERE account_id = ? AND id IN ({_marks(chunk)})",
                                  (account_id, *chunk)))
    if not found:
        return []
    threads = list(dict.fromkeys(found.values()))
    async with _counted(tx, account_id, threads):
        doomed = list(found)
        for chunk in _chunks(doomed):
            await tx.execute(f"DELETE FROM emails WHERE account_id = ? AND id IN ({_marks(chunk)})",
                             (account_id, *chunk))
        empty: list[str] = []
        for chunk in _chunks(threads):
            empty += [r[0] for r in await tx.all(
                f"DELETE FROM threads WHERE account_id = ? AND id IN ({_marks(chunk)}) AND NOT EXISTS"
                " (SELECT 1 FROM emails e WHERE e.account_id = threads.account_id AND e.thread_id = threads.id)"
                " RETURNING id", (account_id, *chunk))]
    destroyed = [i for i in ids if i in found]
    await changes.record(tx, account_id, "Email", destroyed=destroyed)
    gone = set(empty)
    await changes.record(tx, account_id, "Thread", updated=[t for t in threads if t not in gone],
                         destroyed=[t for t in threads if t in gone])
    return destroyed


async def remove_mailbox_emails(tx: Transaction, account_id: str, mailbox_id: str) -> tuple[list[str], list[str]]:
    """Empty a mailbox before it is destroyed (RFC 8621 §2.5 onDestroyRemoveEmails).

    Emails in no other mailbox are destroyed; the others only leave this one. Returns (destroyed ids,
    updated ids); the caller drops the blob references of the destroyed ones.
    """
    rows = await tx.all(
        "SELECT em.email_id, (SELECT count(*) FROM email_mailboxes o WHERE o.account_id = em.account_id"
        " AND o.email_id = em.email_id) FROM email_mailboxes em WHERE em.account_id = ? AND em.mailbox_id = ?",
        (account_id, mailbox_id))
    only_here = [r[0] for r in rows if r[1] == 1]
    elsewhere = [r[0] for r in rows if r[1] > 1]
    destroyed = await destroy_emails(tx, account_id, only_here)
    states = await email_states(tx, account_id, elsewhere)
    updated = await update_emails(tx, account_id, mailbox_ids={
        i: s.mailbox_ids - {mailbox_id} for i, s in states.items()})
    return destroyed, updated


async def thread_email_ids(conn: Conn, account_id: str, thread_ids: Collection[str]) -> dict[str, list[str]]:
    """Thread id -> its email ids by receivedAt, oldest first, ties by id (RFC 8621 §3); only threads that exist."""
    out: dict[str, list[str]] = {}
    for chunk in _chunks(list(dict.fromkeys(thread_ids))):
        rows = await conn.all(
            f"SELECT thread_id, id FROM emails WHERE account_id = ? AND thread_id IN ({_marks(chunk)})"
            " ORDER BY thread_id, received_at, id", (account_id, *chunk))
        for thread_id, email_id in rows:
            out.setdefault(thread_id, []).append(email_id)
    return out


async def email_thread_ids(conn: Conn, account_id: str, email_ids: Collection[str]) -> set[str]:
    """The threads of those of `email_ids` that exist."""
    out: set[str] = set()
    for chunk in _chunks(list(email_ids)):
        out.update(r[0] for r in await conn.all(
            f"SELECT DISTINCT thread_id FROM emails WHERE account_id = ? AND id IN ({_marks(chunk)})",
            (account_id, *chunk)))
    return out


async def threads_by_message_ids(conn: Conn, account_id: str,
                                 message_ids: Collection[str]) -> list[tuple[str, str, str]]:
    """(message id, thread id, the thread's base subject) of every thread that names one of `message_ids`."""
    out: list[tuple[str, str, str]] = []
    for chunk in _chunks(list(dict.fromkeys(message_ids))):
        out += await conn.all(
            "SELECT k.message_id, t.id, t.base_subject FROM thread_message_ids k"
            " JOIN threads t ON t.account_id = k.account_id AND t.id = k.thread_id"
            f" WHERE k.account_id = ? AND k.message_id IN ({_marks(chunk)}) ORDER BY k.message_id, t.id",
            (account_id, *chunk))
    return [tuple(r) for r in out]   # type: ignore[misc]


async def mailbox_email_ids(conn: Conn, account_id: str, mailbox_id: str, *, offset: int = 0,
                            limit: int = -1) -> list[str]:
    """A mailbox's email ids by receivedAt, newest first (the first view of every client: one index scan)."""
    rows = await conn.all(
        "SELECT email_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?"
        " ORDER BY received_at DESC, email_id DESC LIMIT ? OFFSET ?", (account_id, mailbox_id, limit, offset))
    return [r[0] for r in rows]


async def _existing(conn: Conn, table: str, account_id: str, ids: Sequence[str]) -> set[str]:
    assert table in ("threads", "emails", "mailboxes")
    found: set[str] = set()
    for chunk in _chunks(list(ids)):
        rows = await conn.all(f"SELECT id FROM {table} WHERE account_id = ? AND id IN ({_marks(chunk)})",
                              (account_id, *chunk))
        found.update(r[0] for r in rows)
    return found


# --- counts (RFC 8621 §2) ---------------------------------------------------------------------------
#
# A change to emails can only move the counts of the mailboxes that hold emails of the threads it
# touches, and only by what those threads contribute: so each change takes the threads' contribution
# before and after, and adds the difference. recount() calculates the same from scratch, differently.

@dataclass
class _Tally:
    counts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, mailbox_id: str, index: int, amount: int = 1) -> None:
        self.counts.setdefault(mailbox_id, [0, 0, 0, 0])[index] += amount


async def _thread_tally(conn: Conn, account_id: str, thread_ids: Sequence[str]) -> _Tally:
    """What the emails of these threads contribute to each mailbox's four counts."""
    tally = _Tally()
    if not thread_ids:
        return tally
    trash = await conn.value("SELECT id FROM mailboxes WHERE account_id = ? AND role = 'trash'", (account_id,))
    emails: dict[str, tuple[str, bool, set[str]]] = {}
    for chunk in _chunks(thread_ids):
        rows = await conn.all(
            "SELECT e.id, e.thread_id, e.is_unread, em.mailbox_id FROM emails e"
            " JOIN email_mailboxes em ON em.account_id = e.account_id AND em.email_id = e.id"
            f" WHERE e.account_id = ? AND e.thread_id IN ({_marks(chunk)})", (account_id, *chunk))
        for email_id, thread_id, unread, mailbox_id in rows:
            emails.setdefault(email_id, (thread_id, bool(unread), set()))[2].add(mailbox_id)
    threads: dict[str, list[tuple[bool, set[str]]]] = {}
    for thread_id, unread, boxes in emails.values():
        threads.setdefault(thread_id, []).append((unread, boxes))
    for members in threads.values():
        boxes_of_thread: set[str] = set()
        # §2: emails only in the trash do not make a thread unread elsewhere, and emails outside
        # the trash do not make it unread in the trash.
        unread_outside = unread_in_trash = False
        for unread, boxes in members:
            boxes_of_thread |= boxes
            for mailbox_id in boxes:
                tally.add(mailbox_id, 0)
                if unread:
                    tally.add(mailbox_id, 1)
            if unread:
                unread_outside = unread_outside or boxes != {trash}
                unread_in_trash = unread_in_trash or trash in boxes
        for mailbox_id in boxes_of_thread:
            tally.add(mailbox_id, 2)
            if unread_in_trash if mailbox_id == trash else unread_outside:
                tally.add(mailbox_id, 3)
    return tally


@contextlib.asynccontextmanager
async def _counted(tx: Transaction, account_id: str, thread_ids: Sequence[str]) -> AsyncIterator[None]:
    """Around a change to the emails of these threads: move the counts it moves, and log them."""
    before = await _thread_tally(tx, account_id, thread_ids)
    yield
    after = await _thread_tally(tx, account_id, thread_ids)
    deltas = []
    for mailbox_id in before.counts.keys() | after.counts.keys():
        old = before.counts.get(mailbox_id, [0, 0, 0, 0])
        new = after.counts.get(mailbox_id, [0, 0, 0, 0])
        delta = [n - o for n, o in zip(new, old)]
        if any(delta):
            deltas.append((*delta, account_id, mailbox_id))
    if not deltas:
        return
    deltas.sort(key=lambda d: d[-1])
    await tx.executemany(
        "UPDATE mailboxes SET total_emails = total_emails + ?, unread_emails = unread_emails + ?,"
        " total_threads = total_threads + ?, unread_threads = unread_threads + ? WHERE account_id = ? AND id = ?",
        deltas)
    await changes.record(tx, account_id, "Mailbox", counters_only=[d[-1] for d in deltas])


async def stored_counts(conn: Conn, account_id: str) -> dict[str, MailboxCounts]:
    """Every mailbox's four counts as maintained."""
    rows = await conn.all("SELECT id, total_emails, unread_emails, total_threads, unread_threads FROM mailboxes"
                          " WHERE account_id = ?", (account_id,))
    return {r[0]: MailboxCounts(*r[1:]) for r in rows}


async def recount(conn: Conn, account_id: str) -> dict[str, MailboxCounts]:
    """Every mailbox's four counts calculated from scratch (to check or repair the maintained ones)."""
    trash = await conn.value("SELECT id FROM mailboxes WHERE account_id = ? AND role = 'trash'", (account_id,))
    totals = {r[0]: r[1:] for r in await conn.all(
        "SELECT em.mailbox_id, count(*), coalesce(sum(e.is_unread), 0), count(DISTINCT em.thread_id)"
        " FROM email_mailboxes em JOIN emails e ON e.account_id = em.account_id AND e.id = em.email_id"
        " WHERE em.account_id = ? GROUP BY em.mailbox_id", (account_id,))}
    # Threads with an unread email that is somewhere besides the trash (§2's rule for other mailboxes).
    unread = dict(await conn.all(
        "SELECT em.mailbox_id, count(DISTINCT em.thread_id) FROM email_mailboxes em"
        " WHERE em.account_id = ?1 AND em.mailbox_id IS NOT ?2 AND em.thread_id IN ("
        "  SELECT e.thread_id FROM emails e WHERE e.account_id = ?1 AND e.is_unread AND EXISTS ("
        "   SELECT 1 FROM email_mailboxes x WHERE x.account_id = e.account_id AND x.email_id = e.id"
        "   AND x.mailbox_id IS NOT ?2))"
        " GROUP BY em.mailbox_id", (account_id, trash)))
    if trash is not None:
        unread[trash] = await conn.value(
            "SELECT count(DISTINCT em.thread_id) FROM email_mailboxes em JOIN emails e"
            " ON e.account_id = em.account_id AND e.id = em.email_id"
            " WHERE em.account_id = ? AND em.mailbox_id = ? AND e.is_unread", (account_id, trash), 0)
    out = {}
    for (mailbox_id,) in await conn.all("SELECT id FROM mailboxes WHERE account_id = ?", (account_id,)):
        total_emails, unread_emails, total_threads = totals.get(mailbox_id, (0, 0, 0))
        out[mailbox_id] = MailboxCounts(total_emails, unread_emails, total_threads, unread.get(mailbox_id, 0))
    return out


async def repair_counts(tx: Transaction, account_id: str) -> list[str]:
    """Overwrite maintained counts that differ from recount(); returns (and logs) the mailboxes fixed."""
    stored = await stored_counts(tx, account_id)
    fresh = await recount(tx, account_id)
    wrong = sorted(m for m, c in fresh.items() if stored.get(m) != c)
    await tx.executemany(
        "UPDATE mailboxes SET total_emails = ?, unread_emails = ?, total_threads = ?, unread_threads = ?"
        " WHERE account_id = ? AND id = ?",
        [(c.total_emails, c.unread_emails, c.total_threads, c.unread_threads, account_id, m)
         for m, c in ((m, fresh[m]) for m in wrong)])
    await changes.record(tx, account_id, "Mailbox", counters_only=wrong)
    return wrong


async def problems(conn: Conn) -> list[str]:
    """Inconsistencies between maintained and derived mail data, described (for `jmapled check`)."""
    found = []
    for (account_id,) in await conn.all("SELECT DISTINCT account_id FROM mailboxes ORDER BY account_id"):
        stored = await stored_counts(conn, account_id)
        for mailbox_id, counts in sorted((await recount(conn, account_id)).items()):
            if stored.get(mailbox_id) != counts:
                found.append(f"account {account_id}: mailbox {mailbox_id} counts {stored.get(mailbox_id)}, "
                             f"should be {counts}")
    for account_id, email_id in await conn.all(
            "SELECT account_id, id FROM emails e WHERE is_unread != (NOT EXISTS (SELECT 1 FROM email_keywords k"
            " WHERE k.account_id = e.account_id AND k.email_id = e.id AND k.keyword IN ('$seen', '$draft')))"
            " ORDER BY account_id, id"):
        found.append(f"account {account_id}: email {email_id} is_unread disagrees with its keywords")
    for account_id, email_id in await conn.all(
            "SELECT DISTINCT em.account_id, em.email_id FROM email_mailboxes em JOIN emails e"
            " ON e.account_id = em.account_id AND e.id = em.email_id"
            " WHERE em.received_at != e.received_at OR em.thread_id != e.thread_id ORDER BY 1, 2"):
        found.append(f"account {account_id}: email {email_id} has stale receivedAt or threadId in a mailbox")
    for account_id, email_id in await conn.all(
            "SELECT account_id, id FROM emails e WHERE NOT EXISTS (SELECT 1 FROM email_mailboxes em"
            " WHERE em.account_id = e.account_id AND em.email_id = e.id) ORDER BY 1, 2"):
        found.append(f"account {account_id}: email {email_id} is in no mailbox")
    return found


# --- Email/get, Thread/get and Email/query (jmaple/mail/email.py, thread.py, query.py) ----------------------

@dataclass(frozen=True)
class EmailRow:
    """One email as Email/get reads it; `parsed` is None unless asked for."""

    id: str
    blob_id: str
    thread_id: str
    size: int
    received_at: int
    has_attachment: bool
    preview: str
    mailbox_ids: tuple[str, ...]
    keywords: tuple[str, ...]
    parsed: bytes | None


# Mailbox ids and keywords never hold a space (Id syntax, RFC 8621 §4.1.1), so group_concat with " " is safe.
_EMAIL_ROWS = (
    "SELECT e.id, e.blob_id, e.thread_id, e.size, e.received_at, e.has_attachment, e.preview,"
    " (SELECT group_concat(m.mailbox_id, ' ') FROM email_mailboxes m WHERE m.account_id = e.account_id"
    "  AND m.email_id = e.id),"
    " (SELECT group_concat(k.keyword, ' ') FROM email_keywords k WHERE k.account_id = e.account_id"
    "  AND k.email_id = e.id), NULL FROM emails e WHERE e.account_id = ? AND e.id IN ({marks})")
_EMAIL_ROWS_PARSED = _EMAIL_ROWS.replace("NULL FROM emails", "e.parsed FROM emails")


async def email_rows(conn: Conn, account_id: str, ids: Sequence[str], *, parsed: bool) -> dict[str, EmailRow]:
    """Those of `ids` that are emails of the account, read in one statement per chunk."""
    out: dict[str, EmailRow] = {}
    sql = _EMAIL_ROWS_PARSED if parsed else _EMAIL_ROWS
    for chunk in _chunks(list(dict.fromkeys(ids))):
        for r in await conn.all(sql.format(marks=_marks(chunk)), (account_id, *chunk)):
            out[r[0]] = EmailRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6],
                                 tuple(r[7].split(" ")) if r[7] else (), tuple(r[8].split(" ")) if r[8] else (),
                                 r[9])
    return out


async def query_email_ids(conn: Conn, account_id: str, mailbox_id: str | None, *, ascending: bool,
                          collapse_threads: bool) -> list[str]:
    """Email ids by receivedAt (ties by id), in one mailbox or the whole account, optionally one per thread
    (the first of each thread in this order); each variant is one index scan."""
    if mailbox_id is None:
        if ascending:
            rows = await conn.all("SELECT id, thread_id FROM emails WHERE account_id = ?"
                                  " ORDER BY received_at, id", (account_id,))
        else:
            rows = await conn.all("SELECT id, thread_id FROM emails WHERE account_id = ?"
                                  " ORDER BY received_at DESC, id DESC", (account_id,))
    elif ascending:
        rows = await conn.all("SELECT email_id, thread_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?"
                              " ORDER BY received_at, email_id", (account_id, mailbox_id))
    else:
        rows = await conn.all("SELECT email_id, thread_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?"
                              " ORDER BY received_at DESC, email_id DESC", (account_id, mailbox_id))
    if not collapse_threads:
        return [r[0] for r in rows]
    seen: set[str] = set()
    out = []
    for email_id, thread_id in rows:
        if thread_id not in seen:
            seen.add(thread_id)
            out.append(email_id)
    return out


async def blob_mailboxes(conn: Conn, account_id: str, blob_ids: Collection[str]) -> dict[str, set[str]]:
    """Blob id -> the mailboxes holding an email stored as that blob, for those of `blob_ids` that are emails."""
    out: dict[str, set[str]] = {}
    for chunk in _chunks(list(dict.fromkeys(blob_ids))):
        for blob_id, mailbox_id in await conn.all(
                "SELECT e.blob_id, em.mailbox_id FROM emails e JOIN email_mailboxes em"
                " ON em.account_id = e.account_id AND em.email_id = e.id"
                f" WHERE e.account_id = ? AND e.blob_id IN ({_marks(chunk)})", (account_id, *chunk)):
            out.setdefault(blob_id, set()).add(mailbox_id)
    return out


async def query_email_page(conn: Conn, account_id: str, mailbox_id: str | None, *, ascending: bool, offset: int,
                           limit: int) -> list[str]:
    """One page of query_email_ids without collapseThreads, read with LIMIT/OFFSET from the index."""
    if mailbox_id is None:
        sql = ("SELECT id FROM emails WHERE account_id = ? ORDER BY received_at, id LIMIT ? OFFSET ?" if ascending
               else "SELECT id FROM emails WHERE account_id = ? ORDER BY received_at DESC, id DESC LIMIT ? OFFSET ?")
        rows = await conn.all(sql, (account_id, limit, offset))
    else:
        sql = ("SELECT email_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?"
               " ORDER BY received_at, email_id LIMIT ? OFFSET ?" if ascending else
               "SELECT email_id FROM email_mailboxes WHERE account_id = ? AND mailbox_id = ?"
               " ORDER BY received_at DESC, email_id DESC LIMIT ? OFFSET ?")
        rows = await conn.all(sql, (account_id, mailbox_id, limit, offset))
    return [r[0] for r in rows]


async def query_total(conn: Conn, account_id: str, mailbox_id: str | None, *, threads: bool) -> int:
    """How many emails (or threads) a mailbox or the whole account holds; the maintained counts for a mailbox."""
    if mailbox_id is None:
        sql = ("SELECT count(*) FROM threads WHERE account_id = ?" if threads
               else "SELECT count(*) FROM emails WHERE account_id = ?")
        return await conn.value(sql, (account_id,), 0)
    sql = ("SELECT total_threads FROM mailboxes WHERE account_id = ? AND id = ?" if threads
           else "SELECT total_emails FROM mailboxes WHERE account_id = ? AND id = ?")
    return await conn.value(sql, (account_id, mailbox_id), 0)
