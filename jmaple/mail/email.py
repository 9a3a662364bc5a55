"""Email (RFC 8621 §4): the data type, /get, /changes, /set, /import, /parse and /copy.

Storing a message (parsing, blobs, threading) is in ingest.py; building one from properties for
Email/set create is in compose.py.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jmaple.core.capability import DataType, Property
from jmaple.core.context import MethodContext
from jmaple.core.errors import MethodError, SetError, SetFailure, invalid_arguments
from jmaple.core.methods import Args, check_count, implicit_destroy, is_id
from jmaple.mail import mailbox as mailbox_module
from jmaple.mail import mime, storage
from jmaple.mail.compose import compose, id_set, invalid, keyword_set, parse_utc_date, placement
from jmaple.mail.headers import convenience_properties, header_property, headers_json, parse_header_property
from jmaple.mail.ingest import (
    MAX_KEYWORDS, ImportItem, import_messages, keyword, part_contents, read_parsed, without_nul,
)
from jmaple.store import changes
from jmaple.store.blobs import blob_id_of
from jmaple.store.db import Transaction

log = logging.getLogger(__name__)


# --- Email/import (RFC 8621 §4.8) -----------------------------------------------------------------------------

def _max_attachments(ctx: MethodContext) -> int:
    """RFC 8621 §1.3.1 maxSizeAttachmentsPerEmail: enforced on every Email a client adds (set, import, copy);
    a larger one is the standard SetError tooLarge (RFC 8620 §5.3)."""
    return mailbox_module.settings(ctx.runtime).max_size_attachments_per_email


_IMPORT_KEYS = frozenset({"blobId", "mailboxIds", "keywords", "receivedAt"})


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
            boxes, words = placement(ctx, spec)
        except SetFailure as exc:
            not_created[cid] = exc.error.to_json()
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
                                    [item for _, item in pending], max_attachment_bytes=_max_attachments(ctx))
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
        # RFC 8621 §4.2: 0 (the default) means no truncation; only a negative value is invalid.
        max_bytes = a.int("maxBodyValueBytes", 0, minimum=0)
        if ids_argument == "ids":
            properties = ["id", *properties]   # RFC 8620 §5.1: id is always returned
        return cls(ids, tuple(dict.fromkeys(properties)),
                   None if body_properties is None else tuple(body_properties),
                   a.boolean("fetchTextBodyValues"), a.boolean("fetchHTMLBodyValues"),
                   a.boolean("fetchAllBodyValues"), max_bytes)


def utc_date(timestamp: float) -> str:
    """A UTCDate string (RFC 8620 §1.4) for Unix seconds."""
    return datetime.datetime.fromtimestamp(int(timestamp), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        if row.parsed is None:
            out[email_id] = _render(g, row, None, {}, raws.get(row.blob_id))
        else:
            parsed = read_parsed(row.parsed)
            out[email_id] = _render(g, row, parsed.message, parsed.part_blob_ids, raws.get(row.blob_id),
                                    parsed.convenience)
    return out


def _render(g: GetArgs, row: storage.EmailRow, message: mime.Message | None, part_blobs: dict[str, str],
            raw: bytes | None, convenience: dict[str, Any] | None = None) -> dict[str, Any]:
    """One Email object with the properties of `g` (`convenience`: all the convenience properties, if known)."""
    blob_id_for = _blob_id_for(part_blobs)
    headers = message.headers if message is not None else []
    obj: dict[str, Any] = {}
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


def _apply_patch(ctx: MethodContext, patch: dict[str, Any], state: storage.EmailState) -> tuple[set[str], set[str]]:
    """The new (mailbox ids, keywords) after an update's patch; raises _Refused."""
    boxes, words = set(state.mailbox_ids), set(state.keywords)
    whole = {k for k in patch if k in ("mailboxIds", "keywords")}
    for path, value in patch.items():
        if not isinstance(path, str):
            raise invalid("bad patch path")
        head, sep, rest = path.partition("/")
        if head not in ("mailboxIds", "keywords"):
            name = path if head in PROPERTIES or head.startswith("header:") else head
            raise invalid(f"{name} cannot be changed (only mailboxIds and keywords can)", name)
        if not sep:
            try:
                if head == "mailboxIds":
                    boxes = set(id_set(ctx, value, "mailboxIds"))
                else:
                    words = set(keyword_set(value))
            except ValueError:
                raise invalid(f"{head} is not valid", head) from None
            continue
        if head in whole:
            raise SetFailure("invalidPatch", f"{path} patches {head}, which is also replaced whole")
        if "/" in rest:
            raise SetFailure("invalidPatch", f"{path}: no such path")
        key = _unescape(rest)
        if value is not None and value is not True:
            raise invalid(f"{path} must be true or null", head)
        if head == "mailboxIds":
            resolved = ctx.resolve_id(key)
            if resolved is None or not is_id(resolved):
                raise invalid(f"{key!r} is not a mailbox id", head)
            (boxes.add if value else boxes.discard)(resolved)
        else:
            word = keyword(key)
            if word is None:
                raise invalid(f"{key!r} is not a valid keyword", head)
            (words.add if value else words.discard)(word)
    return boxes, words


