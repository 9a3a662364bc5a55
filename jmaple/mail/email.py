"""Email (RFC 8621 §4): import and threading, /get, /changes, /set, /import, /parse."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from jmaple.core.capability import DataType, Property
from jmaple.core.context import MethodContext, Runtime
from jmaple.core.errors import MethodError, SetError, invalid_arguments
from jmaple.core.methods import Args, check_count, is_id, state_int
from jmaple.mail import mailbox as mailbox_module
from jmaple.mail import mime, storage
from jmaple.mail.headers import (
    as_addresses, as_message_ids, as_text, base_subject, convenience_properties, header_property, headers_json,
    parse_date, parse_header_property,
)
from jmaple.store import changes
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


def _prepare(raw: bytes) -> _Prepared:
    # NUL octets are not allowed in a message (RFC 5322 §2.1): the stored message drops them, and so
    # gets a blobId of its own (RFC 8621 §4.8 allows fixing a message this way).
    if b"\x00" in raw:
        raw = raw.replace(b"\x00", b"")
    message = mime.parse(raw)
    headers = message.headers
    own = as_message_ids(_last(headers, "message-id") or "") or []
    keys = list(dict.fromkeys(
        [*own, *(as_message_ids(_last(headers, "in-reply-to") or "") or []),
         *(as_message_ids(_last(headers, "references") or "") or [])]))
    subject = _last(headers, "subject")
    part_blobs = {p.part_id: mime.decode_body(raw, p) for p in message.parts()
                  if p.sub_parts is None and p.part_id is not None}
    return _Prepared(raw, message, keys, own[0] if own else None,
                     base_subject(as_text(subject)).casefold() if subject is not None else "", part_blobs)


def parsed_blob(message: mime.Message, part_blob_ids: dict[str, str]) -> bytes:
    """The `parsed` column: the structure Email/get serves from, with each leaf part's blobId."""
    return orjson.dumps({"m": message.to_dict(), "b": part_blob_ids})


