"""MIME structure of a message and its body parts (RFC 8621 §4.1.4, §4.2; RFC 2045, 2046, 2231).

`parse` walks the raw octets once, recording for every part its headers, MIME fields and the offsets of
its body in the raw message, so that a part can be served later by decoding raw[start:end] with its
transfer encoding, without parsing again. It accepts anything with a header section and never raises
otherwise.
"""

from __future__ import annotations

import binascii
import html
import re
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from jmaple.mail.headers import (
    b64decode, decode_charset, decode_words, header_property, headers_json, parse_header_property, unfold,
)

MAX_DEPTH = 50          # multiparts nested deeper than this are kept as one opaque leaf
MAX_PARTS = 10_000      # past this many parts, the rest of a multipart stays in its last part
PREVIEW_LENGTH = 256    # RFC 8621 §4.1.4
_PREVIEW_PLAIN_BYTES = 16_384
_PREVIEW_HTML_BYTES = 65_536

DEFAULT_BODY_PROPERTIES = ("partId", "blobId", "size", "name", "type", "charset", "disposition", "cid",
                           "language", "location")
BODY_PROPERTIES = frozenset(DEFAULT_BODY_PROPERTIES + ("headers", "subParts"))


class NotParsable(ValueError):
    """The octets have no header field at all, so they are not a message (RFC 8621 §4.9 notParsable)."""


@dataclass(slots=True, eq=False)
class Part:
    """One MIME entity. `start`/`end` delimit its (still transfer-encoded) body in the raw message."""

    part_id: str | None                     # RFC 8621 partId: "1", "2.1", ...; None for multipart/*
    headers: list[tuple[str, str]]          # (name, Raw form value) in message order
    type: str                               # lower-case "type/subtype", parameters stripped
    params: dict[str, str]                  # Content-Type parameters, RFC 2231 decoded, names lower-case
    charset: str | None                     # RFC 8621 §4.1.4 charset (implicit "us-ascii" where due)
    disposition: str | None
    name: str | None
    cid: str | None
    language: list[str] | None
    location: str | None
    cte: str | None                         # lower-case Content-Transfer-Encoding, None when absent
    header_start: int
    start: int
    end: int
    size: int                               # octets after transfer decoding; 0 for multipart/*
    sub_parts: list[Part] | None = None

    @property
    def is_multipart(self) -> bool:
        return self.sub_parts is not None

    def walk(self) -> Iterator[Part]:
        """This part and every part under it, depth first."""
        yield self
        for sub in self.sub_parts or ():
            yield from sub.walk()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for storing the structure beside the message (see `Part.from_dict`)."""
        return {
            "partId": self.part_id, "headers": [list(h) for h in self.headers], "type": self.type,
            "params": self.params, "charset": self.charset, "disposition": self.disposition,
            "name": self.name, "cid": self.cid, "language": self.language, "location": self.location,
            "cte": self.cte, "headerStart": self.header_start, "start": self.start, "end": self.end,
            "size": self.size,
            "subParts": None if self.sub_parts is None else [p.to_dict() for p in self.sub_parts],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Part:
        subs = d["subParts"]
        return cls(
            d["partId"], [(n, v) for n, v in d["headers"]], d["type"], d["params"], d["charset"],
            d["disposition"], d["name"], d["cid"], d["language"], d["location"], d["cte"],
            d["headerStart"], d["start"], d["end"], d["size"],
            None if subs is None else [cls.from_dict(s) for s in subs],
        )


@dataclass(slots=True, eq=False)
class Message:
    """A parsed message: its header fields, body structure, the §4.1.4 lists, hasAttachment and preview."""

    size: int
    root: Part                              # bodyStructure; its headers are the message's header fields
    text_body: list[Part] = field(default_factory=list)
    html_body: list[Part] = field(default_factory=list)
    attachments: list[Part] = field(default_factory=list)
    has_attachment: bool = False
    preview: str = ""

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.root.headers

    def parts(self) -> Iterator[Part]:
        """Every part, depth first, multiparts included."""
        return self.root.walk()

    def leaves(self) -> Iterator[Part]:
        """Every leaf part (those with a partId, each stored as a blob), depth first."""
        return (p for p in self.root.walk() if p.sub_parts is None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form from which `Message.from_dict` rebuilds this object without the raw octets."""
        return {"size": self.size, "root": self.root.to_dict(), "hasAttachment": self.has_attachment,
                "preview": self.preview}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        root = Part.from_dict(d["root"])
        text_body, html_body, attachments, _ = split_body(root)
        return cls(d["size"], root, text_body, html_body, attachments, d["hasAttachment"], d["preview"])


