"""MIME structure, body parts and body values (RFC 8621 §4.1.4, §4.2), and the hostile corpus."""

from __future__ import annotations

import base64
import itertools
import random
import time
from pathlib import Path

import orjson
import pytest

from jmaple.mail import headers, mime
from jmaple.mail.mime import Message, NotParsable, Part, body_text, decode_body, parse

CORPUS = Path(__file__).parent / "corpus" / "mail"
HEAD = b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: test\r\nMIME-Version: 1.0\r\n"
_boundaries = itertools.count()


def leaf(ctype: str, body: bytes | str, *fields: str) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return "\r\n".join((f"Content-Type: {ctype}", *fields)).encode() + b"\r\n\r\n" + data


def multipart(subtype: str, *parts: bytes) -> bytes:
    b = f"=_b{next(_boundaries)}"
    out = f'Content-Type: multipart/{subtype}; boundary="{b}"\r\n\r\n'.encode()
    for p in parts:
        out += f"--{b}\r\n".encode() + p + b"\r\n"
    return out + f"--{b}--\r\n".encode()


def blob_id(part: Part) -> str:
    return "B" + (part.part_id or "")


def labels(raw: bytes, parts: list[Part]) -> list[str]:
    return [decode_body(raw, p).decode() for p in parts]


# -- §4.1.4 textBody, htmlBody, attachments ------------------------------------------------------------------

def test_the_rfc_example_decomposes_as_the_rfc_says():
    """RFC 8621 §4.1.4: the list-manager example with parts A to K."""
    inline = "Content-Disposition: inline"
    raw = HEAD + multipart(
        "mixed",
        leaf("text/plain", "A", inline),
        multipart(
            "mixed",
            multipart(
                "alternative",
                multipart("mixed", leaf("text/plain", "B", inline), leaf("image/jpeg", "C", inline),
                          leaf("text/plain", "D", inline)),
                multipart("related", leaf("text/html", "E"), leaf("image/jpeg", "F")),
            ),
            leaf("image/jpeg", "G", "Content-Disposition: attachment"),
            leaf("application/x-excel", "H"),
            leaf("message/rfc822", "J"),
        ),
        leaf("text/plain", "K", inline),
    )
    m = parse(raw)
    assert labels(raw, m.text_body) == ["A", "B", "C", "D", "K"]
    assert labels(raw, m.html_body) == ["A", "E", "K"]
    assert labels(raw, m.attachments) == ["C", "F", "G", "H", "J"]
    assert m.has_attachment  # G, H and J are not inline
    assert [p.part_id for p in m.text_body] == ["1", "2.1.1.1", "2.1.1.2", "2.1.1.3", "3"]


def test_alternative_puts_plain_in_text_body_and_html_in_html_body():
    raw = HEAD + multipart("alternative", leaf("text/plain", "plain"), leaf("text/html", "<p>html</p>"))
    m = parse(raw)
    assert labels(raw, m.text_body) == ["plain"]
    assert labels(raw, m.html_body) == ["<p>html</p>"]
    assert m.attachments == [] and not m.has_attachment
    assert m.preview == "plain"


def test_alternative_with_only_html_shares_it_with_text_body():
    raw = HEAD + multipart("alternative", leaf("text/html", "<p>only html</p>"))
    m = parse(raw)
    assert labels(raw, m.text_body) == labels(raw, m.html_body) == ["<p>only html</p>"]
    assert m.preview == "only html"


def test_related_images_are_attachments_but_not_counted_when_embedded_by_cid():
    raw = HEAD + multipart(
        "related",
        leaf("text/html", '<img src="cid:logo@x">'),
        leaf("image/png", "PNG", "Content-ID: <logo@x>"),
    )
    m = parse(raw)
    assert labels(raw, m.html_body) == labels(raw, m.text_body) == ['<img src="cid:logo@x">']
    assert labels(raw, m.attachments) == ["PNG"]
    assert m.attachments[0].cid == "logo@x"
    assert not m.has_attachment  # §4.1.4 lets a server ignore images embedded in the HTML