async def import_messages(tx: Transaction, runtime: Runtime, account_id: str,
                          items: Sequence[ImportItem]) -> list[Imported | SetError]:
    """Parse, store (raw and every leaf part as blobs), thread and insert messages in one batch.

    Must run inside a write transaction. Each item gets an Imported, or a SetError: invalidEmail (no
    header field), invalidProperties [mailboxIds] / [keywords], tooManyKeywords, tooManyMailboxes.
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
        results.append(None)
        ready.append((n, ImportItem(prepared.raw, tuple(boxes), tuple(dict.fromkeys(words)),  # type: ignore[arg-type]
                                    item.received_at), prepared, boxes))
    if not ready:
        return results   # type: ignore[return-value]

    # Blobs first (files are content-addressed: a rolled-back import leaves only collectable files).
    blob_ids = await asyncio.gather(*(runtime.blobs.write(p.raw) for _, _, p, _ in ready))
    part_ids: list[dict[str, str]] = []
    for _, _, prepared, _ in ready:
        ids = await asyncio.gather(*(runtime.blobs.write(data) for data in prepared.part_blobs.values()))
        part_ids.append(dict(zip(prepared.part_blobs, ids)))

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
        for part_id, part_blob in parts.items():
            await runtime.blobs.register(tx, part_blob, prepared.part_blobs[part_id])
        await runtime.blobs.add_refs(tx, account_id, storage.email_blob_owner(record.id), [blob_id, *parts.values()])
    await storage.insert_emails(tx, account_id, records)
    return results   # type: ignore[return-value]


def utc_date(timestamp: float) -> str:
    """A UTCDate string (RFC 8620 §1.4) for Unix seconds."""
    return datetime.datetime.fromtimestamp(int(timestamp), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc_date(value: Any) -> float | None:
    """Unix seconds of a UTCDate string, or None when it is not one."""
    if not isinstance(value, str) or not value.endswith("Z") or len(value) < 20:
        return None
    try:
        when = datetime.datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        return None
    return when.timestamp()


# --- Email/import (RFC 8621 §4.8) -----------------------------------------------------------------------------

_IMPORT_KEYS = frozenset({"blobId", "mailboxIds", "keywords", "receivedAt"})


def _id_set(ctx: MethodContext, value: Any, name: str) -> list[str]:
    """An Id[Boolean] map whose values are all true, creation ids resolved; SetFailure-free: ValueError."""
    if not isinstance(value, dict):
        raise ValueError(name)
    out = []
    for key, flag in value.items():
        if flag is not True or not isinstance(key, str):
            raise ValueError(name)
        resolved = ctx.resolve_id(key)
        if resolved is None or not is_id(resolved):
            raise ValueError(name)
        out.append(resolved)
    return out


def _keyword_set(value: Any) -> list[str]:
    if not isinstance(value, dict):
        raise ValueError("keywords")
    out = []
    for key, flag in value.items():
        word = keyword(key)
        if flag is not True or word is None:
            raise ValueError("keywords")
        out.append(word)
    return list(dict.fromkeys(out))


async def email_import(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/import (RFC 8621 §4.8): add messages from uploaded blobs, with mailboxes, keywords, receivedAt."""
    a = Args(args, ("accountId", "ifInState", "emails"))
    if_in_state = a.string("ifInState")
    emails = a.object("emails", nullable=False) or {}
    check_count(ctx, len(emails), ctx.config.limits.max_objects_in_set, "emails to import")
    ctx.require_write(ctx.account_id)
    old_state = await changes.state(ctx.conn, ctx.account_id, "Email")
    if if_in_state is not None and if_in_state != old_state:
        raise MethodError("stateMismatch")
    not_created: dict[str, Any] = {}
    pending: list[tuple[str, ImportItem]] = []
    blob_ids = {e.get("blobId") for e in emails.values() if isinstance(e, dict) and isinstance(e.get("blobId"), str)}
    readable = await ctx.runtime.blobs.readable(ctx.conn, ctx.account_id, blob_ids, user_id=ctx.principal.user_id)
    for cid, spec in emails.items():
        if not isinstance(spec, dict):
            not_created[cid] = SetError("invalidProperties", "an EmailImport must be an object").to_json()
            continue
        unknown = sorted(set(spec) - _IMPORT_KEYS)
        if unknown:
            not_created[cid] = SetError("invalidProperties", f"unknown property {unknown[0]!r}",
                                        tuple(unknown)).to_json()
            continue
        blob_id = spec.get("blobId")
        if not isinstance(blob_id, str) or blob_id not in readable:
            not_created[cid] = SetError("invalidProperties", "no such blob", ("blobId",)).to_json()
            continue
        try:
            boxes = _id_set(ctx, spec.get("mailboxIds"), "mailboxIds")
            if not boxes:
                raise ValueError("mailboxIds")
            words = _keyword_set(spec.get("keywords", {}))
        except ValueError as exc:
            not_created[cid] = SetError("invalidProperties", f"{exc} is not valid", (str(exc),)).to_json()
            continue
        received = None
        if "receivedAt" in spec:
            received = parse_utc_date(spec["receivedAt"])
            if received is None:
                not_created[cid] = SetError("invalidProperties", "receivedAt must be a UTCDate",
                                            ("receivedAt",)).to_json()
                continue
        try:
            raw = await ctx.runtime.blobs.read(blob_id)
        except FileNotFoundError:
            not_created[cid] = SetError("invalidProperties", "no such blob", ("blobId",)).to_json()
            continue
        pending.append((cid, ImportItem(raw, tuple(boxes), tuple(words), received)))
    results = await import_messages(ctx.conn, ctx.runtime, ctx.account_id,  # type: ignore[arg-type]
                                    [item for _, item in pending])
    created: dict[str, Any] = {}
    for (cid, _), result in zip(pending, results):
        if isinstance(result, SetError):
            not_created[cid] = result.to_json()
        else:
            created[cid] = {"id": result.id, "blobId": result.blob_id, "threadId": result.thread_id,
                            "size": result.size}
            ctx.created_ids[cid] = result.id
    new_state = await changes.state(ctx.conn, ctx.account_id, "Email")
    return {"accountId": ctx.account_id, "oldState": old_state, "newState": new_state,
            "created": created or None, "notCreated": not_created or None}


# --- Email/get (RFC 8621 §4.2) --------------------------------------------------------------------------------

METADATA = ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt")
CONVENIENCE = ("messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo",
               "subject", "sentAt")
BODY = ("bodyStructure", "bodyValues", "textBody", "htmlBody", "attachments", "hasAttachment", "preview")
PROPERTIES = frozenset((*METADATA, "headers", *CONVENIENCE, *BODY))
DEFAULT_PROPERTIES = (*METADATA, *CONVENIENCE, "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody",
                      "attachments")
# What can be answered from columns alone, without reading `parsed`.
_COLUMN_PROPERTIES = frozenset((*METADATA, "hasAttachment", "preview"))