# -- header sections -----------------------------------------------------------------------------------------

# RFC 5322 §2.2 field name (NUL tolerated, dropped afterwards), optional WSP before the colon (§4.5),
# and the value with its folded continuation lines.
_FIELD = re.compile(rb"([\x00\x21-\x39\x3b-\x7e]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")


def read_headers(raw: bytes, pos: int, end: int) -> tuple[list[tuple[str, str]], int]:
    """Header fields from raw[pos:end] and the offset where the body starts.

    The section ends at an empty line (which is consumed) or at the first line that is not a header
    field (which starts the body). Values are in Raw form: invalid UTF-8 becomes U+FFFD, NUL is dropped.
    """
    fields: list[tuple[str, str]] = []
    match = _FIELD.match
    while pos < end:
        c = raw[pos]
        if c == 0x0A:
            return fields, pos + 1
        if c == 0x0D and raw.startswith(b"\r\n", pos, end):
            return fields, pos + 2
        m = match(raw, pos, end)
        if m is None:
            return fields, pos
        pos = m.end()
        name, value = m.group(1), m.group(2)
        if value.endswith(b"\r"):
            value = value[:-1]
        if b"\0" in name:
            name = name.replace(b"\0", b"")
            if not name:
                continue
        if b"\0" in value:
            value = value.replace(b"\0", b"")
        fields.append((name.decode("ascii"), value.decode("utf-8", "replace")))
    return fields, end


# -- MIME header fields --------------------------------------------------------------------------------------

_TYPE = re.compile(r"\s*([^\s/;()<>@,:\"\[\]?=]+)\s*/\s*([^\s/;()<>@,:\"\[\]?=]+)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+")
_PAREN_COMMENT = re.compile(r"\([^()]*\)")
_SPACED_COMMENT = re.compile(r"\s+\([^()]*\)")
_PARAM = re.compile(r"""[\s;]*([^\s=;"]+)\s*(?:=\s*(?:"((?:[^"\\]|\\[\s\S])*)"?|([^;]*)))?""")
_QUOTED_PAIR = re.compile(r"\\([\s\S])")
_EXTENDED = re.compile(r"([^*]+)\*(\d{1,4})?(\*)?")