def test_mixed_with_inline_images_keeps_them_in_both_bodies_and_out_of_attachments():
    raw = HEAD + multipart(
        "mixed",
        leaf("text/plain", "before"),
        leaf("image/jpeg", "IMG", "Content-Disposition: inline; filename=photo.jpg"),
        leaf("text/plain", "after"),
    )
    m = parse(raw)
    assert labels(raw, m.text_body) == labels(raw, m.html_body) == ["before", "IMG", "after"]
    assert m.attachments == [] and not m.has_attachment


def test_nested_alternative_inside_mixed_with_an_attachment():
    raw = HEAD + multipart(
        "mixed",
        multipart("alternative", leaf("text/plain", "p"),
                  multipart("related", leaf("text/html", "h"), leaf("image/gif", "g", "Content-ID: <g>"))),
        leaf("application/pdf", "pdf", 'Content-Disposition: attachment; filename="a.pdf"'),
    )
    m = parse(raw)
    assert labels(raw, m.text_body) == ["p"]
    assert labels(raw, m.html_body) == ["h"]
    assert labels(raw, m.attachments) == ["g", "pdf"]
    assert m.has_attachment
    assert [p.part_id for p in m.parts()] == [None, None, "1.1", None, "1.2.1", "1.2.2", "2"]


def test_an_alternative_under_a_list_the_algorithm_dropped_does_not_crash():
    raw = HEAD + multipart(
        "alternative",
        multipart("mixed", leaf("text/html", "<p>h</p>"),
                  multipart("alternative", leaf("text/plain", "p"), leaf("text/html", "<p>h2</p>"))),
    )
    m = parse(raw)
    assert labels(raw, m.html_body) == ["<p>h</p>", "<p>h2</p>"]
    assert labels(raw, m.text_body) == ["<p>h</p>", "<p>h2</p>"]  # the alternative found only HTML
    assert labels(raw, m.attachments) == ["p"]  # in neither list, so an attachment by §4.1.4's definition


def test_a_text_part_the_algorithm_would_drop_is_an_attachment():
    raw = HEAD + multipart("alternative", multipart("mixed", leaf("text/html", "h"), leaf("text/plain", "p")),
                           leaf("text/plain", "alt"))
    m = parse(raw)
    assert (labels(raw, m.text_body), labels(raw, m.html_body), labels(raw, m.attachments)) == (
        ["alt"], ["h"], ["p"])


@pytest.mark.parametrize("second, where", [
    (leaf("text/plain", "x", 'Content-Disposition: inline; filename="notes.txt"'), "attachments"),
    (leaf("text/plain", "x", "Content-Disposition: attachment"), "attachments"),
    (leaf("text/plain", "x"), "body"),
    (leaf("text/csv", "x"), "attachments"),
    (leaf("image/png", "x", 'Content-Type-Ignored: y'), "body"),
])
def test_second_part_of_mixed_is_body_or_attachment(second, where):
    raw = HEAD + multipart("mixed", leaf("text/plain", "first"), second)
    m = parse(raw)
    if where == "body":
        assert labels(raw, m.text_body) == ["first", "x"]
    else:
        assert labels(raw, m.text_body) == ["first"]
        assert labels(raw, m.attachments) == ["x"]


def test_an_attached_message_is_a_leaf_that_parses_on_its_own():
    inner = b"From: inner@x.org\r\nSubject: inner\r\n" + multipart("mixed", leaf("text/plain", "inner body"))
    raw = HEAD + multipart("mixed", leaf("text/plain", "see attached"),
                           leaf("message/rfc822", inner, "Content-Disposition: attachment"))
    m = parse(raw)
    attached = m.attachments[0]
    assert attached.type == "message/rfc822" and attached.sub_parts is None and attached.part_id == "2"
    assert attached.size == len(inner)
    nested = parse(decode_body(raw, attached))  # what Email/parse on its blobId does
    assert headers.convenience_properties(nested.headers, ["subject"]) == {"subject": "inner"}
    assert nested.preview == "inner body"


