"""Header field parsed forms (RFC 8621 §4.1.2, §4.1.3) and the base subject (RFC 5256 §2.1).

Every function here takes a header field value in Raw form (a str: the octets after the colon, folding
kept, invalid UTF-8 already replaced by U+FFFD and NUL dropped, as `jmaple.mail.mime` produces them) and
never raises on hostile input.
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import functools
import operator
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

Headers = Sequence[tuple[str, str]]

FORMS = ("Raw", "Text", "Addresses", "GroupedAddresses", "MessageIds", "Date", "URLs")

# RFC 8621 §4.1.2: a parsed form other than Raw is allowed on the fields listed for it, and on any field
# that neither RFC 5322 nor RFC 2369 defines.
_ADDRESS_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc",
    "resent-from", "resent-sender", "resent-reply-to", "resent-to", "resent-cc", "resent-bcc",
})
_ID_FIELDS = frozenset({"message-id", "in-reply-to", "references", "resent-message-id"})
_DATE_FIELDS = frozenset({"date", "resent-date"})
_URL_FIELDS = frozenset({"list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner",
                         "list-archive"})
_TEXT_FIELDS = frozenset({"subject", "comments", "keywords"})
_DEFINED_FIELDS = (_ADDRESS_FIELDS - {"resent-reply-to"}) | _ID_FIELDS | _DATE_FIELDS | _URL_FIELDS \
    | _TEXT_FIELDS | {"return-path", "received"}
_ALL_FORMS = frozenset(FORMS)

# Bump whenever what parse_form returns changes: the convenience properties stored at import
# (jmaple/mail/ingest.py) under an older version are then derived again from the header fields.
PARSE_VERSION = 1

CONVENIENCE = {
    "messageId": ("message-id", "MessageIds"),
    "inReplyTo": ("in-reply-to", "MessageIds"),
    "references": ("references", "MessageIds"),
    "sender": ("sender", "Addresses"),
    "from": ("from", "Addresses"),
    "to": ("to", "Addresses"),
    "cc": ("cc", "Addresses"),
    "bcc": ("bcc", "Addresses"),
    "replyTo": ("reply-to", "Addresses"),
    "subject": ("subject", "Text"),
    "sentAt": ("date", "Date"),
}


class HeaderProperty(NamedTuple):
    """A parsed `header:{name}[:as{form}][:all]` property name."""

    name: str
    form: str
    all: bool


def allowed_forms(name: str) -> frozenset[str]:
    """The parsed forms RFC 8621 §4.1.2 allows for a header field name (matched case-insensitively)."""
    lname = name.lower()
    if lname not in _DEFINED_FIELDS:
        return _ALL_FORMS
    forms = {"Raw"}
    if lname in _TEXT_FIELDS:
        forms.add("Text")
    if lname in _ADDRESS_FIELDS:
        forms.update(("Addresses", "GroupedAddresses"))
    if lname in _ID_FIELDS:
        forms.add("MessageIds")
    if lname in _DATE_FIELDS:
        forms.add("Date")
    if lname in _URL_FIELDS:
        forms.add("URLs")
    return frozenset(forms)


_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def parse_header_property(prop: str) -> HeaderProperty:
    """Parse "header:Name[:asForm][:all]" (RFC 8621 §4.1.3); ValueError if malformed or the form is not allowed."""
    if not prop.startswith("header:"):
        raise ValueError(f"{prop!r} is not a header property")
    name, *rest = prop[7:].split(":")
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"{prop!r} has an invalid header field name")
    form, is_all = "Raw", False
    if rest and rest[0].startswith("as"):
        form = rest.pop(0)[2:]
        if form not in _ALL_FORMS:
            raise ValueError(f"{prop!r} names an unknown form")
    if rest and rest[0] == "all":
        is_all = True
        rest.pop(0)
    if rest:
        raise ValueError(f"{prop!r} has unexpected suffixes")
    if form not in allowed_forms(name):
        raise ValueError(f"the {form} form is not allowed for the {name} header field")
    return HeaderProperty(name, form, is_all)


def parse_form(raw: str, form: str) -> Any:
    """The value of one header field instance in the given form (one of FORMS)."""
    if form == "Raw":
        return raw
    if form == "Text":
        return as_text(raw)
    if form == "Addresses":
        return as_addresses(raw)
    if form == "GroupedAddresses":
        return as_grouped_addresses(raw)
    if form == "MessageIds":
        return as_message_ids(raw)
    if form == "Date":
        return as_date(raw)
    if form == "URLs":
        return as_urls(raw)
    raise ValueError(f"unknown header form {form!r}")


def header_value(headers: Headers, name: str, form: str = "Raw", all: bool = False) -> Any:
    """`header:{name}:as{form}[:all]` over a header list: the last instance (or null), or every instance."""
    lname = name.lower()
    values = [v for n, v in headers if n.lower() == lname]
    if all:
        return [parse_form(v, form) for v in values]
    return parse_form(values[-1], form) if values else None


def header_property(headers: Headers, prop: str) -> Any:
    """The value of a `header:...` property over a header list; ValueError if the property is invalid."""
    name, form, is_all = parse_header_property(prop)
    return header_value(headers, name, form, is_all)


def headers_json(headers: Headers) -> list[dict[str, str]]:
    """The `headers` property: EmailHeader objects in message order (RFC 8621 §4.1.3)."""
    return [{"name": n, "value": v} for n, v in headers]


def convenience_properties(headers: Headers, wanted: Iterable[str] | None = None) -> dict[str, Any]:
    """messageId, inReplyTo, references, sender, from, to, cc, bcc, replyTo, subject, sentAt (RFC 8621 §4.1.3)."""
    last: dict[str, str] = {}
    for n, v in headers:
        last[n.lower()] = v
    out: dict[str, Any] = {}
    for prop in CONVENIENCE if wanted is None else wanted:
        lname, form = CONVENIENCE[prop]
        value = last.get(lname)
        out[prop] = None if value is None else parse_form(value, form)
    return out


# -- charsets ------------------------------------------------------------------------------------------------

# Names seen in the wild that Python does not know, or knows as a narrower charset than senders mean.
_CHARSET_ALIASES = {
    "iso-8859-8-i": "iso-8859-8", "iso-8859-6-i": "iso-8859-6", "iso-8859-8-e": "iso-8859-8",
    "x-gbk": "gbk", "gb2312": "gb18030", "gbk": "gb18030", "x-gb2312": "gb18030", "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949", "x-euc-kr": "cp949",
    "x-mac-roman": "mac-roman", "x-mac-cyrillic": "mac-cyrillic", "x-sjis": "cp932", "shift_jis": "cp932",
    "sjis": "cp932", "x-user-defined": "cp1252", "cp-850": "cp850", "x-unicode20utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8", "utf8mb4": "utf-8", "x-cp1250": "cp1250", "x-cp1251": "cp1251",
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "iso_8859-1": "cp1252", "windows-1252": "cp1252", "x-ansi": "cp1252",
    "big5": "big5hkscs", "x-x-big5": "big5hkscs", "tis-620": "cp874", "iso-8859-11": "cp874",
}
# Text codecs that are not character sets a sender could mean.
_CHARSET_REFUSED = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined",
                              "mbcs", "oem", "charmap"})
# UTF-7 and a few others can yield lone surrogates, which are not valid in JSON output.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_FREE = frozenset({"utf-8", "cp1252", "iso8859-1", "ascii"})
_ASCII_NAMES = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us", "646", "ascii-us"})


@functools.lru_cache(maxsize=512)
def lookup_charset(charset: str | None) -> str | None:
    """A Python codec name for a MIME charset name, "ascii" for US-ASCII and unknown-8bit, None if unknown."""
    if not charset:
        return "ascii"
    name = charset.strip().strip("\"'").strip().lower()
    if not name or name in _ASCII_NAMES:
        return "ascii"
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _CHARSET_REFUSED:
        return None
    return info.name


def decode_charset(data: bytes, charset: str | None) -> tuple[str, bool]:
    """Decode octets in a MIME charset; returns (text, is_encoding_problem).

    US-ASCII (or no charset) holding 8-bit octets is read as UTF-8 when it is valid UTF-8, else as
    Windows-1252; an unknown charset is read the same way and flagged; malformed sections become U+FFFD.
    """
    codec = lookup_charset(charset)
    if codec == "ascii" or codec is None:
        if data.isascii():
            return data.decode("ascii"), codec is None
        try:
            return data.decode("utf-8"), codec is None
        except UnicodeDecodeError:
            return _decode_cp1252(data), True
    try:
        text, problem = data.decode(codec), False
    except UnicodeDecodeError:
        if codec == "cp1252":
            return _decode_cp1252(data), False
        text, problem = data.decode(codec, "replace"), True
    except Exception:  # a codec that fails in some other way on hostile input
        return data.decode("utf-8", "replace"), True
    if codec not in _SURROGATE_FREE and _SURROGATE.search(text):
        return _SURROGATE.sub("\ufffd", text), True
    return text, problem


def _decode_cp1252(data: bytes) -> str:
    # The five octets Windows-1252 leaves undefined decode as their ISO-8859-1 controls, as browsers do.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def b64decode(data: bytes) -> tuple[bytes, bool]:
    """Tolerant base64: (octets, had_problem); garbage characters are skipped and bad padding repaired."""
    try:
        return binascii.a2b_base64(data), False
    except (binascii.Error, ValueError):
        pass
    clean = _B64_JUNK.sub(b"", data)
    cut = len(clean) % 4
    if cut == 1:
        clean = clean[:-1]
    elif cut:
        clean += b"=" * (4 - cut)
    try:
        return binascii.a2b_base64(clean), True
    except (binascii.Error, ValueError):
        return b"", True


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]+")


# -- RFC 2047 encoded words ----------------------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_WSP_SPLIT = re.compile(r"([ \t\r\n]+)")
_CONTROLS = dict.fromkeys([*range(0, 32), 127])
_Q_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_B64_TEXT = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def _word_octets(m: re.Match[str]) -> tuple[str | None, bytes]:
    """(codec, decoded octets) of one encoded word; codec None if it must stay as it is (unknown
    charset, or B encoding that is not base64)."""
    charset = m.group(1).split("*", 1)[0]  # RFC 2231 §5 allows a language after "*"
    codec = lookup_charset(charset)
    text = m.group(3).encode("utf-8", "replace")
    if codec is None:
        return None, b""
    if m.group(2) in "bB":
        if not _B64_TEXT.fullmatch(text):
            return None, b""
        data, _ = b64decode(text)
    else:
        data = _Q_HEX.sub(lambda h: bytes((int(h.group(1), 16),)), text.replace(b"_", b" "))
    return codec, data


def _decode_octets(codec: str, data: bytes) -> str:
    if codec == "ascii":
        text = data.decode("utf-8", "replace") if not data.isascii() else data.decode("ascii")
    else:
        try:
            text = data.decode(codec, "replace")
        except Exception:
            text = data.decode("utf-8", "replace")
        if codec not in _SURROGATE_FREE:
            text = _SURROGATE.sub("\ufffd", text)
    # RFC 8621 §4.1.2.2: NUL and other controls carried in encoded words are dropped.
    return text.translate(_CONTROLS)


def decode_words(text: str, strict: bool = True) -> str:
    """Decode RFC 2047 encoded words with a known charset.

    strict: only whitespace-delimited words are decoded (RFC 2047 §5 placement, as RFC 8621 §4.1.2.2
    requires); otherwise (for parameter values) any occurrence is. Whitespace between adjacent encoded
    words is dropped, and adjacent words in the same charset are decoded together so that a character
    split across two words survives.
    """
    if "=?" not in text:
        return text
    if strict:
        pieces: list[Any] = []
        for i, chunk in enumerate(_WSP_SPLIT.split(text)):
            m = _ENCODED_WORD.fullmatch(chunk) if i % 2 == 0 else None
            pieces.append(m if m is not None else chunk)
    else:
        pieces = []
        pos = 0
        for m in _ENCODED_WORD.finditer(text):
            pieces.append(text[pos:m.start()])
            pieces.append(m)
            pos = m.end()
        pieces.append(text[pos:])
    out: list[str] = []
    pending_ws = ""
    run_codec: str | None = None
    run: list[bytes] = []
    last_was_word = False
    for piece in pieces:
        if isinstance(piece, str):
            if not piece:
                continue
            if last_was_word and not piece.strip(" \t\r\n"):
                pending_ws += piece  # dropped if another encoded word follows (RFC 2047 §6.2)
                continue
            if run:
                out.append(_decode_octets(run_codec or "ascii", b"".join(run)))
                run = []
            out.append(pending_ws)
            pending_ws = ""
            out.append(piece)
            last_was_word = False
            continue
        codec, data = _word_octets(piece)
        if codec is None:  # not decodable: the word stays as it is
            if run:
                out.append(_decode_octets(run_codec or "ascii", b"".join(run)))
                run = []
            out.append(pending_ws)
            pending_ws = ""
            out.append(piece.group(0))
            last_was_word = False
            continue
        if run and codec != run_codec:
            out.append(_decode_octets(run_codec or "ascii", b"".join(run)))
            run = []
        pending_ws = ""
        run_codec = codec
        run.append(data)
        last_was_word = True
    if run:
        out.append(_decode_octets(run_codec or "ascii", b"".join(run)))
    out.append(pending_ws)
    return "".join(out)


def _nfc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def unfold(raw: str) -> str:
    """RFC 5322 §2.2.3 unfolding (line breaks removed, the whitespace after them kept)."""
    if "\n" not in raw and "\r" not in raw:
        return raw
    return raw.replace("\r", "").replace("\n", "")


def as_text(raw: str) -> str:
    """The Text form (RFC 8621 §4.1.2.2): unfolded, leading spaces removed, RFC 2047 decoded, NFC."""
    return _nfc(decode_words(unfold(raw).lstrip(" \t")))


# -- addresses (RFC 5322 §3.4) -------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | "(?P<q>(?:[^"\\]|\\[\s\S])*)(?P<qe>"?)
  | (?P<c>\()
  | (?P<dl>\[(?:[^\[\]\\]|\\[\s\S])*\]?)
  | (?P<sp>[<>@,;:.])
  | (?P<a>(?:[^ \t\r\n"()\[\]<>@,;:.\\]|\\[\s\S]?)+|[)\]])
""", re.X)
_COMMENT_PIECE = re.compile(r"[^()\\]+|\\[\s\S]?|[()]")
_QUOTED_PAIR = re.compile(r"\\([\s\S])")
_SECOND = operator.itemgetter(1)