def _changes_keyword_case(patch: dict[str, Any]) -> bool:
    """Whether a (valid) patch names a keyword in other than lower case."""
    for path, value in patch.items():
        if path == "keywords":
            if any(k != k.lower() for k in value):
                return True
        elif path.startswith("keywords/"):
            key = _unescape(path[len("keywords/"):])
            if key != key.lower():
                return True
    return False


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
                raise SetFailure("invalidPatch", "a PatchObject must be an object")
            boxes, words = _apply_patch(ctx, patch, state)
            if not boxes:
                raise invalid("an Email must be in at least one mailbox", "mailboxIds")
            if settings.max_mailboxes_per_email is not None and len(boxes) > settings.max_mailboxes_per_email:
                raise SetFailure("tooManyMailboxes", f"at most {settings.max_mailboxes_per_email}")
            if len(words) > MAX_KEYWORDS:
                raise SetFailure("tooManyKeywords", f"at most {MAX_KEYWORDS}")
            if boxes != state.mailbox_ids:
                missing = boxes - await storage.existing_mailbox_ids(ctx.conn, ctx.account_id, boxes)
                if missing:
                    raise invalid("no such mailbox: " + ", ".join(sorted(missing)), "mailboxIds")
        except SetFailure as exc:
            not_updated[key] = exc.error.to_json()
            continue
        new_boxes[email_id] = boxes
        new_words[email_id] = words
        # RFC 8620 §5.3: a value the server changed beyond the patch is returned. Keywords are stored
        # lower-case (§4.1.1), so one sent in another case comes back with the whole keywords set.
        updated[email_id] = {"keywords": dict.fromkeys(sorted(words), True)} \
            if _changes_keyword_case(patch) else None
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
            item = await compose(ctx, spec)
        except SetFailure as exc:
            not_created[cid] = exc.error.to_json()
            continue
        result = (await import_messages(ctx.conn, ctx.runtime, ctx.account_id, [item],  # type: ignore[arg-type]
                                        max_attachment_bytes=_max_attachments(ctx)))[0]
        if isinstance(result, SetError):
            not_created[cid] = result.to_json()
            continue
        created[cid] = {"id": result.id, "blobId": result.blob_id, "threadId": result.thread_id,
                        "size": result.size}
        ctx.created_ids[cid] = result.id
    return created, not_created


# --- Email/parse (RFC 8621 §4.9) ------------------------------------------------------------------------------

_NOT_STORED = ("id", "threadId", "mailboxIds", "keywords", "receivedAt")


async def _make_readable(ctx: MethodContext, contents: dict[str, bytes]) -> None:
    """Let the caller download these blobs (blobId -> content): those they cannot read yet become their
    uploads in the account, with an upload's lifetime and quota (RFC 8620 §6.1), as if they had uploaded
    them. Nothing else is stored. Called from a read-only method: opens its own write transaction."""
    blobs = ctx.runtime.blobs
    readable = await blobs.readable(ctx.conn, ctx.account_id, contents, user_id=ctx.principal.user_id)
    missing = {blob_id: data for blob_id, data in contents.items() if blob_id not in readable}
    if not missing:
        return
    await asyncio.gather(*(blobs.write(data) for data in missing.values()))
    if isinstance(ctx.conn, Transaction):
        await _grant(ctx, ctx.conn, missing)
    else:
        async with ctx.runtime.db.write() as tx:
            await _grant(ctx, tx, missing)


