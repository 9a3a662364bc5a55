"""Email (RFC 8621 §4): import and threading, /get, /changes, /set, /import, /parse."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.header
import email.utils
import quopri
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from jmaple.core.capability import DataType, Property
from jmaple.core.context import MethodContext, Runtime
from jmaple.core.errors import MethodError, SetError, invalid_arguments
from jmaple.core.methods import Args, check_count, implicit_destroy, is_id
from jmaple.mail import mailbox as mailbox_module
from jmaple.mail import mime, storage
from jmaple.mail.headers import CONVENIENCE as CONVENIENCE_FIELDS
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
# RFC 8621 §4.9: Email/parse's default properties.
PARSE_DEFAULT_PROPERTIES = (*CONVENIENCE, "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody",
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
    def parse(cls, ctx: MethodContext, args: dict[str, Any], *, ids_argument: str = "ids") -> GetArgs:
        """Email/get's arguments, or Email/parse's (ids_argument "blobIds", other default properties)."""
        a = Args(args, ("accountId", ids_argument, "properties", "bodyProperties", "fetchTextBodyValues",
                        "fetchHTMLBodyValues", "fetchAllBodyValues", "maxBodyValueBytes"))
        ids = a.ids(ids_argument, creation_refs=True, nullable=ids_argument == "ids")
        properties = a.strings("properties")
        if properties is None:
            properties = list(DEFAULT_PROPERTIES if ids_argument == "ids" else PARSE_DEFAULT_PROPERTIES)
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
        if ids_argument == "ids":
            properties = ["id", *properties]   # RFC 8620 §5.1: id is always returned
        return cls(ids, tuple(dict.fromkeys(properties)),
                   None if body_properties is None else tuple(body_properties),
                   a.boolean("fetchTextBodyValues"), a.boolean("fetchHTMLBodyValues"),
                   a.boolean("fetchAllBodyValues"), max_bytes)


def _blob_id_for(part_blobs: dict[str, str]) -> Any:
    def blob_id_for(part: mime.Part) -> str | None:
        return part_blobs.get(part.part_id or "")
    return blob_id_for


def _read_all(blobs: Any, blob_ids: list[str]) -> dict[str, bytes]:
    """The raw messages, read in one worker thread (one hop instead of one per email)."""
    out = {}
    for blob_id in blob_ids:
        try:
            out[blob_id] = blobs.path(blob_id).read_bytes()
        except OSError:
            pass   # collected or lost: bodyValues is then {} rather than a failed call
    return out


async def email_objects(ctx: MethodContext, ids: Sequence[str], g: GetArgs) -> dict[str, dict[str, Any]]:
    """Email objects with the properties of `g` for those of `ids` that exist."""
    need_parsed = any(p not in _COLUMN_PROPERTIES for p in g.properties)
    rows = await storage.email_rows(ctx.conn, ctx.account_id, ids, parsed=need_parsed)
    need_raw = "bodyValues" in g.properties and (g.fetch_text or g.fetch_html or g.fetch_all)
    raws: dict[str, bytes] = {}
    if need_raw and rows:
        raws = await asyncio.to_thread(_read_all, ctx.runtime.blobs, [r.blob_id for r in rows.values()])
    out: dict[str, dict[str, Any]] = {}
    for email_id, row in rows.items():
        message: mime.Message | None = None
        part_blobs: dict[str, str] = {}
        if row.parsed is not None:
            stored = orjson.loads(row.parsed)
            message = mime.Message.from_dict(stored["m"])
            part_blobs = stored["b"]
        out[email_id] = _render(g, row, message, part_blobs, raws.get(row.blob_id))
    return out


def _render(g: GetArgs, row: storage.EmailRow, message: mime.Message | None, part_blobs: dict[str, str],
            raw: bytes | None) -> dict[str, Any]:
    """One Email object with the properties of `g`."""
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
            obj[prop] = {} if raw is None else mime.body_values(
                raw, message, fetch_text=g.fetch_text, fetch_html=g.fetch_html, fetch_all=g.fetch_all,
                max_bytes=g.max_bytes)
    return obj


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
    """invalidProperties naming the top-level properties of these paths ("bodyStructure.subParts[0]")."""
    names = tuple(dict.fromkeys(p.split(".")[0].split("[")[0] for p in properties))
    return _Refused(SetError("invalidProperties", description, names))


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
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, spec in create.items():
        try:
            item = await _compose(ctx, spec)
        except _Refused as exc:
            not_created[cid] = exc.error.to_json()
            continue
        result = (await import_messages(ctx.conn, ctx.runtime, ctx.account_id, [item]))[0]  # type: ignore[arg-type]
        if isinstance(result, SetError):
            not_created[cid] = result.to_json()
            continue
        created[cid] = {"id": result.id, "blobId": result.blob_id, "threadId": result.thread_id,
                        "size": result.size}
        ctx.created_ids[cid] = result.id
    return created, not_created


# Composing a message from Email properties (§4.6) -------------------------------------------------------------

_SERVER_SET = frozenset({"id", "blobId", "threadId", "size", "hasAttachment", "preview"})
_CONVENIENCE_FIELDS = dict(CONVENIENCE_FIELDS)
_PART_KEYS = frozenset({"partId", "blobId", "size", "name", "type", "charset", "disposition", "cid", "language",
                        "location", "subParts"})
_MAX_NESTING = 20


def _encode_text(value: str) -> str:
    if value.isascii() and "=?" not in value and "\n" not in value and "\r" not in value:
        return value
    return email.header.Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _encode_address(box: Any) -> str:
    if not isinstance(box, dict) or not set(box) <= {"name", "email"} or not isinstance(box.get("email"), str) \
            or not isinstance(box.get("name") or "", str):
        raise ValueError("an EmailAddress is {name, email}")
    address = box["email"]
    if any(c in address for c in "\r\n<>,") or not address.isprintable():
        raise ValueError("bad email address")
    name = box.get("name")
    if not name:
        return address
    return email.utils.formataddr((name, address), charset="utf-8")


def _encode_form(value: Any, form: str) -> str:
    """A header field value (after the colon) from a value in a parsed form (§4.1.2); raises ValueError."""
    if form == "Raw":
        if not isinstance(value, str):
            raise ValueError("a Raw value is a String")
        unfolded = value.replace("\r\n ", "").replace("\r\n\t", "")
        if "\r" in unfolded or "\n" in unfolded or "\x00" in unfolded:
            raise ValueError("a Raw value may only hold folded line breaks")
        return value if value[:1] in (" ", "\t") else " " + value
    if form == "Text":
        if not isinstance(value, str):
            raise ValueError("a Text value is a String")
        return " " + _encode_text(value)
    if form == "Addresses":
        if not isinstance(value, list):
            raise ValueError("Addresses is a list of EmailAddress")
        return " " + ",\r\n ".join(_encode_address(b) for b in value)
    if form == "GroupedAddresses":
        if not isinstance(value, list):
            raise ValueError("GroupedAddresses is a list of EmailAddressGroup")
        out = []
        for group in value:
            if not isinstance(group, dict) or not isinstance(group.get("addresses"), list) \
                    or not isinstance(group.get("name") or "", str):
                raise ValueError("an EmailAddressGroup is {name, addresses}")
            boxes = ", ".join(_encode_address(b) for b in group["addresses"])
            out.append(boxes if group.get("name") is None
                       else f"{_encode_text(group['name'])}: {boxes};")
        return " " + ",\r\n ".join(out)
    if form == "MessageIds":
        if not isinstance(value, list) or not all(
                isinstance(i, str) and i and i.isascii() and i.isprintable() and not any(c in i for c in " <>")
                for i in value):
            raise ValueError("MessageIds is a list of ids")
        return " " + " ".join(f"<{i}>" for i in value)
    if form == "Date":
        if not isinstance(value, str):
            raise ValueError("a Date is a String")
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not a Date") from None
        if when.tzinfo is None:
            raise ValueError("a Date has a time zone")
        return " " + email.utils.format_datetime(when)
    if form == "URLs":
        if not isinstance(value, list) or not all(isinstance(u, str) and u.isascii() and u.isprintable()
                                                  and ">" not in u for u in value):
            raise ValueError("URLs is a list of Strings")
        return " " + ", ".join(f"<{u}>" for u in value)
    raise ValueError(form)


def _header_fields(obj: dict[str, Any], where: str, *, convenience: bool) -> list[tuple[str, str]]:
    """(name, value) lines from header:* (and, on the Email, convenience) properties; raises _Refused."""
    fields: list[tuple[str, str]] = []
    seen: set[str] = set()
    for prop, value in obj.items():
        if prop.startswith("header:"):
            try:
                name, form, is_all = parse_header_property(prop)
            except ValueError as exc:
                raise _bad(f"{where}{prop}: {exc}", where + prop) from None
        elif convenience and prop in _CONVENIENCE_FIELDS:
            name, form = _CONVENIENCE_FIELDS[prop]
            is_all = False
        else:
            continue
        if name.lower() in seen:
            raise _bad(f"{where}{prop}: the {name} header field is given twice", where + prop)
        seen.add(name.lower())
        if value is None:
            continue
        try:
            values = value if is_all else [value]
            if not isinstance(values, list):
                raise ValueError("an :all value is a list")
            fields += [(name, _encode_form(v, form)) for v in values]
        except ValueError as exc:
            raise _bad(f"{where}{prop}: {exc}", where + prop) from None
    return fields


@dataclass
class _Composer:
    ctx: MethodContext
    body_values: dict[str, Any]
    blobs: dict[str, bytes]
    top_names: frozenset[str] = frozenset()   # header fields the Email itself sets
    attachment_bytes: int = 0

    def leaf_content(self, part: dict[str, Any], where: str) -> tuple[bytes, bool]:
        """(content, is_text_value) of a leaf EmailBodyPart."""
        if "partId" in part:
            if "blobId" in part or "charset" in part or "size" in part:
                raise _bad(f"{where}: partId excludes blobId, charset and size", where)
            value = self.body_values.get(part["partId"]) if isinstance(part["partId"], str) else None
            if value is None:
                raise _bad(f"{where}: partId {part['partId']!r} is not in bodyValues", where)
            return value["value"].encode("utf-8"), True
        blob_id = part.get("blobId")
        if not isinstance(blob_id, str):
            raise _bad(f"{where}: a leaf part has partId or blobId", where)
        if "size" in part:
            raise _bad(f"{where}: size must be omitted with blobId", where)
        data = self.blobs.get(blob_id)
        if data is None:
            raise _Refused(SetError("blobNotFound", f"no such blob {blob_id}", (), (("notFound", [blob_id]),)))
        self.attachment_bytes += len(data)
        return data, False

    def part(self, part: Any, where: str, depth: int = 0) -> bytes:
        """One MIME entity (header and body, CRLF line ends) from an EmailBodyPart."""
        if depth > _MAX_NESTING:
            raise _bad(f"{where}: nested too deeply", where)
        if not isinstance(part, dict):
            raise _bad(f"{where}: an EmailBodyPart is an object", where)
        unknown = [k for k in part if k not in _PART_KEYS and not k.startswith("header:")]
        if unknown:
            raise _bad(f"{where}: {unknown[0]!r} cannot be set on an EmailBodyPart", where)
        for key in ("name", "charset", "disposition", "cid", "location", "type"):
            value = part.get(key)
            if value is not None and (not isinstance(value, str) or not value.isprintable()
                                      or (key != "name" and not value.isascii())):
                raise _bad(f"{where}.{key} is not valid", where)
        language = part.get("language")
        if language is not None and (not isinstance(language, list) or not all(
                isinstance(x, str) and x.isascii() and x.isprintable() for x in language)):
            raise _bad(f"{where}.language is not valid", where)
        extra = _header_fields(part, where + ".", convenience=False)
        if any(n.lower().startswith("content-") for n, _ in extra) and any(
                n.lower() == "content-transfer-encoding" for n, _ in extra):
            raise _bad(f"{where}: Content-Transfer-Encoding is chosen by the server", where)
        extra_names = {n.lower() for n, _ in extra}
        if depth == 0 and extra_names & self.top_names:
            # RFC 8621 §4.6: the root part may not repeat a header field the Email sets.
            raise _bad(f"{where}: a header field is also set on the Email", where)
        ctype = (part.get("type") or "").lower()
        lines: list[str] = []
        sub_parts = part.get("subParts")
        if sub_parts is not None:
            if not isinstance(sub_parts, list) or "partId" in part or "blobId" in part:
                raise _bad(f"{where}: subParts is a list, without partId or blobId", where)
            if not ctype.startswith("multipart/"):
                ctype = "multipart/mixed"
            boundary = "=_" + self.ctx.new_id()
            if "content-type" not in extra_names:
                lines.append(f"Content-Type: {ctype}; boundary=\"{boundary}\"")
            else:
                raise _bad(f"{where}: a multipart's Content-Type is the server's", where)
            body = b"".join(b"--" + boundary.encode() + b"\r\n" + self.part(sub, f"{where}.subParts[{n}]", depth + 1)
                            + b"\r\n" for n, sub in enumerate(sub_parts))
            body += b"--" + boundary.encode() + b"--\r\n"
        else:
            content, is_value = self.leaf_content(part, where)
            if not ctype:
                ctype = "text/plain" if is_value else "application/octet-stream"
            if ctype.startswith("multipart/"):
                raise _bad(f"{where}: a multipart needs subParts", where)
            params = ""
            charset = "utf-8" if is_value else part.get("charset")
            if ctype.startswith("text/") and charset:
                params += f"; charset={charset}"
            name = part.get("name")
            if name is not None:
                params += "; " + _param("name", name)
            if "content-type" not in extra_names:
                lines.append(f"Content-Type: {ctype}{params}")
            if part.get("disposition") or name is not None:
                disposition = part.get("disposition") or "attachment"
                if "content-disposition" not in extra_names:
                    lines.append(f"Content-Disposition: {disposition}"
                                 + ("; " + _param("filename", name) if name is not None else ""))
            encoded, cte = _transfer_encode(content, ctype.startswith("text/"))
            lines.append(f"Content-Transfer-Encoding: {cte}")
            body = encoded
        if part.get("cid") and "content-id" not in extra_names:
            lines.append(f"Content-ID: <{part['cid']}>")
        if language and "content-language" not in extra_names:
            lines.append("Content-Language: " + ", ".join(language))
        if part.get("location") and "content-location" not in extra_names:
            lines.append(f"Content-Location: {part['location']}")
        lines += [f"{n}:{v}" for n, v in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def _param(key: str, value: str) -> str:
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'{key}="{value}"'
    return f"{key}*={email.utils.encode_rfc2231(value, 'utf-8')}"


def _transfer_encode(content: bytes, is_text: bool) -> tuple[bytes, str]:
    if is_text:
        content = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if content.isascii() and all(len(line) <= 998 for line in content.split(b"\r\n")):
            return content, "7bit"
        return quopri.encodestring(content.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n"), "quoted-printable"
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return encoded, "base64"


def _body_spec(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The bodyStructure that textBody, htmlBody and attachments describe (§4.6); raises _Refused."""
    def single(key: str, ctype: str) -> dict[str, Any] | None:
        value = spec.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict) \
                or (value[0].get("type") or "text/plain" if key == "textBody" else value[0].get("type")) != ctype:
            raise _bad(f"{key} holds exactly one {ctype} part", key)
        return {**value[0], "type": ctype}

    text = single("textBody", "text/plain")
    html = single("htmlBody", "text/html")
    attachments = spec.get("attachments") or []
    if not isinstance(attachments, list):
        raise _bad("attachments is a list of EmailBodyPart", "attachments")
    body = {"type": "multipart/alternative", "subParts": [text, html]} if text and html else (text or html)
    if attachments:
        return {"type": "multipart/mixed", "subParts": ([body] if body else []) + attachments}
    return body