# Token kinds: "ws", "q" (quoted string), "c" (comment), "dl" (domain literal), "a" (atom), or the special
# character itself. Each token is (kind, raw text, value).
Token = tuple[str, str, str]


def _comment(s: str, start: int) -> tuple[str, int]:
    """The unescaped content of the (possibly nested, possibly unterminated) comment at s[start] == "(", and
    the offset after it."""
    depth = 0
    pieces: list[str] = []
    for m in _COMMENT_PIECE.finditer(s, start):
        t = m.group()
        if t == "(":
            depth += 1
            if depth > 1:
                pieces.append(t)
        elif t == ")":
            depth -= 1
            if depth == 0:
                return "".join(pieces), m.end()
            pieces.append(t)
        elif t[0] == "\\":
            pieces.append(t[1:])
        else:
            pieces.append(t)
    return "".join(pieces), len(s)


def _tokens(s: str) -> list[Token]:
    out: list[Token] = []
    pos, n = 0, len(s)
    match = _TOKEN.match
    while pos < n:
        m = match(s, pos)
        if m is None:  # cannot happen: every character starts some token; stay safe
            out.append(("a", s[pos], s[pos]))
            pos += 1
            continue
        kind = m.lastgroup or "a"
        if kind == "qe":  # the closing-quote group is the last one to match in a quoted string
            kind = "q"
        if kind == "c":
            content, pos = _comment(s, pos)
            out.append(("c", s[m.start():pos], content))
            continue
        text = m.group()
        if kind == "q":
            if not m.group("qe"):  # unterminated: the quote is an ordinary character (no later quote can
                out.append(("a", '"', '"'))  # open a string, so this rescans nothing twice)
                pos += 1
                continue
            value = m.group("q")
            if "\\" in value:
                value = _QUOTED_PAIR.sub(_SECOND, value)
            out.append(("q", text, value))
        elif kind == "sp":
            out.append((text, text, text))
        else:
            out.append((kind, text, text))
        pos = m.end()
    return out