def parse_params(s: str) -> dict[str, str]:
    """MIME parameters (RFC 2045 §5.1) with RFC 2231 continuations and charsets; names lower-case.

    Tolerant: unquoted values with spaces run to the next ";", an unterminated quote runs to the end,
    an RFC 2231 value in an unknown charset is read as UTF-8, and the extended form wins over the plain one.
    """
    plain: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[str, bool]]] = {}
    pos, n = 0, len(s)
    while pos < n:
        m = _PARAM.match(s, pos)
        if m is None:
            nxt = s.find(";", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        pos = m.end()
        name = m.group(1).lower()
        quoted, bare = m.group(2), m.group(3)
        if quoted is not None:
            value = _QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted
        elif bare is not None:
            value = bare.strip()
            if "(" in value:
                value = _SPACED_COMMENT.sub("", value).strip()
        else:
            continue
        if "*" in name:
            x = _EXTENDED.fullmatch(name)
            if x is not None:
                base, num, star = x.groups()
                is_encoded = num is None or star is not None
                extended.setdefault(base, {}).setdefault(int(num or 0), (value, is_encoded))
                continue
        plain.setdefault(name, value)
    for base, segments in extended.items():
        charset = None
        chunks: list[bytes] = []
        for i, (num, (value, is_encoded)) in enumerate(sorted(segments.items())):
            if is_encoded:
                if i == 0 and value.count("'") >= 2:
                    charset, _lang, value = value.split("'", 2)
                chunks.append(urllib.parse.unquote_to_bytes(value))
            else:
                chunks.append(value.encode("utf-8"))
        plain[base] = decode_charset(b"".join(chunks), charset or "utf-8")[0]
    return plain


def _parse_content_type(value: str) -> tuple[str | None, dict[str, str]]:
    v = unfold(value)
    head, _, rest = v.partition(";")
    if "(" in head:
        head = _PAREN_COMMENT.sub(" ", head)
    m = _TYPE.match(head)
    if m is None:
        return None, parse_params(rest)
    leftover = head[m.end():].strip()
    if leftover:  # "text/html charset=utf-8": a missing ";"
        rest = leftover + ";" + rest
    return f"{m.group(1)}/{m.group(2)}".lower(), parse_params(rest)


def _parse_disposition(value: str) -> tuple[str | None, dict[str, str]]:
    v = unfold(value)
    head, _, rest = v.partition(";")
    if "(" in head:
        head = _PAREN_COMMENT.sub(" ", head)
    head = head.strip()
    m = _TOKEN.match(head)
    if m is None or head[m.end():m.end() + 1] not in ("", " ", "\t"):
        # "filename=x.pdf" with no disposition type, or garbage
        return None, parse_params(v if "=" in head else rest)
    leftover = head[m.end():].strip()
    if leftover:  # "attachment filename=x": a missing ";"
        rest = leftover + ";" + rest
    return m.group().lower(), parse_params(rest)


def _strip_cfws(value: str) -> str:
    v = unfold(value)
    if "(" in v:
        v = _PAREN_COMMENT.sub("", v)
    return "".join(v.split())


def _content_id(value: str) -> str | None:
    v = _strip_cfws(value)
    if v.startswith("<"):
        v = v[1:].split(">", 1)[0]
    return v or None


def _languages(value: str) -> list[str] | None:
    v = unfold(value)
    if "(" in v:
        v = _PAREN_COMMENT.sub("", v)
    tags = [t.strip() for t in v.split(",")]
    return [t for t in tags if t] or None


def _filename(value: str) -> str | None:
    if "=?" in value:
        value = decode_words(value, strict=False)
    value = value.strip()
    return value or None


_MIME_FIELDS = frozenset({"content-type", "content-disposition", "content-transfer-encoding", "content-id",
                          "content-language", "content-location"})


# -- the walk ------------------------------------------------------------------------------------------------

class _Walk:
    __slots__ = ("raw", "count")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.count = 0


def parse(raw: bytes) -> Message:
    """Parse a message (RFC 5322 + MIME); raises NotParsable only when there is no header field at all."""
    raw = bytes(raw)
    pos = 0
    if raw.startswith(b"From "):  # an mbox separator line left in front of the message
        nl = raw.find(b"\n")
        pos = len(raw) if nl < 0 else nl + 1
    headers, body_start = read_headers(raw, pos, len(raw))
    if not headers:
        raise NotParsable("no header fields")
    walk = _Walk(raw)
    root = _build(walk, headers, pos, body_start, len(raw), "", 0, "text/plain")
    text_body, html_body, attachments, embedded = split_body(root)
    message = Message(len(raw), root, text_body, html_body, attachments)
    message.has_attachment = any(p.disposition != "inline" and id(p) not in embedded for p in attachments)
    message.preview = make_preview(raw, text_body)
    return message


def _build(walk: _Walk, headers: list[tuple[str, str]], header_start: int, start: int, end: int,
           section: str, depth: int, default_type: str) -> Part:
    fields: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in _MIME_FIELDS and lname not in fields:  # the first instance counts, as in most readers
            fields[lname] = value
    walk.count += 1
    ct_value = fields.get("content-type")
    if ct_value is None:
        ctype, params = default_type, {}
    else:
        ctype, params = _parse_content_type(ct_value)
        if ctype is None:  # RFC 2045 §5.2: an unreadable Content-Type means text/plain
            ctype = "text/plain"
    disposition, dparams = (None, {}) if "content-disposition" not in fields \
        else _parse_disposition(fields["content-disposition"])
    cte = fields.get("content-transfer-encoding")
    if cte is not None:
        cte = _strip_cfws(cte).lower() or None

    sub_parts: list[Part] | None = None
    if ctype.startswith("multipart/"):
        boundary = params.get("boundary", "")
        bounds = None
        if depth >= MAX_DEPTH:
            ctype = "application/octet-stream"
        elif boundary:
            bounds = _split(walk, start, end, boundary.encode("utf-8", "replace"))
            if bounds is None:  # not one delimiter line: the body is shown as text
                ctype = "text/plain"
        else:
            ctype = "text/plain"
        if bounds is not None:
            child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            sub_parts = []
            for i, (ps, pe) in enumerate(bounds, 1):
                child_headers, child_start = read_headers(walk.raw, ps, pe)
                sub_parts.append(_build(walk, child_headers, ps, child_start, pe,
                                        f"{section}.{i}" if section else str(i), depth + 1, child_default))

    # RFC 8621 §4.1.4: the parameter if given, else the implicit us-ascii of text (which includes a part
    # without Content-Type, except a digest's message/rfc822 parts)
    charset: str | None = params.get("charset", "").strip() or None
    if charset is None and ctype.startswith("text/"):
        charset = "us-ascii"
    name = _filename(dparams["filename"]) if "filename" in dparams else None
    if name is None and "name" in params:
        name = _filename(params["name"])
    part = Part(
        part_id=None if sub_parts is not None else (section or "1"),
        headers=headers, type=ctype, params=params, charset=charset, disposition=disposition, name=name,
        cid=_content_id(fields["content-id"]) if "content-id" in fields else None,
        language=_languages(fields["content-language"]) if "content-language" in fields else None,
        location=(_strip_cfws(fields["content-location"]) or None) if "content-location" in fields else None,
        cte=cte, header_start=header_start, start=start, end=end, size=0, sub_parts=sub_parts,
    )
    if sub_parts is None:
        part.size = len(_decode(walk.raw, part)[0])
    return part


def _split(walk: _Walk, start: int, end: int, boundary: bytes) -> list[tuple[int, int]] | None:
    """Body ranges of a multipart's children (RFC 2046 §5.1.1), or None if no delimiter line is found.

    The line break before a delimiter belongs to it; the preamble and epilogue are skipped; a missing
    close delimiter ends the last part at the end of the body.
    """
    raw = walk.raw
    delim = b"--" + boundary
    dlen = len(delim)
    bounds: list[tuple[int, int]] = []
    current: int | None = None
    found = False
    pos = start
    while True:
        i = raw.find(delim, pos, end)
        if i < 0:
            break
        pos = i + 1
        if i != start and raw[i - 1] != 0x0A:
            continue
        j = i + dlen
        is_close = raw.startswith(b"--", j, end)
        if is_close:
            j += 2
        while j < end and raw[j] in (0x20, 0x09):  # transport padding
            j += 1
        if j < end:
            if raw[j] == 0x0A:
                j += 1
            elif raw[j] == 0x0D and j + 1 < end and raw[j + 1] == 0x0A:
                j += 2
            else:
                continue  # "--boundary-and-more": some other line
        found = True
        if current is not None:
            pe = i
            if pe > current and raw[pe - 1] == 0x0A:
                pe -= 1
                if pe > current and raw[pe - 1] == 0x0D:
                    pe -= 1
            bounds.append((current, pe))
            if walk.count + len(bounds) >= MAX_PARTS:
                current = None
                bounds[-1] = (bounds[-1][0], end)
                break
        if is_close:
            current = None
            break
        current = j
        pos = j
    if not found:
        return None
    if current is not None:
        bounds.append((current, end))
    return bounds


# -- §4.1.4 textBody, htmlBody, attachments ------------------------------------------------------------------

def _is_inline_media(ctype: str) -> bool:
    return ctype.startswith(("image/", "audio/", "video/"))


def split_body(root: Part) -> tuple[list[Part], list[Part], list[Part], set[int]]:
    """textBody, htmlBody and attachments by the algorithm of RFC 8621 §4.1.4, and the ids (`id(part)`)
    of attachments that are embedded in a multipart/related body by Content-ID."""
    text_body: list[Part] = []
    html_body: list[Part] = []
    attachments: list[Part] = []
    embedded: set[int] = set()
    _parse_structure([root], "mixed", False, html_body, text_body, attachments, embedded)
    return text_body, html_body, attachments, embedded


def _parse_structure(parts: Sequence[Part], multipart_type: str, in_alternative: bool,
                     html_body: list[Part] | None, text_body: list[Part] | None, attachments: list[Part],
                     embedded: set[int]) -> None:
    # A transcription of the RFC's JavaScript: assigning None to html_body/text_body affects only the
    # rest of this call, exactly like the reassignment of the local variables there.
    text_length = len(text_body) if text_body is not None else -1
    html_length = len(html_body) if html_body is not None else -1
    for i, part in enumerate(parts):
        is_multipart = part.sub_parts is not None
        is_inline = (part.disposition != "attachment"
                     and (part.type in ("text/plain", "text/html") or _is_inline_media(part.type))
                     and (i == 0 or (multipart_type != "related"
                                     and (_is_inline_media(part.type) or not part.name))))
        if is_multipart:
            sub_type = part.type.split("/", 1)[1]
            _parse_structure(part.sub_parts or [], sub_type, in_alternative or sub_type == "alternative",
                             html_body, text_body, attachments, embedded)
        elif is_inline:
            if multipart_type == "alternative":
                # The JavaScript would push onto null here when an enclosing part already dropped that
                # list (an alternative inside a mixed inside an alternative); the part is then an
                # attachment, as the definition of "attachments" in §4.1.4 has it.
                if part.type == "text/plain" and text_body is not None:
                    text_body.append(part)
                elif part.type == "text/html" and html_body is not None:
                    html_body.append(part)
                else:
                    attachments.append(part)
                continue
            elif in_alternative:
                if part.type == "text/plain":
                    html_body = None
                if part.type == "text/html":
                    text_body = None
            if text_body is not None:
                text_body.append(part)
            if html_body is not None:
                html_body.append(part)
            if (text_body is None or html_body is None) and _is_inline_media(part.type) \
                    or (text_body is None and html_body is None):
                # The second case is a gap in the JavaScript: a text part after both lists were dropped
                # would be in no list at all; §4.1.4 defines that as an attachment.
                attachments.append(part)
        else:
            attachments.append(part)
            # RFC 8621 §4.1.4 lets hasAttachment ignore images the HTML embeds by cid.
            if multipart_type == "related" and i > 0 and part.cid and part.disposition != "attachment":
                embedded.add(id(part))
    if multipart_type == "alternative" and text_body is not None and html_body is not None:
        if text_length == len(text_body) and html_length != len(html_body):
            text_body.extend(html_body[html_length:])
        if html_length == len(html_body) and text_length != len(text_body):
            html_body.extend(text_body[text_length:])


# -- body octets and text ------------------------------------------------------------------------------------

_QP_PADDING = re.compile(rb"[ \t]+(?=\r?\n)")
_IDENTITY_CTE = frozenset({"7bit", "8bit", "binary"})


def _decode_octets(data: bytes, cte: str | None) -> tuple[bytes, bool]:
    if cte is None or cte in _IDENTITY_CTE:
        return data, False
    if cte == "base64":
        return b64decode(data)
    if cte == "quoted-printable":
        # RFC 2045 §6.7: trailing white space on a line is transport padding.
        if b" \n" in data or b" \r\n" in data or b"\t\n" in data or b"\t\r\n" in data:
            data = _QP_PADDING.sub(b"", data)
        return binascii.a2b_qp(data.rstrip(b" \t")), False
    # RFC 8621 §4.1.4: an unknown transfer encoding is treated as none (and flagged in bodyValues)
    return data, True


def _decode(raw: bytes, part: Part) -> tuple[bytes, bool]:
    data = raw[part.start:part.end]
    if part.sub_parts is not None:
        return data, False
    return _decode_octets(data, part.cte)


def decode_body(raw: bytes, part: Part) -> bytes:
    """The part's octets after transfer decoding: the content of its blob (RFC 8621 §4.1.4 blobId)."""
    return _decode(raw, part)[0]


def body_text(raw: bytes, part: Part) -> tuple[str, bool]:
    """The part's text with CRLF as LF, and isEncodingProblem (unknown charset or transfer encoding,
    malformed octets shown as U+FFFD)."""
    data, cte_problem = _decode(raw, part)
    text, charset_problem = decode_charset(data, part.charset)
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return text, cte_problem or charset_problem


# -- preview -------------------------------------------------------------------------------------------------

_BLOCK_TAGS = frozenset({"p", "br", "div", "tr", "td", "th", "li", "ul", "ol", "table", "h1", "h2", "h3",
                         "h4", "h5", "h6", "blockquote", "pre", "hr", "section", "article", "header",
                         "footer", "body", "title", "dd", "dt", "center"})
_SKIP_TAGS = frozenset({"style", "script", "head", "title", "template", "noscript"})
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)")
_CLOSERS: dict[str, re.Pattern[str]] = {t: re.compile(rf"</{t}\s*>", re.I) for t in _SKIP_TAGS}
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\xad\u034f\u200b-\u200f\u2060\ufeff]+")