async def _compose(ctx: MethodContext, spec: Any) -> ImportItem:
    """The message an Email/set create describes, ready for import_messages; raises _Refused."""
    if not isinstance(spec, dict):
        raise _bad("an Email is an object")
    for prop in spec:
        if prop in _SERVER_SET:
            raise _bad(f"{prop} is set by the server", prop)
        if prop == "headers":
            raise _bad("headers cannot be set: give each header field as header:{name}", prop)
        if prop not in PROPERTIES and not prop.startswith("header:") and prop not in ("mailboxIds", "keywords"):
            raise _bad(f"unknown property {prop!r}", prop)
    try:
        boxes = _id_set(ctx, spec.get("mailboxIds"), "mailboxIds")
        if not boxes:
            raise ValueError("mailboxIds")
        words = _keyword_set(spec.get("keywords", {}))
    except ValueError as exc:
        raise _bad(f"{exc} is not valid", str(exc)) from None
    received = None
    if spec.get("receivedAt") is not None:
        received = parse_utc_date(spec["receivedAt"])
        if received is None:
            raise _bad("receivedAt must be a UTCDate", "receivedAt")
    top = _header_fields(spec, "", convenience=True)
    for prop in spec:
        if prop.startswith("header:") and prop[7:].split(":")[0].lower().startswith("content-"):
            raise _bad("Content-* header fields belong on body parts (RFC 8621 §4.6)", prop)
    values = spec.get("bodyValues") or {}
    if not isinstance(values, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("value"), str) and v.get("isEncodingProblem", False) is False
            and v.get("isTruncated", False) is False and set(v) <= {"value", "isEncodingProblem", "isTruncated"}
            for v in values.values()):
        raise _bad("bodyValues are {value} objects, neither truncated nor with an encoding problem", "bodyValues")
    if "bodyStructure" in spec and spec["bodyStructure"] is not None:
        if any(spec.get(k) is not None for k in ("textBody", "htmlBody", "attachments")):
            raise _bad("bodyStructure excludes textBody, htmlBody and attachments", "bodyStructure")
        structure: dict[str, Any] | None = spec["bodyStructure"]
        where = "bodyStructure"
    else:
        structure = _body_spec(spec)
        where = next((k for k in ("textBody", "htmlBody", "attachments") if spec.get(k)), "textBody")
    if structure is None:
        structure = {"partId": "", "type": "text/plain"}
        values = {**values, "": {"value": ""}}
    wanted_blobs = _blob_ids(structure)
    readable = await ctx.runtime.blobs.readable(ctx.conn, ctx.account_id, wanted_blobs,
                                                user_id=ctx.principal.user_id)
    missing = sorted(set(wanted_blobs) - readable)
    if missing:
        raise _Refused(SetError("blobNotFound", "attachments name unknown blobs", (), (("notFound", missing),)))
    blobs = {}
    for blob_id in readable:
        try:
            blobs[blob_id] = await ctx.runtime.blobs.read(blob_id)
        except FileNotFoundError:
            raise _Refused(SetError("blobNotFound", "attachments name unknown blobs", (),
                                    (("notFound", [blob_id]),))) from None
    composer = _Composer(ctx, values, blobs, frozenset(n.lower() for n, _ in top))
    body = composer.part(structure, where)
    if composer.attachment_bytes > mailbox_module.settings(ctx.runtime).max_size_attachments_per_email:
        raise _Refused(SetError("tooLarge", "the attachments are larger than maxSizeAttachmentsPerEmail"))
    names = {n.lower() for n, _ in top}
    head = [f"{n}:{v}" for n, v in top]
    if "date" not in names:
        head.append("Date: " + email.utils.format_datetime(
            datetime.datetime.fromtimestamp(int(ctx.conn.now), datetime.timezone.utc)))  # type: ignore[attr-defined]
    if "message-id" not in names:
        domain = ctx.principal.login.rpartition("@")[2] or "jmaple.invalid"
        head.append(f"Message-ID: <{ctx.new_id()}@{domain}>")
    head.append("MIME-Version: 1.0")
    raw = ("\r\n".join(head) + "\r\n").encode("utf-8") + body
    return ImportItem(raw, tuple(boxes), tuple(words), received)