def _phrase(tokens: list[Token]) -> str | None:
    """A display name from phrase tokens: quotes removed, quoted pairs decoded, encoded words decoded,
    comments dropped, trimmed (RFC 8621 §4.1.2.3)."""
    text = "".join(" " if k == "ws" else v for k, _, v in tokens if k != "c")
    text = _nfc(decode_words(unfold(text))).strip()
    return text or None


def _comment_name(tokens: list[Token]) -> str | None:
    for kind, _, value in tokens:
        if kind == "c":
            name = _nfc(decode_words(unfold(value))).strip()
            if name:
                return name
    return None


def _addr_spec(tokens: list[Token]) -> str:
    email = "".join(raw for kind, raw, _ in tokens if kind not in ("ws", "c"))
    if email.startswith("@") and ":" in email:  # RFC 5322 §4.4 obs-route
        email = email.rsplit(":", 1)[1]
    return email


def _mailbox(phrase: list[Token], angle: list[Token] | None, after: list[Token]) -> dict[str, Any] | None:
    if angle is not None:
        name = _phrase(phrase) or _comment_name(after) or _comment_name(phrase)
        email = _addr_spec(angle)
        if not email and name is None:
            return None
        return {"name": name, "email": email}
    # No angle brackets: an addr-spec, perhaps with a comment naming it, perhaps garbage.
    pieces: list[list[str]] = []  # words as lists of token texts; joined once (no quadratic +=)
    glue = True
    for kind, raw, _ in phrase:
        if kind == "c":
            continue
        if kind == "ws":
            glue = False
            continue
        if pieces and (glue or raw in ("@", ".") or pieces[-1][-1] in ("@", ".")):
            pieces[-1].append(raw)
        else:
            pieces.append([raw])
        glue = True
    if not pieces:
        return None
    words = ["".join(p) for p in pieces]
    name = _comment_name(phrase)
    if len(words) > 1:
        at = [i for i, w in enumerate(words) if "@" in w]
        if at:
            i = at[-1]
            if name is None and i > 0:
                name = _nfc(decode_words(" ".join(words[:i]).replace('"', ""))).strip() or None
            return {"name": name, "email": words[i]}
    return {"name": name, "email": " ".join(words)}