def html_to_text(source: str, enough: int = 0) -> str:
    """Plain text from HTML for previews: tags, comments, style and script dropped, entities decoded.

    With `enough`, stop once that many visible characters are collected.
    """
    out: list[str] = []
    pos, n = 0, len(source)
    collected, check_at = 0, 4 * enough
    while pos < n:
        if enough and collected > check_at:
            if len(_squash(html.unescape("".join(out)))) >= enough:
                break
            check_at *= 2
        lt = source.find("<", pos)
        if lt < 0:
            out.append(source[pos:])
            break
        out.append(source[pos:lt])
        collected += lt - pos
        if source.startswith("<!--", lt):
            close = source.find("-->", lt + 4)
            pos = n if close < 0 else close + 3
            continue
        m = _TAG_NAME.match(source, lt)
        if m is None and not source.startswith(("<!", "<?"), lt):
            out.append("<")  # a lone "<" in text
            pos = lt + 1
            continue
        gt = source.find(">", lt + 1)
        if gt < 0:
            break
        pos = gt + 1
        if m is None:
            continue
        tag = m.group(1).lower()
        if tag in _SKIP_TAGS and source[lt + 1] != "/":
            closer = _CLOSERS[tag].search(source, pos)
            pos = n if closer is None else closer.end()
            out.append(" ")
        elif tag in _BLOCK_TAGS:
            out.append(" ")
    return html.unescape("".join(out))


