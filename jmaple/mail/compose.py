"""Email/set create (RFC 8621 §4.6): an RFC 5322 message built from JMAP Email properties.

Also the readers of the Email values a client sends (Id and keyword sets, UTCDate) that Email/set,
Email/import and Email/copy share. Refusals are raised as SetFailure; the caller reports them.
"""

from __future__ import annotations

import base64
import datetime
import email.header
import email.utils
import quopri
from dataclasses import dataclass
from typing import Any

from jmaple.core.context import MethodContext
from jmaple.core.errors import SetFailure
from jmaple.core.methods import is_id
from jmaple.mail import mailbox as mailbox_module
from jmaple.mail.headers import CONVENIENCE as CONVENIENCE_FIELDS
from jmaple.mail.headers import parse_header_property
from jmaple.mail.ingest import ImportItem, keyword


def invalid(description: str, *properties: str) -> SetFailure:
    """invalidProperties naming the top-level properties of these paths ("bodyStructure.subParts[0]")."""
    names = tuple(dict.fromkeys(p.split(".")[0].split("[")[0] for p in properties))
    return SetFailure("invalidProperties", description, names)


def id_set(ctx: MethodContext, value: Any, name: str) -> list[str]:
    """An Id[Boolean] map whose values are all true, creation ids resolved; raises ValueError(name)."""
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


def placement(ctx: MethodContext, spec: dict[str, Any], keywords: Any = ()) -> tuple[list[str], list[str]]:
    """The mailboxIds (at least one, RFC 8621 §4.1.1) and keywords of a new Email (`keywords` when the
    spec has none); SetFailure invalidProperties naming the bad one."""
    try:
        boxes = id_set(ctx, spec.get("mailboxIds"), "mailboxIds")
        if not boxes:
            raise ValueError("mailboxIds")
        words = keyword_set(spec["keywords"]) if "keywords" in spec else list(keywords)
    except ValueError as exc:
        raise invalid(f"{exc} is not valid", str(exc)) from None
    return boxes, words


def keyword_set(value: Any) -> list[str]:
    """A keywords map (§4.1.1) whose values are all true, lower-cased; raises ValueError("keywords")."""
    if not isinstance(value, dict):
        raise ValueError("keywords")
    out = []
    for key, flag in value.items():
        word = keyword(key)
        if flag is not True or word is None:
            raise ValueError("keywords")
        out.append(word)
    return list(dict.fromkeys(out))


def parse_utc_date(value: Any) -> float | None:
    """Unix seconds of a UTCDate string, or None when it is not one."""
    if not isinstance(value, str) or not value.endswith("Z") or len(value) < 20:
        return None
    try:
        when = datetime.datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        return None
    return when.timestamp()