def _address_groups(raw: str) -> list[tuple[bool, str | None, list[dict[str, Any]]]]:
    """Parse an address-list best-effort into (is_group, group name, mailboxes) runs."""
    runs: list[tuple[bool, str | None, list[dict[str, Any]]]] = []
    group: tuple[bool, str | None, list[dict[str, Any]]] | None = None
    phrase: list[Token] = []
    angle: list[Token] | None = None
    after: list[Token] = []
    in_angle = False

    def flush() -> None:
        nonlocal phrase, angle, after
        box = _mailbox(phrase, angle, after)
        phrase, angle, after = [], None, []
        if box is None:
            return
        if group is not None:
            group[2].append(box)
        elif runs and not runs[-1][0]:
            runs[-1][2].append(box)
        else:
            runs.append((False, None, [box]))

    for tok in _tokens(unfold(raw)):
        kind = tok[0]
        if in_angle:
            if kind == ">":
                in_angle = False
            elif kind == "," and not (angle and angle[0][0] == "@"):  # commas belong to an obs-route
                in_angle = False
                flush()
            elif kind != "<" and angle is not None:
                angle.append(tok)
            continue
        if kind == "<":
            if angle is None:
                angle = []
                in_angle = True
            continue
        if kind == ",":
            flush()
        elif kind == ";":
            flush()
            if group is not None:
                runs.append(group)
                group = None
        elif kind == ":" and group is None and angle is None \
                and not any(t[0] == "@" for t in phrase):
            group = (True, _phrase(phrase) or "", [])
            phrase = []
        elif kind == ">":
            continue
        elif angle is not None:
            after.append(tok)
        else:
            phrase.append(tok)
    flush()
    if group is not None:
        runs.append(group)
    return runs