def _squash(text: str) -> str:
    """White space collapsed to single spaces, invisible and control characters dropped."""
    return " ".join(_INVISIBLE.sub("", text).split())


def _squash_prefix(text: str, enough: int) -> str:
    """Like _squash, but only as much of a long text as gives `enough` characters."""
    size = 4 * enough
    while True:
        if size >= len(text):
            return _squash(text)
        out = _squash(text[:size])
        if " " in out:
            out = out.rsplit(" ", 1)[0]  # the last word may be cut
        if len(out) >= enough:
            return out
        size *= 4


def _plain_preview(text: str) -> str:
    # Quoted lines of a reply make a poor preview; fall back to them only if nothing else is there.
    if ">" in text:
        kept = "\n".join(line for line in text.split("\n") if not line.lstrip().startswith(">"))
        unquoted = _squash_prefix(kept, PREVIEW_LENGTH)
        if unquoted:
            return unquoted
    return _squash_prefix(text, PREVIEW_LENGTH)


def make_preview(raw: bytes, text_body: Sequence[Part]) -> str:
    """At most 256 characters of plain text from the first text parts of textBody (RFC 8621 §4.1.4)."""
    pieces: list[str] = []
    length = 0
    for part in text_body:
        if part.type not in ("text/plain", "text/html"):
            continue
        limit = _PREVIEW_PLAIN_BYTES if part.type == "text/plain" else _PREVIEW_HTML_BYTES
        data, _ = _decode_octets(raw[part.start:min(part.end, part.start + limit)], part.cte)
        text, _ = decode_charset(data, part.charset)
        if part.end - part.start > limit:
            text = text.rstrip("\ufffd")  # a character cut at the limit
        if part.type == "text/plain":
            text = _plain_preview(text)
        else:
            text = _squash_prefix(html_to_text(text, PREVIEW_LENGTH), PREVIEW_LENGTH)
        if text:
            pieces.append(text)
            length += len(text) + 1
            if length > PREVIEW_LENGTH:
                break
    preview = " ".join(pieces)
    if len(preview) > PREVIEW_LENGTH:
        preview = preview[:PREVIEW_LENGTH].rstrip()
    return preview