def test_a_single_part_message_is_part_one():
    raw = HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    m = parse(raw)
    assert m.root.part_id == "1" and m.root.sub_parts is None
    assert m.text_body == m.html_body == [m.root]
    assert m.root.headers[0] == ("From", " Alice <alice@example.com>")


# -- part properties -----------------------------------------------------------------------------------------

def part_of(*fields: str, body: bytes = b"x") -> Part:
    raw = b"From: a@x.org\r\n" + "".join(f + "\r\n" for f in fields).encode() + b"\r\n" + body
    return parse(raw).root


@pytest.mark.parametrize("fields, expected", [
    ((), ("text/plain", "us-ascii")),
    (("Content-Type: text/html",), ("text/html", "us-ascii")),
    (("Content-Type: Text/HTML; Charset=UTF-8",), ("text/html", "UTF-8")),
    (("Content-Type: application/pdf",), ("application/pdf", None)),
    (("Content-Type: application/json; charset=utf-8",), ("application/json", "utf-8")),
    (("Content-Type: text (comment) / plain",), ("text/plain", "us-ascii")),
    (("Content-Type: garbage",), ("text/plain", "us-ascii")),  # RFC 2045 §5.2
    (("Content-Type: image/png; charset=",), ("image/png", None)),
    (("Content-Type: text/plain; charset=\"\"",), ("text/plain", "us-ascii")),
    (("Content-Type: multipart/mixed",), ("text/plain", "us-ascii")),  # no boundary: shown as text
])
def test_type_and_charset(fields, expected):
    """RFC 8621 §4.1.4: type without parameters; the implicit charset us-ascii for text and no Content-Type."""
    part = part_of(*fields)
    assert (part.type, part.charset) == expected


@pytest.mark.parametrize("fields, expected", [
    (('Content-Type: application/pdf; name="by-name.pdf"',), "by-name.pdf"),
    (('Content-Type: application/pdf; name="by-name.pdf"', "Content-Disposition: attachment; filename=f.pdf"),
     "f.pdf"),
    (("Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rates.pdf",), "€ rates.pdf"),
    (("Content-Disposition: attachment; filename*0*=iso-8859-1'fr'caf%E9; filename*1=-menu.pdf",), "café-menu.pdf"),
    (("Content-Disposition: attachment;\r\n filename*1=\"two\";\r\n filename*0=\"one-\"",), "one-two"),
    (('Content-Type: image/png; name="=?utf-8?B?w6l0w6k=?=.png"',), "été.png"),
    (('Content-Type: image/png; name="=?utf-8?q?a?= =?utf-8?q?b?="',), "ab"),
    (("Content-Disposition: attachment; filename=unquoted name.txt",), "unquoted name.txt"),
    (("Content-Disposition: attachment; filename*=x-klingon''%C3%A9",), "é"),
    (("Content-Disposition: attachment",), None),
    (("Content-Disposition: attachment filename=no-semicolon.txt",), "no-semicolon.txt"),
    (("Content-Disposition: filename=no-type.txt",), "no-type.txt"),
])
def test_name_comes_from_filename_then_name(fields, expected):
    """RFC 8621 §4.1.4 name: filename (RFC 2231), else the Content-Type name (RFC 2047)."""
    assert part_of(*fields).name == expected


def test_disposition_cid_language_and_location():
    part = part_of("Content-Type: image/png", "Content-Disposition: INLINE (shown); size=3",
                   "Content-ID: (comment) < img1@example.com >", "Content-Language: en-GB, (x) fr",
                   "Content-Location: https://example.com/\r\n img.png", "Content-Transfer-Encoding: Base64")
    assert (part.disposition, part.cid, part.language, part.location, part.cte) == (
        "inline", "img1@example.com", ["en-GB", "fr"], "https://example.com/img.png", "base64")
    assert (part_of().disposition, part_of().cid, part_of().language, part_of().location) == (None,) * 4