def as_addresses(raw: str) -> list[dict[str, Any]]:
    """The Addresses form (RFC 8621 §4.1.2.3): EmailAddress objects {name, email}, groups flattened."""
    return [box for _, _, boxes in _address_groups(raw) for box in boxes]


def as_grouped_addresses(raw: str) -> list[dict[str, Any]]:
    """The GroupedAddresses form (RFC 8621 §4.1.2.4): EmailAddressGroup objects {name, addresses}."""
    return [{"name": name, "addresses": boxes} for _, name, boxes in _address_groups(raw)]


# -- message ids, URLs ---------------------------------------------------------------------------------------

def as_message_ids(raw: str) -> list[str] | None:
    """The MessageIds form (RFC 8621 §4.1.2.5): ids without CFWS and angle brackets, or None."""
    ids: list[str] = []
    current: list[str] | None = None
    loose: list[str] = []
    for kind, text, _ in _tokens(unfold(raw)):
        if kind in ("ws", "c"):
            continue
        if current is None:
            if kind == "<":
                current = []
            elif kind != ">":
                loose.append(text)
        elif kind == ">":
            if current:
                ids.append("".join(current))
            current = None
        elif kind != "<":
            current.append(text)
    if current:  # an unterminated last id, as in a truncated References field
        ids.append("".join(current))
    if ids:
        return ids
    # Some senders leave the brackets out; accept a lone word that looks like an id.
    if len(loose) > 0 and "@" in loose and "".join(loose).count("@") == 1:
        return ["".join(loose)]
    return None