# -- EmailBodyPart and bodyValues ----------------------------------------------------------------------------

def check_body_properties(properties: Sequence[str]) -> None:
    """Raise ValueError naming the first bodyProperties entry that is not an EmailBodyPart property."""
    for prop in properties:
        if prop.startswith("header:"):
            parse_header_property(prop)
        elif prop not in BODY_PROPERTIES:
            raise ValueError(f"unknown body property {prop!r}")


def body_part(part: Part, properties: Sequence[str], blob_id_for: Callable[[Part], str]) -> dict[str, Any]:
    """One EmailBodyPart object (RFC 8621 §4.1.4) with the given properties (validate them first)."""
    out: dict[str, Any] = {}
    for prop in properties:
        if prop == "partId":
            out[prop] = part.part_id
        elif prop == "blobId":
            out[prop] = None if part.sub_parts is not None else blob_id_for(part)
        elif prop == "size":
            out[prop] = part.size
        elif prop == "headers":
            out[prop] = headers_json(part.headers)
        elif prop == "name":
            out[prop] = part.name
        elif prop == "type":
            out[prop] = part.type
        elif prop == "charset":
            out[prop] = part.charset
        elif prop == "disposition":
            out[prop] = part.disposition
        elif prop == "cid":
            out[prop] = part.cid
        elif prop == "language":
            out[prop] = part.language
        elif prop == "location":
            out[prop] = part.location
        elif prop == "subParts":
            out[prop] = None if part.sub_parts is None \
                else [body_part(p, properties, blob_id_for) for p in part.sub_parts]
        elif prop.startswith("header:"):
            out[prop] = header_property(part.headers, prop)
    return out