def test_parts_of_a_digest_default_to_message_rfc822():
    raw = HEAD + b'Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: x\r\n\r\ny\r\n--d--\r\n'
    assert parse(raw).root.sub_parts[0].type == "message/rfc822"


def test_headers_keep_their_raw_form_and_offsets_point_into_the_message():
    part_head = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    raw = (b"From: a@x.org\r\nSubject: folded\r\n  line\r\nX-8bit: caf\xe9\r\n"
           b"Content-Type: multipart/mixed; boundary=q\r\n\r\npreamble\r\n--q\r\n"
           + part_head + b"soft=\r\nbreak=3D\r\n--q--\r\n")
    m = parse(raw)
    assert m.headers[1:3] == [("Subject", " folded\r\n  line"), ("X-8bit", " caf\ufffd")]
    part = m.root.sub_parts[0]
    assert raw[part.header_start:part.start] == part_head
    assert raw[part.start:part.end] == b"soft=\r\nbreak=3D"
    assert decode_body(raw, part) == b"softbreak=" and part.size == 10
    assert m.size == len(raw)


@pytest.mark.parametrize("cte, encoded, decoded", [
    ("base64", base64.encodebytes(bytes(range(256))), bytes(range(256))),
    ("base64", b"SGVs\r\nbG8=\r\n", b"Hello"),
    ("base64", b"SGVsbG8", b"Hello"),            # padding missing
    ("base64", b"SG!!Vs*bG8=", b"Hello"),         # garbage characters skipped
    ("quoted-printable", b"a=3Db=\r\nc  \r\nd=c3=A9", b"a=bc\r\nd\xc3\xa9"),
    ("quoted-printable", b"bad =ZZ and =", b"bad =ZZ and "),
    ("7bit", b"as is", b"as is"),
    ("8bit", b"\xff as is", b"\xff as is"),
    ("binary", b"\x00\x01", b"\x00\x01"),
    ("x-uuencode", b"begin 644 x\r\nend", b"begin 644 x\r\nend"),  # unknown: no decoding (RFC 8621 §4.1.4)
])
def test_decode_body(cte, encoded, decoded):
    raw = b"From: a@x.org\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: " \
        + cte.encode() + b"\r\n\r\n" + encoded
    m = parse(raw)
    assert decode_body(raw, m.root) == decoded
    assert m.root.size == len(decoded)