def as_urls(raw: str) -> list[str] | None:
    """The URLs form (RFC 8621 §4.1.2.7, RFC 2369): the <...> URLs without whitespace, or None."""
    urls: list[str] = []
    s = unfold(raw)
    pos, n = 0, len(s)
    while pos < n:
        lt = s.find("<", pos)
        paren = s.find("(", pos)
        if paren >= 0 and (lt < 0 or paren < lt):
            pos = _comment(s, paren)[1]
            continue
        if lt < 0:
            break
        gt = s.find(">", lt + 1)
        end = n if gt < 0 else gt
        url = "".join(s[lt + 1:end].split())
        if url:
            urls.append(url)
        pos = end + 1
    return urls or None


# -- dates (RFC 5322 §3.3) -----------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
# RFC 5322 §4.3 obs-zone; military zones are "-0000" there.
_ZONES = {"ut": 0, "utc": 0, "gmt": 0, "z": 0, "edt": -240, "est": -300, "cdt": -300, "cst": -360,
          "mdt": -360, "mst": -420, "pdt": -420, "pst": -480}
_DATE = re.compile(r"""
    \s*(?:[A-Za-z]+\.?\s*,?\s*)?
    (\d{1,2})\s*[-\s]?\s*([A-Za-z]{3,})\.?\s*[-\s]?\s*(\d{2,4})\s*,?\s+
    (\d{1,2})\s*:\s*(\d{1,2})(?:\s*:\s*(\d{1,2}))?(?:\.\d+)?
    \s*(?:([+-])(\d\d):?(\d\d)|([A-Za-z]+))?
""", re.X)