def body_structure(message: Message, properties: Sequence[str] | None,
                   blob_id_for: Callable[[Part], str]) -> dict[str, Any]:
    """The bodyStructure property. With the default bodyProperties (None) subParts is included too,
    since a structure without its children says nothing."""
    props = (*DEFAULT_BODY_PROPERTIES, "subParts") if properties is None else tuple(properties)
    return body_part(message.root, props, blob_id_for)


def body_parts(parts: Sequence[Part], properties: Sequence[str] | None,
               blob_id_for: Callable[[Part], str]) -> list[dict[str, Any]]:
    """textBody, htmlBody or attachments as EmailBodyPart objects (default bodyProperties if None)."""
    props = DEFAULT_BODY_PROPERTIES if properties is None else tuple(properties)
    return [body_part(p, props, blob_id_for) for p in parts]


def truncate_utf8(text: str, max_bytes: int, is_html: bool = False) -> tuple[str, bool]:
    """Cut text to at most max_bytes of UTF-8 on a character boundary, and for HTML not inside a tag;
    returns (text, is_truncated). max_bytes 0 means no limit."""
    if max_bytes <= 0 or len(text) * 4 <= max_bytes:
        return text, False
    if len(text) <= max_bytes:
        data = text.encode("utf-8")
        if len(data) <= max_bytes:
            return text, False
    else:  # these characters alone take at least max_bytes octets
        data = text[:max_bytes].encode("utf-8")
    # Only the last, cut character can be incomplete; "ignore" drops just that.
    out = data[:max_bytes].decode("utf-8", "ignore")
    if is_html:  # RFC 8621 §4.2: not in the middle of a tag
        lt = out.rfind("<")
        if lt > out.rfind(">"):
            out = out[:lt]
    return out, True


def body_values(raw: bytes, message: Message, *, fetch_text: bool = False, fetch_html: bool = False,
                fetch_all: bool = False, max_bytes: int = 0) -> dict[str, dict[str, Any]]:
    """The bodyValues property (RFC 8621 §4.2): partId -> {value, isEncodingProblem, isTruncated} for the
    text/* parts chosen by fetchTextBodyValues / fetchHTMLBodyValues / fetchAllBodyValues."""
    chosen: list[Part] = []
    if fetch_all:
        chosen.extend(message.leaves())
    else:
        if fetch_text:
            chosen.extend(message.text_body)
        if fetch_html:
            chosen.extend(message.html_body)
    out: dict[str, dict[str, Any]] = {}
    for part in chosen:
        if not part.type.startswith("text/") or part.part_id is None or part.part_id in out:
            continue
        text, problem = body_text(raw, part)
        text, truncated = truncate_utf8(text, max_bytes, part.type == "text/html")
        out[part.part_id] = {"value": text, "isEncodingProblem": problem, "isTruncated": truncated}
    return out