@pytest.mark.parametrize("charset, cte, body, expected", [
    ("utf-8", "8bit", b"caf\xc3\xa9\r\nline\r\n", ("café\nline\n", False)),
    ("utf-8", "8bit", b"bad \xc3( \xff", ("bad \ufffd( \ufffd", True)),
    ("x-klingon", "8bit", b"Qapla'", ("Qapla'", True)),
    ("us-ascii", "x-unknown-cte", b"text", ("text", True)),
    ("utf-8", "base64", base64.b64encode("Grüße".encode()), ("Grüße", False)),
    ("iso-8859-15", "quoted-printable", b"=A4uro", ("€uro", False)),
])
def test_body_text_decodes_charset_and_reports_problems(charset, cte, body, expected):
    raw = (f"From: a@x.org\r\nContent-Type: text/plain; charset={charset}\r\n"
           f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + body
    assert body_text(raw, parse(raw).root) == expected


# -- EmailBodyPart objects -----------------------------------------------------------------------------------

def test_body_structure_with_default_properties():
    raw = HEAD + multipart("mixed", leaf("text/plain; charset=utf-8", "hi"),
                           leaf("application/pdf", "%PDF", 'Content-Disposition: attachment; filename="a.pdf"'))
    m = parse(raw)
    common = {"cid": None, "language": None, "location": None}
    assert mime.body_structure(m, None, blob_id) == {
        "partId": None, "blobId": None, "size": 0, "name": None, "type": "multipart/mixed", "charset": None,
        "disposition": None, **common, "subParts": [
            {"partId": "1", "blobId": "B1", "size": 2, "name": None, "type": "text/plain", "charset": "utf-8",
             "disposition": None, **common, "subParts": None},
            {"partId": "2", "blobId": "B2", "size": 4, "name": "a.pdf", "type": "application/pdf",
             "charset": None, "disposition": "attachment", **common, "subParts": None},
        ],
    }
    assert mime.body_parts(m.attachments, None, blob_id) == [
        {"partId": "2", "blobId": "B2", "size": 4, "name": "a.pdf", "type": "application/pdf", "charset": None,
         "disposition": "attachment", **common}]


def test_body_parts_with_chosen_properties_and_header_forms():
    raw = HEAD + multipart("mixed", leaf("text/plain", "hi", "Content-Description: =?utf-8?q?gr=C3=BC=C3=9Fe?="))
    m = parse(raw)
    props = ["partId", "headers", "header:Content-Description:asText", "header:content-type:all"]
    mime.check_body_properties(props)
    assert mime.body_parts(m.text_body, props, blob_id) == [{
        "partId": "1",
        "headers": [{"name": "Content-Type", "value": " text/plain"},
                    {"name": "Content-Description", "value": " =?utf-8?q?gr=C3=BC=C3=9Fe?="}],
        "header:Content-Description:asText": "grüße",
        "header:content-type:all": [" text/plain"],
    }]
    assert mime.body_structure(m, ["type"], blob_id) == {"type": "multipart/mixed"}


@pytest.mark.parametrize("props", [["partId", "bogus"], ["header:From:asDate"], ["header:"], ["id"]])
def test_unknown_body_properties_are_rejected(props):
    with pytest.raises(ValueError):
        mime.check_body_properties(props)


# -- bodyValues ----------------------------------------------------------------------------------------------

def alternative_with_attachment() -> bytes:
    return HEAD + multipart(
        "mixed",
        multipart("alternative", leaf("text/plain; charset=utf-8", "plain\r\ntext"),
                  leaf("text/html; charset=utf-8", "<p>html</p>")),
        leaf("text/csv", "a,b", "Content-Disposition: attachment"),
        leaf("image/png", "PNG", "Content-Disposition: attachment"),
    )


@pytest.mark.parametrize("flags, expected", [
    ({}, []),
    ({"fetch_text": True}, ["1.1"]),
    ({"fetch_html": True}, ["1.2"]),
    ({"fetch_text": True, "fetch_html": True}, ["1.1", "1.2"]),
    ({"fetch_all": True}, ["1.1", "1.2", "2"]),  # every text/* part; never the image
])
def test_body_values_follow_the_fetch_arguments(flags, expected):
    raw = alternative_with_attachment()
    values = mime.body_values(raw, parse(raw), **flags)
    assert list(values) == expected
    if "1.1" in values:
        assert values["1.1"] == {"value": "plain\ntext", "isEncodingProblem": False, "isTruncated": False}


@pytest.mark.parametrize("text, max_bytes, expected", [
    ("héllo", 0, ("héllo", False)),
    ("héllo", 6, ("héllo", False)),
    ("héllo", 5, ("héll", True)),
    ("héllo", 2, ("h", True)),      # "é" is two octets: cut before it, never inside
    ("€€", 5, ("€", True)),           # three-octet characters
    ("a😀b", 4, ("a", True)),          # a four-octet character
    ("a😀b", 5, ("a😀", True)),
    ("x" * 10, 10, ("x" * 10, False)),
    ("x" * 11, 10, ("x" * 10, True)),
])
def test_truncation_keeps_whole_characters(text, max_bytes, expected):
    """RFC 8621 §4.2 maxBodyValueBytes: valid UTF-8, never mid-codepoint."""
    value, truncated = mime.truncate_utf8(text, max_bytes)
    assert (value, truncated) == expected
    assert len(value.encode()) <= max_bytes or not max_bytes


def test_body_values_truncate_on_a_character_boundary_and_html_outside_tags():
    raw = HEAD + multipart("alternative", leaf("text/plain; charset=utf-8", "ab€€€"),
                           leaf("text/html; charset=utf-8", '<p>hi <a href="https://example.com">x</a></p>'))
    values = mime.body_values(raw, parse(raw), fetch_all=True, max_bytes=7)
    assert values["1"] == {"value": "ab€", "isEncodingProblem": False, "isTruncated": True}
    assert values["2"] == {"value": "<p>hi ", "isEncodingProblem": False, "isTruncated": True}


def test_body_values_report_encoding_problems():
    raw = HEAD + multipart("mixed", leaf("text/plain; charset=utf-8", b"ok \xe2\x82 broken"),
                           leaf("text/plain; charset=x-unknown", "fine bytes"))
    values = mime.body_values(raw, parse(raw), fetch_text=True)
    assert values["1"] == {"value": "ok \ufffd broken", "isEncodingProblem": True, "isTruncated": False}
    assert values["2"]["isEncodingProblem"] is True


# -- preview -------------------------------------------------------------------------------------------------

def test_preview_collapses_white_space_and_stops_at_256_characters():
    raw = HEAD + b"\r\n" + b"  lorem\t\r\n ipsum  " * 200
    m = parse(raw)
    assert len(m.preview) <= 256 and m.preview.startswith("lorem ipsum lorem")
    assert "  " not in m.preview


def test_preview_from_html_drops_markup_styles_and_entities():
    html = (b"<html><head><title>T</title><style>p {color: red}</style></head><body><!-- hidden -->"
            b"<p>Caf&eacute; &amp; <b>bar</b></p>\xe2\x80\x8b<script>x()</script><div>next</div></body></html>")
    raw = HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html
    assert parse(raw).preview == "Café & bar next"


def test_preview_skips_quoted_lines_unless_there_is_nothing_else():
    reply = HEAD + b"\r\nSounds good.\r\n\r\n> original text\r\n> more\r\n"
    assert parse(reply).preview == "Sounds good."
    assert parse(HEAD + b"\r\n> only quoted\r\n").preview == "> only quoted"


# -- what is and is not a message ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"\r\n\r\nbody", b"no colon at all", b" Subject: leading space",
                                 b"\x00\x01\x02", b"From a@x Tue Jul  1 10:52:37 2003\n\nbody"])