async def _grant(ctx: MethodContext, tx: Transaction, missing: dict[str, bytes]) -> None:
    for blob_id, data in missing.items():
        await ctx.runtime.blobs.register(tx, blob_id, data)
    _, refused = await ctx.runtime.blobs.grant_upload(tx, ctx.account_id, ctx.principal.user_id, list(missing))
    if refused:
        log.warning("Email/parse (call %s): %d part blobs do not fit in the upload quota of %s and cannot be "
                    "downloaded", ctx.call_id, len(refused), ctx.principal.login)


async def email_parse(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Email/parse (RFC 8621 §4.9): Email objects from blobs holding messages, without storing any Email.

    The message is parsed as Email/import would store it (NUL octets dropped: then blobId and size are
    those of the message without them). Every blobId returned can be downloaded: the message and its
    parts become the caller's uploads when they cannot read them already.
    """
    g = GetArgs.parse(ctx, args, ids_argument="blobIds")
    blob_ids = list(dict.fromkeys(ctx.resolve_id(b) or b for b in g.ids or []))
    check_count(ctx, len(blob_ids), ctx.config.limits.max_objects_in_get, "blobIds")
    readable = await ctx.runtime.blobs.readable(ctx.conn, ctx.account_id, blob_ids, user_id=ctx.principal.user_id)
    raws = await asyncio.to_thread(_read_all, ctx.runtime.blobs, [b for b in blob_ids if b in readable])
    parsed: dict[str, Any] = {}
    not_parsable: list[str] = []
    contents: dict[str, bytes] = {}
    shows_blob_ids = _shows_blob_ids(g)
    for blob_id in blob_ids:
        raw = raws.get(blob_id)
        if raw is None:
            continue
        # Parsed, rendered and identified as the same octets: offsets into the message (bodyValues), its
        # size and its blobId all refer to the message as it would be stored.
        raw = without_nul(raw)
        try:
            message = mime.parse(raw)
        except mime.NotParsable:
            not_parsable.append(blob_id)
            continue
        own_id = blob_id if raw is raws[blob_id] else blob_id_of(raw)
        part_blobs: dict[str, str] = {}
        if shows_blob_ids:   # else no blob id is shown: nothing to hash or keep
            if own_id != blob_id:
                contents[own_id] = raw
            for part_id, data in part_contents(raw, message).items():
                part_blobs[part_id] = blob_id_of(data)
                contents[part_blobs[part_id]] = data
        row = storage.EmailRow("", own_id, "", message.size, 0, message.has_attachment, message.preview, (), (),
                               None)
        obj = _render(g, row, message, part_blobs, raw)
        for prop in _NOT_STORED:
            if prop in obj:
                obj[prop] = None
        parsed[blob_id] = obj
    if contents:
        await _make_readable(ctx, contents)
    return {"accountId": ctx.account_id, "parsed": parsed or None, "notParsable": not_parsable or None,
            "notFound": [b for b in blob_ids if b not in raws] or None}


def _shows_blob_ids(g: GetArgs) -> bool:
    """Whether the response can hold a blobId (of the message or of a part)."""
    if "blobId" in g.properties:
        return True
    parts = ("bodyStructure", "textBody", "htmlBody", "attachments")
    return any(p in g.properties for p in parts) and (g.body_properties is None or "blobId" in g.body_properties)


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
                raise invalid("each copy names the original's id", "id")
            unknown = sorted(set(spec) - _COPY_KEYS)
            if unknown:
                raise invalid(f"{unknown[0]} cannot be set by Email/copy", *unknown)
            source = sources.get(spec["id"])
            if source is None or source.blob_id not in raws:
                raise SetFailure("notFound", f"no Email {spec['id']} in fromAccountId")
            boxes, words = placement(ctx, spec, source.keywords)
            received: float = source.received_at
            if "receivedAt" in spec:
                parsed_date = parse_utc_date(spec["receivedAt"])
                if parsed_date is None:
                    raise invalid("receivedAt must be a UTCDate", "receivedAt")
                received = parsed_date
        except SetFailure as exc:
            not_created[cid] = exc.error.to_json()
            continue
        pending.append((cid, spec["id"], ImportItem(raws[source.blob_id], tuple(boxes), tuple(words), received)))
    results = await import_messages(ctx.conn, ctx.runtime, ctx.account_id,  # type: ignore[arg-type]
                                    [item for _, _, item in pending], max_attachment_bytes=_max_attachments(ctx))
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