@dataclass(frozen=True)
class GetArgs:
    ids: list[str] | None
    properties: tuple[str, ...]
    body_properties: tuple[str, ...] | None
    fetch_text: bool
    fetch_html: bool
    fetch_all: bool
    max_bytes: int

    @classmethod
    def parse(cls, ctx: MethodContext, args: dict[str, Any]) -> GetArgs:
        a = Args(args, ("accountId", "ids", "properties", "bodyProperties", "fetchTextBodyValues",
                        "fetchHTMLBodyValues", "fetchAllBodyValues", "maxBodyValueBytes"))
        ids = a.ids("ids", creation_refs=True)
        properties = a.strings("properties")
        if properties is None:
            properties = list(DEFAULT_PROPERTIES)
        for prop in properties:
            if prop.startswith("header:"):
                try:
                    parse_header_property(prop)
                except ValueError as exc:
                    raise invalid_arguments(f"properties: {exc}") from None
            elif prop not in PROPERTIES:
                raise invalid_arguments(f"properties: unknown property {prop!r}")
        body_properties = a.strings("bodyProperties")
        if body_properties is not None:
            try:
                mime.check_body_properties(body_properties)
            except ValueError as exc:
                raise invalid_arguments(f"bodyProperties: {exc}") from None
        max_bytes = a.int("maxBodyValueBytes", 0, minimum=0)
        if "maxBodyValueBytes" in args and max_bytes == 0:
            raise invalid_arguments("maxBodyValueBytes must be greater than 0")
        return cls(ids, tuple(dict.fromkeys(["id", *properties])),
                   None if body_properties is None else tuple(body_properties),
                   a.boolean("fetchTextBodyValues"), a.boolean("fetchHTMLBodyValues"),
                   a.boolean("fetchAllBodyValues"), max_bytes)


def _blob_id_for(part_blobs: dict[str, str]) -> Any:
    def blob_id_for(part: mime.Part) -> str:
        return part_blobs.get(part.part_id or "", "")
    return blob_id_for


async def email_objects(ctx: MethodContext, ids: Sequence[str], g: GetArgs) -> dict[str, dict[str, Any]]:
    """Email objects with the properties of `g` for those of `ids` that exist."""
    need_parsed = any(p not in _COLUMN_PROPERTIES for p in g.properties)
    rows = await storage.email_rows(ctx.conn, ctx.account_id, ids, parsed=need_parsed)
    need_raw = "bodyValues" in g.properties and (g.fetch_text or g.fetch_html or g.fetch_all)
    raws: dict[str, bytes] = {}
    if need_raw and rows:
        blob_ids = [r.blob_id for r in rows.values()]
        datas = await asyncio.gather(*(ctx.runtime.blobs.read(b) for b in blob_ids), return_exceptions=True)
        raws = {b: d for b, d in zip(blob_ids, datas) if isinstance(d, bytes)}
    out: dict[str, dict[str, Any]] = {}
    for email_id, row in rows.items():
        message: mime.Message | None = None
        part_blobs: dict[str, str] = {}
        if row.parsed is not None:
            stored = orjson.loads(row.parsed)
            message = mime.Message.from_dict(stored["m"])
            part_blobs = stored["b"]
        blob_id_for = _blob_id_for(part_blobs)
        headers = message.headers if message is not None else []
        obj: dict[str, Any] = {}
        convenience = None
        for prop in g.properties:
            if prop == "id":
                obj[prop] = row.id
            elif prop == "blobId":
                obj[prop] = row.blob_id
            elif prop == "threadId":
                obj[prop] = row.thread_id
            elif prop == "mailboxIds":
                obj[prop] = dict.fromkeys(row.mailbox_ids, True)
            elif prop == "keywords":
                obj[prop] = dict.fromkeys(row.keywords, True)
            elif prop == "size":
                obj[prop] = row.size
            elif prop == "receivedAt":
                obj[prop] = utc_date(row.received_at)
            elif prop == "hasAttachment":
                obj[prop] = row.has_attachment
            elif prop == "preview":
                obj[prop] = row.preview
            elif prop == "headers":
                obj[prop] = headers_json(headers)
            elif prop in CONVENIENCE:
                if convenience is None:
                    convenience = convenience_properties(headers, [p for p in g.properties if p in CONVENIENCE])
                obj[prop] = convenience[prop]
            elif prop.startswith("header:"):
                obj[prop] = header_property(headers, prop)
            elif message is None:
                obj[prop] = None
            elif prop == "bodyStructure":
                obj[prop] = mime.body_structure(message, g.body_properties, blob_id_for)
            elif prop == "textBody":
                obj[prop] = mime.body_parts(message.text_body, g.body_properties, blob_id_for)
            elif prop == "htmlBody":
                obj[prop] = mime.body_parts(message.html_body, g.body_properties, blob_id_for)
            elif prop == "attachments":
                obj[prop] = mime.body_parts(message.attachments, g.body_properties, blob_id_for)
            elif prop == "bodyValues":
                raw = raws.get(row.blob_id)
                obj[prop] = {} if raw is None else mime.body_values(
                    raw, message, fetch_text=g.fetch_text, fetch_html=g.fetch_html, fetch_all=g.fetch_all,
                    max_bytes=g.max_bytes)
        out[email_id] = obj
    return out


