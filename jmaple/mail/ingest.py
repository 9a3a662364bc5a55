"""Adding messages to an account (RFC 8621 §4.8, §3): parse once, store the blobs, thread, insert.

Email/import, Email/set create, Email/copy, `jmapled import` and delivery all end here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from jmaple.core.context import Runtime
from jmaple.core.errors import SetError
from jmaple.mail import mailbox as mailbox_module
from jmaple.mail import mime, storage
from jmaple.mail.headers import (
    PARSE_VERSION, as_addresses, as_message_ids, as_text, base_subject, convenience_properties, parse_date,
)
from jmaple.store.db import Transaction

MAX_KEYWORD_LENGTH = 255
# RFC 8621 §4.1.1: a keyword is 1-255 of %x21-%x7e except these (IMAP atom-specials).
_KEYWORD_FORBIDDEN = frozenset('(){]%*"\\')
MAX_KEYWORDS = 1000    # tooManyKeywords beyond this many on one Email


@dataclass(frozen=True)
class ImportItem:
    """One message to import: raw octets, the mailboxes (existing ids) and keywords to give it."""

    raw: bytes
    mailbox_ids: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    received_at: float | None = None      # unix time; None = now


@dataclass(frozen=True)
class Imported:
    """What an imported message became (the EmailImport answer of RFC 8621 §4.8)."""

    id: str
    blob_id: str
    thread_id: str
    size: int


def keyword(value: Any) -> str | None:
    """A valid keyword in lower case (RFC 8621 §4.1.1), or None when it is not one."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEYWORD_LENGTH:
        return None
    for c in value:
        if not "\x21" <= c <= "\x7e" or c in _KEYWORD_FORBIDDEN:
            return None
    return value.lower()