def test_input_without_any_header_field_is_not_parsable(raw):
    with pytest.raises(NotParsable):
        parse(raw)


def test_the_structure_survives_a_round_trip_through_json():
    raw = alternative_with_attachment()
    m = parse(raw)
    again = Message.from_dict(orjson.loads(orjson.dumps(m.to_dict())))
    assert again.to_dict() == m.to_dict()
    assert [p.part_id for p in again.text_body] == [p.part_id for p in m.text_body]
    assert [p.part_id for p in again.attachments] == ["2", "3"]
    assert mime.body_values(raw, again, fetch_all=True) == mime.body_values(raw, m, fetch_all=True)


def test_nesting_deeper_than_the_limit_becomes_one_opaque_leaf():
    entity = leaf("text/plain", "deep")
    for _ in range(mime.MAX_DEPTH + 20):
        entity = multipart("mixed", entity)
    m = parse(HEAD + entity)
    (deepest,) = m.attachments
    assert deepest.type == "application/octet-stream"
    assert deepest.part_id == ".".join(["1"] * mime.MAX_DEPTH)


def test_the_number_of_parts_is_bounded():
    raw = HEAD + b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\n\r\nx\r\n" * 30_000
    start = time.perf_counter()
    m = parse(raw)
    assert len(m.root.sub_parts) < mime.MAX_PARTS
    assert time.perf_counter() - start < 5


def test_a_huge_header_section_parses_in_linear_time():
    raw = b"".join(b"Received: from h%d by mx; Tue, 1 Jul 2003 10:52:37 +0200\r\n" % i for i in range(40_000))
    raw += b"Subject: " + b"long\r\n " * 100_000 + b"end\r\nReferences:" + b" <r@x>" * 100_000 + b"\r\n\r\nbody"
    assert len(raw) > 3_000_000
    start = time.perf_counter()
    m = parse(raw)
    conv = headers.convenience_properties(m.headers)
    assert time.perf_counter() - start < 8  # well under a second here
    assert len(m.headers) == 40_002 and len(conv["references"]) == 100_000 and m.preview == "body"