def _blob_ids(part: Any, depth: int = 0) -> list[str]:
    if not isinstance(part, dict) or depth > _MAX_NESTING:
        return []
    found = [part["blobId"]] if isinstance(part.get("blobId"), str) and "partId" not in part else []
    for sub in part.get("subParts") or [] if isinstance(part.get("subParts"), list) else []:
        found += _blob_ids(sub, depth + 1)
    return found


# --- Email/parse (RFC 8621 §4.9) ------------------------------------------------------------------------------

_NOT_STORED = ("id", "threadId", "mailboxIds", "keywords", "receivedAt")


async def email_parse(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/parse (RFC 8621 §4.9): Email objects from blobs holding messages, without storing anything.

    Body parts of a parsed blob are not stored, so their blobId is null.
    """
    g = GetArgs.parse(ctx, args, ids_argument="blobIds")
    blob_ids = list(dict.fromkeys(ctx.resolve_id(b) or b for b in g.ids or []))
    check_count(ctx, len(blob_ids), ctx.config.limits.max_objects_in_get, "blobIds")
    readable = await ctx.runtime.blobs.readable(ctx.conn, ctx.account_id, blob_ids, user_id=ctx.principal.user_id)
    raws = await asyncio.to_thread(_read_all, ctx.runtime.blobs, [b for b in blob_ids if b in readable])
    parsed: dict[str, Any] = {}
    not_parsable: list[str] = []
    for blob_id in blob_ids:
        raw = raws.get(blob_id)
        if raw is None:
            continue
        try:
            message = mime.parse(raw.replace(b"\x00", b"") if b"\x00" in raw else raw)
        except mime.NotParsable:
            not_parsable.append(blob_id)
            continue
        row = storage.EmailRow("", blob_id, "", message.size, 0, message.has_attachment, message.preview, (), (),
                               None)
        obj = _render(g, row, message, {}, raw)
        for prop in _NOT_STORED:
            if prop in obj:
                obj[prop] = None
        parsed[blob_id] = obj
    return {"accountId": ctx.account_id, "parsed": parsed or None, "notParsable": not_parsable or None,
            "notFound": [b for b in blob_ids if b not in raws] or None}


# --- Email/copy (RFC 8621 §4.7) -------------------------------------------------------------------------------

_COPY_KEYS = frozenset({"id", "mailboxIds", "keywords", "receivedAt"})


async def email_copy(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/copy (RFC 8621 §4.7): copy Emails from another account, setting mailboxIds, keywords, receivedAt."""
    a = Args(args, ("fromAccountId", "ifFromInState", "accountId", "ifInState", "create",
                    "onSuccessDestroyOriginal", "destroyFromIfInState"))
    from_account = a.id("fromAccountId", nullable=False)
    if_from_in_state = a.string("ifFromInState")
    if_in_state = a.string("ifInState")
    create = a.object("create", nullable=False) or {}
    destroy_original = a.boolean("onSuccessDestroyOriginal")
    destroy_if_in_state = a.string("destroyFromIfInState")
    assert from_account is not None
    if from_account == ctx.account_id:
        raise invalid_arguments("fromAccountId and accountId must differ; use Email/set within one account")
    check_count(ctx, len(create), ctx.config.limits.max_objects_in_set, "emails to copy")
    ctx.require_write(ctx.account_id)
    from_state = await changes.state(ctx.conn, from_account, "Email")
    if if_from_in_state is not None and if_from_in_state != from_state:
        raise MethodError("stateMismatch", f"the state of fromAccountId is {from_state}")
    old_state = await changes.state(ctx.conn, ctx.account_id, "Email")
    if if_in_state is not None and if_in_state != old_state:
        raise MethodError("stateMismatch", f"the state is {old_state}")
    wanted = [o["id"] for o in create.values() if isinstance(o, dict) and is_id(o.get("id"))]
    sources = await storage.email_rows(ctx.conn, from_account, wanted, parsed=False)
    raws = await asyncio.to_thread(_read_all, ctx.runtime.blobs, [r.blob_id for r in sources.values()])
    not_created: dict[str, Any] = {}
    pending: list[tuple[str, str, ImportItem]] = []
    for cid, spec in create.items():
        try:
            if not isinstance(spec, dict) or not is_id(spec.get("id")):
                raise _bad("each copy names the original's id", "id")
            unknown = sorted(set(spec) - _COPY_KEYS)
            if unknown:
                raise _bad(f"{unknown[0]} cannot be set by Email/copy", *unknown)
            source = sources.get(spec["id"])
            if source is None or source.blob_id not in raws:
                raise _Refused(SetError("notFound", f"no Email {spec['id']} in fromAccountId"))
            try:
                boxes = _id_set(ctx, spec.get("mailboxIds"), "mailboxIds")
                if not boxes:
                    raise ValueError("mailboxIds")
                words = _keyword_set(spec["keywords"]) if "keywords" in spec else list(source.keywords)
            except ValueError as exc:
                raise _bad(f"{exc} is not valid", str(exc)) from None
            received: float = source.received_at
            if "receivedAt" in spec:
                parsed_date = parse_utc_date(spec["receivedAt"])
                if parsed_date is None:
                    raise _bad("receivedAt must be a UTCDate", "receivedAt")
                received = parsed_date
        except _Refused as exc:
            not_created[cid] = exc.error.to_json()
            continue
        pending.append((cid, spec["id"], ImportItem(raws[source.blob_id], tuple(boxes), tuple(words), received)))
    results = await import_messages(ctx.conn, ctx.runtime, ctx.account_id,  # type: ignore[arg-type]
                                    [item for _, _, item in pending])
    created: dict[str, Any] = {}
    copied: list[str] = []
    for (cid, original, _), result in zip(pending, results):
        if isinstance(result, SetError):
            not_created[cid] = result.to_json()
            continue
        created[cid] = {"id": result.id, "blobId": result.blob_id, "threadId": result.thread_id,
                        "size": result.size}
        ctx.created_ids[cid] = result.id
        copied.append(original)
    response = {
        "fromAccountId": from_account,
        "accountId": ctx.account_id,
        "oldState": old_state,
        "newState": await changes.state(ctx.conn, ctx.account_id, "Email"),
        "created": created or None,
        "notCreated": not_created or None,
    }
    if destroy_original and copied:
        destroy_args: dict[str, Any] = {"accountId": from_account, "destroy": copied}
        if destroy_if_in_state is not None:
            destroy_args["ifInState"] = destroy_if_in_state
        await implicit_destroy(ctx, "Email", from_account, copied, destroy_if_in_state,
                               lambda sub: email_set(sub, destroy_args))
    return response