_SERVER_SET = frozenset({"id", "blobId", "threadId", "size", "hasAttachment", "preview"})
# What an Email/set create may give besides header:* properties (§4.6).
_SETTABLE = frozenset({"mailboxIds", "keywords", "receivedAt", *CONVENIENCE_FIELDS, "bodyStructure", "bodyValues",
                       "textBody", "htmlBody", "attachments"})
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
    """(name, value) lines from header:* (and, on the Email, convenience) properties; raises SetFailure."""
    fields: list[tuple[str, str]] = []
    seen: set[str] = set()
    for prop, value in obj.items():
        if prop.startswith("header:"):
            try:
                name, form, is_all = parse_header_property(prop)
            except ValueError as exc:
                raise invalid(f"{where}{prop}: {exc}", where + prop) from None
        elif convenience and prop in _CONVENIENCE_FIELDS:
            name, form = _CONVENIENCE_FIELDS[prop]
            is_all = False
        else:
            continue
        if name.lower() in seen:
            raise invalid(f"{where}{prop}: the {name} header field is given twice", where + prop)
        seen.add(name.lower())
        if value is None:
            continue
        try:
            values = value if is_all else [value]
            if not isinstance(values, list):
                raise ValueError("an :all value is a list")
            fields += [(name, _encode_form(v, form)) for v in values]
        except ValueError as exc:
            raise invalid(f"{where}{prop}: {exc}", where + prop) from None
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
                raise invalid(f"{where}: partId excludes blobId, charset and size", where)
            value = self.body_values.get(part["partId"]) if isinstance(part["partId"], str) else None
            if value is None:
                raise invalid(f"{where}: partId {part['partId']!r} is not in bodyValues", where)
            return value["value"].encode("utf-8"), True
        blob_id = part.get("blobId")
        if not isinstance(blob_id, str):
            raise invalid(f"{where}: a leaf part has partId or blobId", where)
        if "size" in part:
            raise invalid(f"{where}: size must be omitted with blobId", where)
        data = self.blobs.get(blob_id)
        if data is None:
            raise SetFailure("blobNotFound", f"no such blob {blob_id}", notFound=[blob_id])
        self.attachment_bytes += len(data)
        return data, False

    def part(self, part: Any, where: str, depth: int = 0) -> bytes:
        """One MIME entity (header and body, CRLF line ends) from an EmailBodyPart."""
        if depth > _MAX_NESTING:
            raise invalid(f"{where}: nested too deeply", where)
        if not isinstance(part, dict):
            raise invalid(f"{where}: an EmailBodyPart is an object", where)
        unknown = [k for k in part if k not in _PART_KEYS and not k.startswith("header:")]
        if unknown:
            raise invalid(f"{where}: {unknown[0]!r} cannot be set on an EmailBodyPart", where)
        for key in ("name", "charset", "disposition", "cid", "location", "type"):
            value = part.get(key)
            if value is not None and (not isinstance(value, str) or not value.isprintable()
                                      or (key != "name" and not value.isascii())):
                raise invalid(f"{where}.{key} is not valid", where)
        language = part.get("language")
        if language is not None and (not isinstance(language, list) or not all(
                isinstance(x, str) and x.isascii() and x.isprintable() for x in language)):
            raise invalid(f"{where}.language is not valid", where)
        extra = _header_fields(part, where + ".", convenience=False)
        if any(n.lower().startswith("content-") for n, _ in extra) and any(
                n.lower() == "content-transfer-encoding" for n, _ in extra):
            raise invalid(f"{where}: Content-Transfer-Encoding is chosen by the server", where)
        extra_names = {n.lower() for n, _ in extra}
        if depth == 0 and extra_names & self.top_names:
            # RFC 8621 §4.6: the root part may not repeat a header field the Email sets.
            raise invalid(f"{where}: a header field is also set on the Email", where)
        ctype = (part.get("type") or "").lower()
        lines: list[str] = []
        sub_parts = part.get("subParts")
        if sub_parts is not None:
            if not isinstance(sub_parts, list) or "partId" in part or "blobId" in part:
                raise invalid(f"{where}: subParts is a list, without partId or blobId", where)
            if not ctype.startswith("multipart/"):
                ctype = "multipart/mixed"
            boundary = "=_" + self.ctx.new_id()
            if "content-type" not in extra_names:
                lines.append(f"Content-Type: {ctype}; boundary=\"{boundary}\"")
            else:
                raise invalid(f"{where}: a multipart's Content-Type is the server's", where)
            body = b"".join(b"--" + boundary.encode() + b"\r\n" + self.part(sub, f"{where}.subParts[{n}]", depth + 1)
                            + b"\r\n" for n, sub in enumerate(sub_parts))
            body += b"--" + boundary.encode() + b"--\r\n"
        else:
            content, is_value = self.leaf_content(part, where)
            if not ctype:
                ctype = "text/plain" if is_value else "application/octet-stream"
            if ctype.startswith("multipart/"):
                raise invalid(f"{where}: a multipart needs subParts", where)
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
    """The bodyStructure that textBody, htmlBody and attachments describe (§4.6); raises SetFailure."""
    def single(key: str, ctype: str) -> dict[str, Any] | None:
        value = spec.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict) \
                or (value[0].get("type") or "text/plain" if key == "textBody" else value[0].get("type")) != ctype:
            raise invalid(f"{key} holds exactly one {ctype} part", key)
        return {**value[0], "type": ctype}

    text = single("textBody", "text/plain")
    html = single("htmlBody", "text/html")
    attachments = spec.get("attachments") or []
    if not isinstance(attachments, list):
        raise invalid("attachments is a list of EmailBodyPart", "attachments")
    body = {"type": "multipart/alternative", "subParts": [text, html]} if text and html else (text or html)
    if attachments:
        return {"type": "multipart/mixed", "subParts": ([body] if body else []) + attachments}
    return body


async def compose(ctx: MethodContext, spec: Any) -> ImportItem:
    """The message an Email/set create describes, ready for import_messages; raises SetFailure."""
    if not isinstance(spec, dict):
        raise invalid("an Email is an object")
    for prop in spec:
        if prop in _SERVER_SET:
            raise invalid(f"{prop} is set by the server", prop)
        if prop == "headers":
            raise invalid("headers cannot be set: give each header field as header:{name}", prop)
        if prop not in _SETTABLE and not prop.startswith("header:"):
            raise invalid(f"unknown property {prop!r}", prop)
    boxes, words = placement(ctx, spec)
    received = None
    if spec.get("receivedAt") is not None:
        received = parse_utc_date(spec["receivedAt"])
        if received is None:
            raise invalid("receivedAt must be a UTCDate", "receivedAt")
    top = _header_fields(spec, "", convenience=True)
    for prop in spec:
        if prop.startswith("header:") and prop[7:].split(":")[0].lower().startswith("content-"):
            raise invalid("Content-* header fields belong on body parts (RFC 8621 §4.6)", prop)
    values = spec.get("bodyValues") or {}
    if not isinstance(values, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("value"), str) and v.get("isEncodingProblem", False) is False
            and v.get("isTruncated", False) is False and set(v) <= {"value", "isEncodingProblem", "isTruncated"}
            for v in values.values()):
        raise invalid("bodyValues are {value} objects, neither truncated nor with an encoding problem", "bodyValues")
    if "bodyStructure" in spec and spec["bodyStructure"] is not None:
        if any(spec.get(k) is not None for k in ("textBody", "htmlBody", "attachments")):
            raise invalid("bodyStructure excludes textBody, htmlBody and attachments", "bodyStructure")
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
        raise SetFailure("blobNotFound", "attachments name unknown blobs", notFound=missing)
    blobs = {}
    for blob_id in readable:
        try:
            blobs[blob_id] = await ctx.runtime.blobs.read(blob_id)
        except FileNotFoundError:
            raise SetFailure("blobNotFound", "attachments name unknown blobs", notFound=[blob_id]) from None
    composer = _Composer(ctx, values, blobs, frozenset(n.lower() for n, _ in top))
    body = composer.part(structure, where)
    if composer.attachment_bytes > mailbox_module.settings(ctx.runtime).max_size_attachments_per_email:
        raise SetFailure("tooLarge", "the attachments are larger than maxSizeAttachmentsPerEmail")
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