# -- the hostile corpus --------------------------------------------------------------------------------------

CORPUS_FILES = sorted(CORPUS.glob("*.eml"))


def test_the_corpus_is_there():
    assert len(CORPUS_FILES) >= 25


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_every_corpus_message_parses_into_sane_json(path: Path):
    raw = path.read_bytes()
    m = parse(raw)
    ids = [p.part_id for p in m.parts() if p.part_id is not None]
    assert len(ids) == len(set(ids)) and ids
    for p in m.parts():
        assert 0 <= p.header_start <= p.start <= p.end <= len(raw)
        assert (p.part_id is None) == (p.sub_parts is not None) == p.type.startswith("multipart/")
        assert p.type == p.type.lower() and "/" in p.type and ";" not in p.type
        if p.sub_parts is None:
            assert p.size == len(decode_body(raw, p))
    assert len(m.preview) <= 256
    listed = {id(p) for p in m.text_body + m.html_body + m.attachments}
    assert all(p.sub_parts is not None or id(p) in listed for p in m.parts())  # every leaf is shown somewhere
    props = (*mime.DEFAULT_BODY_PROPERTIES, "headers", "subParts")
    output = {
        "bodyStructure": mime.body_structure(m, props, blob_id),
        "textBody": mime.body_parts(m.text_body, None, blob_id),
        "bodyValues": mime.body_values(raw, m, fetch_all=True, max_bytes=100),
        "convenience": headers.convenience_properties(m.headers),
        "forms": [headers.parse_form(v, f) for n, v in m.headers[:50] for f in headers.allowed_forms(n)],
    }
    orjson.dumps(output)  # would raise on lone surrogates or anything else JSON cannot carry
    for value in output["bodyValues"].values():
        assert len(value["value"].encode()) <= 100
    assert Message.from_dict(orjson.loads(orjson.dumps(m.to_dict()))).to_dict() == m.to_dict()


def corpus(name: str) -> tuple[bytes, Message]:
    raw = (CORPUS / name).read_bytes()
    return raw, parse(raw)


def test_corpus_crlf_and_lf_versions_give_the_same_message():
    (crlf, a), (lf, b) = corpus("14-crlf.eml"), corpus("15-lf.eml")
    assert [(p.part_id, p.type) for p in a.parts()] == [(p.part_id, p.type) for p in b.parts()]
    assert mime.body_values(crlf, a, fetch_all=True) == mime.body_values(lf, b, fetch_all=True)
    assert a.preview == b.preview == "line one softbreak café"
    assert headers.convenience_properties(a.headers) == headers.convenience_properties(b.headers)


def test_corpus_missing_and_broken_boundaries():
    raw, m = corpus("01-missing-final-boundary.eml")
    assert labels(raw, m.attachments) == ["runs to the end without a close delimiter\n"]
    for name in ("02-multipart-without-boundary-param.eml", "03-boundary-never-appears.eml"):
        raw, m = corpus(name)
        assert (m.root.type, m.root.part_id) == ("text/plain", "1")  # the whole body as one text part
    raw, m = corpus("27-boundary-prefix.eml")
    assert [p.type for p in m.text_body + m.html_body + m.attachments] == ["text/plain", "text/html",
                                                                            "application/zip"]
    raw, m = corpus("34-preamble-epilogue-delimiters.eml")
    assert labels(raw, m.text_body) == ["real part (delimiter line had transport padding)"]


def test_corpus_undecodable_octets_become_replacement_characters():
    raw, m = corpus("18-invalid-utf8-body.eml")
    value = mime.body_values(raw, m, fetch_text=True)["1"]
    assert value["isEncodingProblem"] and "\ufffd" in value["value"] and "é" in value["value"]
    raw, m = corpus("07-unknown-charset.eml")
    assert mime.body_values(raw, m, fetch_text=True)["1"]["isEncodingProblem"]
    raw, m = corpus("04-8bit-headers.eml")
    conv = headers.convenience_properties(m.headers)
    assert conv["subject"] == "Caf\ufffd été \ufffd\ufffd"
    assert conv["to"] == [{"name": "Élodie", "email": "elodie@example.com"}]