def _last(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    found = None
    for n, v in headers:
        if n.lower() == name:
            found = v
    return found


def _first_address(raw: str | None) -> str:
    if raw is None:
        return ""
    boxes = as_addresses(raw)
    return (boxes[0].get("email") or "").lower() if boxes else ""


def _received_time(headers: Sequence[tuple[str, str]]) -> float | None:
    """RFC 8621 §4.8: receivedAt defaults to the time of the most recent Received header field."""
    for n, v in headers:   # the most recent is the topmost
        if n.lower() == "received" and ";" in v:
            when = parse_date(v.rsplit(";", 1)[1])
            if when is not None:
                return when.timestamp()
    return None


@dataclass
class _Prepared:
    raw: bytes
    message: mime.Message
    thread_keys: list[str]
    message_id: str | None
    subject_key: str
    part_blobs: dict[str, bytes]


def without_nul(raw: bytes) -> bytes:
    """The message as it is stored and parsed: NUL octets are not allowed in a message (RFC 5322 §2.1), so
    they are dropped, and the message gets a blobId of its own (RFC 8621 §4.8 allows fixing it this way)."""
    return raw.replace(b"\x00", b"") if b"\x00" in raw else raw


def part_contents(raw: bytes, message: mime.Message) -> dict[str, bytes]:
    """partId -> decoded content of every leaf part: what each part's blobId stands for (RFC 8621 §4.1.4)."""
    return {p.part_id: mime.decode_body(raw, p) for p in message.leaves() if p.part_id is not None}


def _prepare(raw: bytes) -> _Prepared:
    raw = without_nul(raw)
    message = mime.parse(raw)
    headers = message.headers
    own = as_message_ids(_last(headers, "message-id") or "") or []
    keys = list(dict.fromkeys(
        [*own, *(as_message_ids(_last(headers, "in-reply-to") or "") or []),
         *(as_message_ids(_last(headers, "references") or "") or [])]))
    subject = _last(headers, "subject")
    part_blobs = part_contents(raw, message)
    return _Prepared(raw, message, keys, own[0] if own else None,
                     base_subject(as_text(subject)).casefold() if subject is not None else "", part_blobs)


@dataclass(frozen=True)
class Parsed:
    """What the `parsed` column holds: all Email/get needs besides the columns and the raw message."""

    message: mime.Message
    part_blob_ids: dict[str, str]             # partId -> blobId of every leaf part
    convenience: dict[str, Any] | None        # every convenience property (§4.1.3); None: derive from headers


def parsed_blob(message: mime.Message, part_blob_ids: dict[str, str]) -> bytes:
    """The `parsed` column of a message: its structure, each leaf part's blobId, and the convenience
    properties, parsed once here rather than on every Email/get."""
    return orjson.dumps({"m": message.to_dict(), "b": part_blob_ids, "c": convenience_properties(message.headers),
                         "cv": PARSE_VERSION})


def read_parsed(data: bytes) -> Parsed:
    """The `parsed` column read back (convenience None when stored by an older header parser)."""
    stored = orjson.loads(data)
    return Parsed(mime.Message.from_dict(stored["m"]), stored["b"],
                  stored.get("c") if stored.get("cv") == PARSE_VERSION else None)


def attachment_bytes(message: mime.Message) -> int:
    """The total decoded size of a message's attachments (§4.1.4), which maxSizeAttachmentsPerEmail bounds."""
    return sum(p.size for p in message.attachments)


async def import_messages(tx: Transaction, runtime: Runtime, account_id: str, items: Sequence[ImportItem], *,
                          max_attachment_bytes: int | None = None) -> list[Imported | SetError]:
    """Parse, store (raw and every leaf part as blobs), thread and insert messages in one batch.

    Must run inside a write transaction. Each item gets an Imported, or a SetError: invalidEmail (no
    header field), invalidProperties [mailboxIds] / [keywords], tooManyKeywords, tooManyMailboxes, and
    tooLarge when its attachments total more than `max_attachment_bytes` (given for what a client
    adds: RFC 8621 §1.3.1 maxSizeAttachmentsPerEmail; None for what the operator imports or delivery brings).
    """
    settings = mailbox_module.settings(runtime)
    wanted_boxes = {m for item in items for m in item.mailbox_ids}
    existing = await storage.existing_mailbox_ids(tx, account_id, wanted_boxes)
    results: list[Imported | SetError | None] = []
    ready: list[tuple[int, ImportItem, _Prepared, list[str]]] = []
    for n, item in enumerate(items):
        boxes = list(dict.fromkeys(item.mailbox_ids))
        if not boxes or any(m not in existing for m in boxes):
            results.append(SetError("invalidProperties", "mailboxIds must name existing mailboxes",
                                    ("mailboxIds",)))
            continue
        if settings.max_mailboxes_per_email is not None and len(boxes) > settings.max_mailboxes_per_email:
            results.append(SetError("tooManyMailboxes", f"at most {settings.max_mailboxes_per_email} mailboxes"))
            continue
        words = [keyword(k) for k in item.keywords]
        if any(w is None for w in words):
            results.append(SetError("invalidProperties", "a keyword is not valid (RFC 8621 §4.1.1)", ("keywords",)))
            continue
        if len(set(words)) > MAX_KEYWORDS:
            results.append(SetError("tooManyKeywords", f"at most {MAX_KEYWORDS} keywords"))
            continue
        try:
            prepared = _prepare(bytes(item.raw))
        except mime.NotParsable:
            results.append(SetError("invalidEmail", "the blob is not a message: it has no header field"))
            continue
        if max_attachment_bytes is not None \
                and (attached := attachment_bytes(prepared.message)) > max_attachment_bytes:
            results.append(SetError("tooLarge", f"its attachments total {attached} octets, more than "
                                    f"maxSizeAttachmentsPerEmail ({max_attachment_bytes})"))
            continue
        results.append(None)
        ready.append((n, ImportItem(prepared.raw, tuple(boxes), tuple(dict.fromkeys(words)),  # type: ignore[arg-type]
                                    item.received_at), prepared, boxes))
    if not ready:
        return results   # type: ignore[return-value]

    # Blobs first (files are content-addressed: a rolled-back import leaves only collectable files).
    blob_ids = await asyncio.gather(*(runtime.blobs.write(p.raw) for _, _, p, _ in ready))
    part_ids: list[dict[str, str]] = []
    for _, _, prepared, _ in ready:
        # Parts with the same content share one blob (and one durable write).
        contents = list(dict.fromkeys(prepared.part_blobs.values()))
        written = dict(zip(contents, await asyncio.gather(*(runtime.blobs.write(data) for data in contents))))
        part_ids.append({part_id: written[data] for part_id, data in prepared.part_blobs.items()})

    # Threads: §3's suggestion, by shared message ids and the same base subject; earlier messages of
    # this batch count as if already stored.
    lookup = await storage.threads_by_message_ids(tx, account_id, {k for _, _, p, _ in ready for k in p.thread_keys})
    known: dict[str, list[tuple[str, str]]] = {}
    for key, thread_id, subject in lookup:
        known.setdefault(key, []).append((thread_id, subject))
    records: list[storage.EmailRecord] = []
    for (n, item, prepared, boxes), blob_id, parts in zip(ready, blob_ids, part_ids):
        thread_id = None
        for key in prepared.thread_keys:
            for candidate, subject in known.get(key, ()):
                if subject == prepared.subject_key:
                    thread_id = candidate
                    break
            if thread_id is not None:
                break
        if thread_id is None:
            thread_id = "T" + runtime.config.new_id()
        for key in prepared.thread_keys:
            entries = known.setdefault(key, [])
            if (thread_id, prepared.subject_key) not in entries:
                entries.append((thread_id, prepared.subject_key))
        email_id = "E" + runtime.config.new_id()
        headers = prepared.message.headers
        date = parse_date(_last(headers, "date") or "") if _last(headers, "date") is not None else None
        received = item.received_at
        if received is None:
            received = _received_time(headers) or tx.now
        records.append(storage.EmailRecord(
            id=email_id, blob_id=blob_id, thread_id=thread_id, size=len(prepared.raw),
            received_at=int(received), mailbox_ids=boxes, keywords=item.keywords,
            thread_keys=prepared.thread_keys, message_id=prepared.message_id,
            sent_at=int(date.timestamp()) if date is not None else None,
            base_subject=prepared.subject_key, sort_from=_first_address(_last(headers, "from")),
            sort_to=_first_address(_last(headers, "to")), has_attachment=prepared.message.has_attachment,
            preview=prepared.message.preview, parsed=parsed_blob(prepared.message, parts)))
        results[n] = Imported(email_id, blob_id, thread_id, len(prepared.raw))
    for (_, _, prepared, _), blob_id, parts, record in zip(ready, blob_ids, part_ids, records):
        await runtime.blobs.register(tx, blob_id, prepared.raw)
        registered: set[str] = set()
        for part_id, part_blob in parts.items():
            if part_blob not in registered:
                registered.add(part_blob)
                await runtime.blobs.register(tx, part_blob, prepared.part_blobs[part_id])
        await runtime.blobs.add_refs(tx, account_id, storage.email_blob_owner(record.id), [blob_id, *parts.values()])
    await storage.insert_emails(tx, account_id, records)
    return results   # type: ignore[return-value]