def parse_date(raw: str) -> datetime.datetime | None:
    """An RFC 5322 date-time (obsolete forms accepted) as an aware datetime, or None."""
    s = unfold(raw)
    if "(" in s:
        s = "".join(" " if k == "c" else t for k, t, _ in _tokens(s))
    m = _DATE.match(s[:200])
    if m is None:
        return None
    day, mon, year, hour, minute, second, sign, zh, zm, zname = m.groups()
    month = _MONTHS.get(mon[:3].lower())
    if month is None:
        return None
    y = int(year)
    if len(year) == 2:  # RFC 5322 §4.3
        y += 2000 if y < 50 else 1900
    elif len(year) == 3:
        y += 1900
    if sign:
        offset = int(zh) * 60 + int(zm)
        if int(zm) >= 60:
            return None
        if sign == "-":
            offset = -offset
    else:
        offset = _ZONES.get((zname or "").lower(), 0)
    sec = min(int(second or 0), 59)  # a leap second is shown as :59
    try:
        tz = datetime.timezone(datetime.timedelta(minutes=offset))
        return datetime.datetime(y, month, int(day), int(hour), int(minute), sec, tzinfo=tz)
    except (ValueError, OverflowError):
        return None


def format_date(value: datetime.datetime) -> str:
    """A JMAP Date (RFC 8620 §1.4): RFC 3339 with the original offset, "Z" for UTC."""
    offset = value.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    base = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if minutes == 0:
        return base + "Z"
    sign = "+" if minutes > 0 else "-"
    minutes = abs(minutes)
    return f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def as_date(raw: str) -> str | None:
    """The Date form (RFC 8621 §4.1.2.6): a JMAP Date keeping the field's offset, or None."""
    value = parse_date(raw)
    return None if value is None else format_date(value)


# -- base subject (RFC 5256 §2.1) ----------------------------------------------------------------------------

_WS_RUN = re.compile(r"[ \t\r\n]+")
_SUBJ_LEADER = re.compile(r"(?:\[[^\[\]]*\][ \t]*)*(?:re|fwd?)[ \t]*(?:\[[^\[\]]*\][ \t]*)?:|[ \t]+", re.I)
_SUBJ_BLOB = re.compile(r"\[[^\[\]]*\][ \t]*")


def base_subject(subject: str) -> str:
    """The RFC 5256 §2.1 base subject of an already decoded subject (e.g. the Email `subject`).

    Case is kept; compare base subjects case-insensitively (RFC 5256 §7 uses i;unicode-casemap).
    """
    s = _WS_RUN.sub(" ", subject)
    start, end = 0, len(s)
    while True:
        # (2) trailers: "(fwd)" and white space
        while end > start:
            if s[end - 1] == " ":
                end -= 1
            elif end - start >= 5 and s[end - 5:end].lower() == "(fwd)":
                end -= 5
            else:
                break
        # (3)-(5) leaders and blobs
        while True:
            m = _SUBJ_LEADER.match(s, start, end)
            if m is not None and m.end() > start:
                start = m.end()
                continue
            m = _SUBJ_BLOB.match(s, start, end)
            if m is not None and m.end() < end:
                start = m.end()
                continue
            break
        # (6) "[fwd: ... ]"
        if end - start >= 6 and s[start:start + 5].lower() == "[fwd:" and s[end - 1] == "]":
            start += 5
            end -= 1
            continue
        return s[start:end]