def test_corpus_nul_bytes_are_dropped_from_headers():
    raw, m = corpus("08-nul-bytes.eml")
    assert ("Subject", " nul in header") in m.headers
    assert ("X-After", " still a header") in m.headers
    assert all("\x00" not in n + v for n, v in m.headers)


def test_corpus_bad_encoded_words_and_parameters():
    raw, m = corpus("05-bad-rfc2047.eml")
    conv = headers.convenience_properties(m.headers)
    assert conv["subject"].endswith("ééctlx=ZZbad")
    assert conv["to"][0] == {"name": "Quoted Name", "email": "c@example.com"}
    raw, m = corpus("06-bad-rfc2231.eml")
    assert [p.name for p in m.attachments] == ["€ eurogap.pdf", "noquotes at all.txt", "first-second", "été.txt"]


def test_corpus_header_only_and_empty_messages():
    for name in ("12-empty-body.eml", "13-only-headers.eml"):
        raw, m = corpus(name)
        assert (m.root.size, m.preview) == (0, "")
        assert mime.body_values(raw, m, fetch_all=True) == {
            "1": {"value": "", "isEncodingProblem": False, "isTruncated": False}}


# -- fuzzing (fixed seeds) -----------------------------------------------------------------------------------

def random_entity(rnd: random.Random, depth: int) -> bytes:
    if depth < 4 and rnd.random() < 0.45:
        kids = [random_entity(rnd, depth + 1) for _ in range(rnd.randrange(0, 4))]
        return multipart(rnd.choice(["mixed", "alternative", "related", "digest", "x-unknown"]), *kids)
    ctype = rnd.choice(["text/plain", "text/html", "image/png", "audio/ogg", "application/pdf", "message/rfc822",
                        "text/csv"])
    fields = []
    if rnd.random() < 0.4:
        fields.append("Content-Disposition: " + rnd.choice(["inline", "attachment", "inline; filename=f.txt"]))
    if rnd.random() < 0.2:
        fields.append("Content-ID: <c@x>")
    return leaf(ctype, "body", *fields)


def test_random_structures_keep_the_invariants():
    rnd = random.Random(4104)
    for _ in range(400):
        raw = HEAD + random_entity(rnd, 0)
        m = parse(raw)
        leaves = [p for p in m.parts() if p.sub_parts is None]
        listed = {id(p) for p in m.text_body + m.html_body + m.attachments}
        assert all(id(p) in listed for p in leaves)
        assert all(p.type in ("text/plain", "text/html") or p.type.startswith(("image/", "audio/", "video/"))
                   for p in m.text_body + m.html_body)
        assert all(p.sub_parts is None for p in m.attachments)


def test_mutated_corpus_messages_never_crash_the_parser():
    rnd = random.Random(8621)
    sources = [p.read_bytes() for p in CORPUS_FILES if p.stat().st_size < 5000]
    noise = [b"\r\n", b"\n", b"--", b":", b";", b'"', b"=?", b"?=", b"=", b"\x00", b"\xff", b"(", b"<", b"*0*="]
    for _ in range(1500):
        raw = bytearray(rnd.choice(sources))
        for _ in range(rnd.randrange(1, 6)):
            at = rnd.randrange(len(raw) + 1)
            op = rnd.random()
            if op < 0.4:
                raw[at:at] = rnd.choice(noise)
            elif op < 0.7:
                del raw[at:at + rnd.randrange(1, 20)]
            else:
                raw[at:at + 1] = bytes([rnd.randrange(256)])
        data = bytes(raw)
        try:
            m = parse(data)
        except NotParsable:
            continue
        orjson.dumps([mime.body_structure(m, None, blob_id), mime.body_values(data, m, fetch_all=True),
                      headers.convenience_properties(m.headers), m.preview])