async def email_get(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/get (RFC 8621 §4.2): every §4.1 property, header forms, body parts and bodyValues."""
    g = GetArgs.parse(ctx, args)
    limit = ctx.config.limits.max_objects_in_get
    state = await changes.state(ctx.conn, ctx.account_id, "Email")
    if g.ids is None:
        ids = await storage.query_email_ids(ctx.conn, ctx.account_id, None, ascending=True, collapse_threads=False)
        check_count(ctx, len(ids), limit, "emails in the account (ids: null)")
    else:
        check_count(ctx, len(g.ids), limit, "ids")
        ids = []
        for value in g.ids:
            resolved = ctx.resolve_id(value)
            ids.append(resolved if resolved is not None else value)
        ids = list(dict.fromkeys(ids))
    found = await email_objects(ctx, ids, g)
    return {"accountId": ctx.account_id, "state": state, "list": [found[i] for i in ids if i in found],
            "notFound": [i for i in ids if i not in found] if g.ids is not None else []}


class _ReadOnlyStore:
    """Email and Thread are served by their own handlers; the generic /changes needs no store."""

    async def get(self, conn: Any, account_id: str, ids: Sequence[str] | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def insert(self, tx: Any, account_id: str, objects: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def update(self, tx: Any, account_id: str, objects: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def delete(self, tx: Any, account_id: str, ids: list[str]) -> None:
        raise NotImplementedError


EMAIL = DataType(
    name="Email",
    id_prefix="E",
    properties=(
        Property("id", "Id", server_set=True, immutable=True),
        Property("blobId", "Id", server_set=True, immutable=True),
        Property("threadId", "Id", server_set=True, immutable=True),
        Property("mailboxIds", "Id[Boolean]", references="Mailbox"),
        Property("keywords", "String[Boolean]", default={}),
        Property("size", "UnsignedInt", server_set=True, immutable=True),
        Property("receivedAt", "UTCDate", immutable=True, sortable=True),
    ),
    store=_ReadOnlyStore(),
    standard_methods=("changes",),   # Email/changes (§4.3) is the generic one
)


# --- Email/set (RFC 8621 §4.6) ----------------------------------------------------------------------------------

def _unescape(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901)."""
    return token.replace("~1", "/").replace("~0", "~")


class _Refused(Exception):
    def __init__(self, error: SetError):
        super().__init__(error.type)
        self.error = error


def _bad(description: str, *properties: str) -> _Refused:
    return _Refused(SetError("invalidProperties", description, properties))


def _apply_patch(ctx: MethodContext, patch: dict[str, Any], state: storage.EmailState) -> tuple[set[str], set[str]]:
    """The new (mailbox ids, keywords) after an update's patch; raises _Refused."""
    boxes, words = set(state.mailbox_ids), set(state.keywords)
    whole = {k for k in patch if k in ("mailboxIds", "keywords")}
    for path, value in patch.items():
        if not isinstance(path, str):
            raise _bad("bad patch path")
        head, sep, rest = path.partition("/")
        if head not in ("mailboxIds", "keywords"):
            name = path if head in PROPERTIES or head.startswith("header:") else head
            raise _bad(f"{name} cannot be changed (only mailboxIds and keywords can)", name)
        if not sep:
            try:
                if head == "mailboxIds":
                    boxes = set(_id_set(ctx, value, "mailboxIds"))
                else:
                    words = set(_keyword_set(value))
            except ValueError:
                raise _bad(f"{head} is not valid", head) from None
            continue
        if head in whole:
            raise _Refused(SetError("invalidPatch", f"{path} patches {head}, which is also replaced whole"))
        if "/" in rest:
            raise _Refused(SetError("invalidPatch", f"{path}: no such path"))
        key = _unescape(rest)
        if value is not None and value is not True:
            raise _bad(f"{path} must be true or null", head)
        if head == "mailboxIds":
            resolved = ctx.resolve_id(key)
            if resolved is None or not is_id(resolved):
                raise _bad(f"{key!r} is not a mailbox id", head)
            (boxes.add if value else boxes.discard)(resolved)
        else:
            word = keyword(key)
            if word is None:
                raise _bad(f"{key!r} is not a valid keyword", head)
            (words.add if value else words.discard)(word)
    return boxes, words


async def _update(ctx: MethodContext, update: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = mailbox_module.settings(ctx.runtime)
    ids = {key: ctx.resolve_id(key) or key for key in update}
    states = await storage.email_states(ctx.conn, ctx.account_id, list(ids.values()))
    new_boxes: dict[str, set[str]] = {}
    new_words: dict[str, set[str]] = {}
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for key, patch in update.items():
        email_id = ids[key]
        state = states.get(email_id)
        if state is None:
            not_updated[key] = {"type": "notFound"}
            continue
        try:
            if not isinstance(patch, dict):
                raise _Refused(SetError("invalidPatch", "a PatchObject must be an object"))
            boxes, words = _apply_patch(ctx, patch, state)
            if not boxes:
                raise _bad("an Email must be in at least one mailbox", "mailboxIds")
            if settings.max_mailboxes_per_email is not None and len(boxes) > settings.max_mailboxes_per_email:
                raise _Refused(SetError("tooManyMailboxes", f"at most {settings.max_mailboxes_per_email}"))
            if len(words) > MAX_KEYWORDS:
                raise _Refused(SetError("tooManyKeywords", f"at most {MAX_KEYWORDS}"))
            if boxes != state.mailbox_ids:
                missing = boxes - await storage.existing_mailbox_ids(ctx.conn, ctx.account_id, boxes)
                if missing:
                    raise _bad("no such mailbox: " + ", ".join(sorted(missing)), "mailboxIds")
        except _Refused as exc:
            not_updated[key] = exc.error.to_json()
            continue
        new_boxes[email_id] = boxes
        new_words[email_id] = words
        updated[email_id] = None
    await storage.update_emails(ctx.conn, ctx.account_id, mailbox_ids=new_boxes,  # type: ignore[arg-type]
                                keywords=new_words)
    return updated, not_updated


async def _destroy(ctx: MethodContext, destroy: list[str]) -> tuple[list[str], dict[str, Any]]:
    ids = {key: ctx.resolve_id(key) or key for key in destroy}
    gone = set(await storage.destroy_emails(ctx.conn, ctx.account_id, list(ids.values())))  # type: ignore[arg-type]
    await ctx.runtime.blobs.drop_refs(ctx.conn, ctx.account_id,  # type: ignore[arg-type]
                                      [storage.email_blob_owner(i) for i in gone])
    destroyed = [ids[k] for k in destroy if ids[k] in gone]
    return list(dict.fromkeys(destroyed)), {k: {"type": "notFound"} for k in destroy if ids[k] not in gone}


async def email_set(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/set (RFC 8621 §4.6): create messages from JMAP properties, change mailboxIds and keywords, destroy."""
    a = Args(args, ("accountId", "ifInState", "create", "update", "destroy"))
    if_in_state = a.string("ifInState")
    create = a.object("create") or {}
    update = a.object("update") or {}
    destroy = a.ids("destroy", creation_refs=True) or []
    check_count(ctx, len(create) + len(update) + len(destroy), ctx.config.limits.max_objects_in_set,
                "objects to create, update and destroy")
    ctx.require_write(ctx.account_id)
    old_state = await changes.state(ctx.conn, ctx.account_id, "Email")
    if if_in_state is not None and if_in_state != old_state:
        raise MethodError("stateMismatch")
    created, not_created = await _create(ctx, create)
    updated, not_updated = await _update(ctx, update)
    destroyed, not_destroyed = await _destroy(ctx, destroy)
    return {
        "accountId": ctx.account_id,
        "oldState": old_state,
        "newState": await changes.state(ctx.conn, ctx.account_id, "Email"),
        "created": created or None,
        "updated": updated or None,
        "destroyed": destroyed or None,
        "notCreated": not_created or None,
        "notUpdated": not_updated or None,
        "notDestroyed": not_destroyed or None,
    }


async def _create(ctx: MethodContext, create: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, {cid: {"type": "forbidden", "description": "creating an Email is not supported yet"}
                for cid in create}
