"""Header field parsed forms (RFC 8621 §4.1.2, §4.1.3) and the base subject (RFC 5256 §2.1)."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from jmaple.mail import headers as h
from jmaple.mail.headers import (
    allowed_forms, as_addresses, as_date, as_grouped_addresses, as_message_ids, as_text, as_urls, base_subject,
    convenience_properties, decode_charset, header_property, header_value, parse_header_property,
)

RFC_ADDRESS_LIST = ('"  James Smythe" <james@example.com>, Friends:\r\n  jane@example.com, '
                    '=?UTF-8?Q?John_Sm=C3=AEth?=\r\n  <john@example.com>;')


# -- Addresses and GroupedAddresses --------------------------------------------------------------------------

def test_addresses_form_parses_the_rfc_example():
    """RFC 8621 §4.1.2.3. The RFC prints the third name as "John Smith"; its encoded word says "Smîth"."""
    assert as_addresses(" " + RFC_ADDRESS_LIST) == [
        {"name": "James Smythe", "email": "james@example.com"},
        {"name": None, "email": "jane@example.com"},
        {"name": "John Smîth", "email": "john@example.com"},
    ]


def test_grouped_addresses_form_parses_the_rfc_example():
    """RFC 8621 §4.1.2.4."""
    assert as_grouped_addresses(" " + RFC_ADDRESS_LIST) == [
        {"name": None, "addresses": [{"name": "James Smythe", "email": "james@example.com"}]},
        {"name": "Friends", "addresses": [
            {"name": None, "email": "jane@example.com"},
            {"name": "John Smîth", "email": "john@example.com"},
        ]},
    ]


def test_consecutive_ungrouped_mailboxes_share_one_group_and_empty_groups_are_kept():
    raw = " a@x.org, b@x.org, undisclosed-recipients:;, c@x.org"
    assert as_grouped_addresses(raw) == [
        {"name": None, "addresses": [{"name": None, "email": "a@x.org"}, {"name": None, "email": "b@x.org"}]},
        {"name": "undisclosed-recipients", "addresses": []},
        {"name": None, "addresses": [{"name": None, "email": "c@x.org"}]},
    ]
    assert as_addresses(raw) == [{"name": None, "email": e} for e in ("a@x.org", "b@x.org", "c@x.org")]


@pytest.mark.parametrize("raw, expected", [
    (' "Joe Q. Public" <john.q.public@example.com>', [{"name": "Joe Q. Public", "email": "john.q.public@example.com"}]),
    (" Joe Q. Public <john@example.com>", [{"name": "Joe Q. Public", "email": "john@example.com"}]),
    (' "Back\\\\slash \\"Q\\"" <bs@example.com>', [{"name": 'Back\\slash "Q"', "email": "bs@example.com"}]),
    (" john@example.com (John Doe)", [{"name": "John Doe", "email": "john@example.com"}]),
    (" john @ example . com", [{"name": None, "email": "john@example.com"}]),
    (" <john@example.com>", [{"name": None, "email": "john@example.com"}]),
    (" < john@example.com >", [{"name": None, "email": "john@example.com"}]),
    (" <@route1,@route2:john@example.com>", [{"name": None, "email": "john@example.com"}]),
    (' "Smith, John" <j@example.com>, x@example.com',
     [{"name": "Smith, John", "email": "j@example.com"}, {"name": None, "email": "x@example.com"}]),
    (' "=?utf-8?q?J=C3=B6rg?=" <j@example.com>', [{"name": "Jörg", "email": "j@example.com"}]),
    (" =?utf-8?b?SsO2cmc=?= =?utf-8?b?IE3DvGxsZXI=?= <j@example.com>",
     [{"name": "Jörg Müller", "email": "j@example.com"}]),
    (' "quoted local"@example.com', [{"name": None, "email": '"quoted local"@example.com'}]),
    (" Jane Doe jane@example.com", [{"name": "Jane Doe", "email": "jane@example.com"}]),
    (" not-an-address", [{"name": None, "email": "not-an-address"}]),
    ("", []),
    (" ,,, ;", []),
])
def test_addresses_form_handles_real_world_shapes(raw, expected):
    assert as_addresses(raw) == expected


def test_display_names_are_nfc_and_unfolded():
    assert as_addresses(' "Jose\u0301\r\n  Ma" <j@example.com>') == [{"name": "José  Ma", "email": "j@example.com"}]


# -- Text ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (" Hello", "Hello"),
    ("  \tHello ", "Hello "),
    (" folded\r\n line", "folded line"),
    (" =?utf-8?q?caf=C3=A9?=", "café"),
    (" =?UTF-8?B?Y2Fmw6k=?= au lait", "café au lait"),
    (" =?utf-8?q?a?= =?utf-8?q?b?=\r\n =?utf-8?q?c?=", "abc"),  # RFC 2047 §6.2: space between words dropped
    (" x =?utf-8?q?a_b?= y", "x a b y"),
    (" =?utf-8?q?a?==?utf-8?q?b?=", "=?utf-8?q?a?==?utf-8?q?b?="),  # RFC 8621 §4.1.2.2: no white space
    (" in=?utf-8?q?side?=word", "in=?utf-8?q?side?=word"),
    (" (=?utf-8?q?x?=)", "(=?utf-8?q?x?=)"),  # unstructured text: parentheses are not delimiters
    (" =?x-klingon?q?Qapla?=", "=?x-klingon?q?Qapla?="),  # unknown charset: left alone
    (" =?utf-8?b?!!notbase64?=", "=?utf-8?b?!!notbase64?="),
    (" =?utf-8?b?w6k?=", "é"),  # missing padding tolerated
    (" =?utf-8?q?=C3?= =?utf-8?q?=A9?=", "é"),  # a character split across two words
    (" =?utf-8?q?nul=00bell=07end?=", "nulbellend"),  # controls in encoded words are dropped
    (" =?utf-8?q?=FF?=", "\ufffd"),
    (" =?iso-8859-1?q?caf=E9?=", "café"),
    (" =?utf-8*en?q?lang?=", "lang"),  # RFC 2231 §5 language suffix
    (" =?ISO-2022-JP?B?GyRCJEskWyRzGyhC?=", "にほん"),
    (" e\u0301", "é"),  # NFC
])
def test_text_form(raw, expected):
    assert as_text(raw) == expected


# -- MessageIds, URLs, Date ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (" <abc@example.com>", ["abc@example.com"]),
    (" <a@x.org> <b@x.org>\r\n\t<c@x.org>", ["a@x.org", "b@x.org", "c@x.org"]),
    (" (comment) < spaced@x.org > (another)", ["spaced@x.org"]),
    (' "Phrase of obs-in-reply-to" <a@x.org>', ["a@x.org"]),
    (" bare@example.com", ["bare@example.com"]),
    (" <truncated@x.org", ["truncated@x.org"]),
    (" not an id", None),
    ("", None),
    (" <>", None),
])
def test_message_ids_form(raw, expected):
    assert as_message_ids(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    (" <mailto:list@example.com>", ["mailto:list@example.com"]),
    (" <mailto:list-request@example.com?subject=help> (List Instructions),\r\n <https://example.com/\r\n help>",
     ["mailto:list-request@example.com?subject=help", "https://example.com/help"]),
    (" (<mailto:in-comment@example.com>) <https://x.org/>", ["https://x.org/"]),
    (" NO (posting not allowed on this list)", None),
    ("", None),
])
def test_urls_form(raw, expected):
    assert as_urls(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    (" Tue, 1 Jul 2003 10:52:37 +0200", "2003-07-01T10:52:37+02:00"),
    (" Fri, 21 Nov 1997 09:55:06 -0600", "1997-11-21T09:55:06-06:00"),
    (" Thu, 13 Feb 1969 23:32:54 -0330 (Newfoundland Time)", "1969-02-13T23:32:54-03:30"),
    (" 1 Jan 2020 00:00:00 +0000", "2020-01-01T00:00:00Z"),
    (" 1 Jan 2020 00:00:00 -0000", "2020-01-01T00:00:00Z"),
    (" 21 Nov 97 09:55 EST", "1997-11-21T09:55:00-05:00"),  # RFC 5322 §4.3 obsolete year and zone
    (" 21 Nov 49 09:55:06 GMT", "2049-11-21T09:55:06Z"),
    (" Tue,\r\n 1 Jul 2003\r\n 10:52:37 +0200", "2003-07-01T10:52:37+02:00"),
    (" Tue, 01 Jul 2003 10:52:60 GMT", "2003-07-01T10:52:59Z"),  # leap second
    (" 1-Jul-2003 10:52:37 +0200", "2003-07-01T10:52:37+02:00"),
    (" 31 Feb 2003 10:00:00 +0000", None),
    (" Tue, 1 Jul 2003 25:61:99 +0200", None),
    (" 1 Jul 2003 10:52:37 +0260", None),
    (" 1 Foo 2003 10:52:37 +0200", None),
    (" yesterday", None),
    ("", None),
])
def test_date_form(raw, expected):
    assert as_date(raw) == expected


# -- which forms for which fields ----------------------------------------------------------------------------

@pytest.mark.parametrize("prop, expected", [
    ("header:From", ("From", "Raw", False)),
    ("header:from:asAddresses", ("from", "Addresses", False)),
    ("header:Resent-To:asAddresses:all", ("Resent-To", "Addresses", True)),
    ("header:To:asGroupedAddresses", ("To", "GroupedAddresses", False)),
    ("header:Subject:asText:all", ("Subject", "Text", True)),
    ("header:List-Id:asText", ("List-Id", "Text", False)),
    ("header:Message-ID:asMessageIds", ("Message-ID", "MessageIds", False)),
    ("header:Resent-Date:asDate", ("Resent-Date", "Date", False)),
    ("header:List-POST:asURLs", ("List-POST", "URLs", False)),
    ("header:X-Custom:asDate", ("X-Custom", "Date", False)),  # a field neither RFC defines takes any form
    ("header:Resent-Reply-To:asText", ("Resent-Reply-To", "Text", False)),
    ("header:Received:all", ("Received", "Raw", True)),
    ("header:Subject:asRaw", ("Subject", "Raw", False)),
])
def test_header_property_names_parse(prop, expected):
    assert tuple(parse_header_property(prop)) == expected


@pytest.mark.parametrize("prop", [
    "header:From:asDate",  # the RFC's own example of a forbidden form
    "header:From:asText", "header:Subject:asAddresses", "header:Date:asText", "header:Message-ID:asText",
    "header:List-Post:asText", "header:Received:asText", "header:Return-Path:asAddresses",
    "header:Comments:asDate", "header:References:asURLs",
    "header:From:all:asAddresses", "header:From:asAddresses:all:all", "header:From:asFoo", "header:From:",
    "header:", "header::asRaw", "header:Fr om", "header:Fröm", "From", "headers:From", "header:From:asaddresses",
])
def test_invalid_header_properties_are_rejected(prop):
    with pytest.raises(ValueError):
        parse_header_property(prop)


def test_allowed_forms_are_matched_case_insensitively():
    assert allowed_forms("FROM") == {"Raw", "Addresses", "GroupedAddresses"}
    assert allowed_forms("subject") == {"Raw", "Text"}
    assert allowed_forms("X-Anything") == set(h.FORMS)


def test_header_values_take_the_last_instance_or_all_of_them():
    headers = [("Received", " one"), ("Subject", " first"), ("received", " two")]
    assert header_value(headers, "RECEIVED") == " two"
    assert header_value(headers, "Received", all=True) == [" one", " two"]
    assert header_value(headers, "X-Missing") is None
    assert header_value(headers, "X-Missing", "Text", all=True) == []
    assert header_property(headers, "header:Subject:asText:all") == ["first"]


def test_convenience_properties_follow_their_header_forms():
    headers = [
        ("From", ' "A" <a@x.org>'), ("Sender", " s@x.org"), ("To", " b@x.org, c@x.org"), ("Cc", " d@x.org"),
        ("Bcc", " e@x.org"), ("Reply-To", " r@x.org"), ("Subject", " =?utf-8?q?Hi_=C3=A9?="),
        ("Date", " Tue, 1 Jul 2003 10:52:37 +0200"), ("Message-ID", " <m@x.org>"), ("In-Reply-To", " <p@x.org>"),
        ("References", " <o@x.org> <p@x.org>"), ("Subject", " second"),
    ]
    assert convenience_properties(headers) == {
        "messageId": ["m@x.org"], "inReplyTo": ["p@x.org"], "references": ["o@x.org", "p@x.org"],
        "sender": [{"name": None, "email": "s@x.org"}], "from": [{"name": "A", "email": "a@x.org"}],
        "to": [{"name": None, "email": "b@x.org"}, {"name": None, "email": "c@x.org"}],
        "cc": [{"name": None, "email": "d@x.org"}], "bcc": [{"name": None, "email": "e@x.org"}],
        "replyTo": [{"name": None, "email": "r@x.org"}], "subject": "second",
        "sentAt": "2003-07-01T10:52:37+02:00",
    }
    assert convenience_properties([], ["subject", "from"]) == {"subject": None, "from": None}


# -- base subject --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subject, expected", [
    ("Hello", "Hello"),
    ("Re: Hello", "Hello"),
    ("RE: re: Fwd: FW: Hello", "Hello"),
    ("Re[2]: Hello", "Hello"),
    ("Re [2]: Hello", "Hello"),
    ("Re2: Hello", "Re2: Hello"),  # only "re" + optional blob + ":" is a leader
    ("[list] Re: Hello", "Hello"),
    ("Re: [list] Hello", "Hello"),
    ("[list]", "[list]"),  # a blob that would leave nothing is kept (step 4)
    ("[a] [b]", "[b]"),
    ("Hello (fwd)", "Hello"),
    ("Hello (fwd) (FWD)  ", "Hello"),
    ("[Fwd: Re: Hello]", "Hello"),
    ("Re: [Fwd: [list] Hello (fwd)]", "Hello"),
    ("  Hello\t\r\n  world  ", "Hello world"),
    ("Review", "Review"),
    ("Re:", ""),
    ("", ""),
])
def test_base_subject(subject, expected):
    """RFC 5256 §2.1."""
    assert base_subject(subject) == expected


# -- charsets ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, charset, expected", [
    (b"caf\xc3\xa9", "utf-8", ("café", False)),
    (b"caf\xc3\xa9", "UTF8", ("café", False)),
    (b"caf\xe9", "iso-8859-1", ("café", False)),
    (b"\x93q\x94", "iso-8859-1", ("\u201cq\u201d", False)),  # read as Windows-1252, as senders mean
    (b"caf\xc3\xa9", "us-ascii", ("café", False)),  # undeclared UTF-8 is common and harmless
    (b"caf\xe9", "us-ascii", ("café", True)),
    (b"caf\xe9", None, ("café", True)),
    (b"caf\xc3(", "utf-8", ("caf\ufffd(", True)),
    (b"plain", "x-klingon", ("plain", True)),
    (b"caf\xc3\xa9", "x-klingon", ("café", True)),
    (b"abc", "base64", ("abc", True)),  # a bytes codec is not a charset
    (b"abc", "unicode_escape", ("abc", True)),
    (b"+2D3YAA-", "utf-7", ("\ufffd\ufffd", True)),  # lone surrogates would break JSON output
    (b"\x1b$B$3$s\x1b(B", "iso-2022-jp", ("こん", False)),
    (b"\xb0\xa1", "gb2312", ("啊", False)),
    (b"\xb0\xa1", "ks_c_5601-1987", ("가", False)),
])
def test_decode_charset(data, charset, expected):
    assert decode_charset(data, charset) == expected


# -- hostile input -------------------------------------------------------------------------------------------

def test_every_form_survives_random_garbage():
    rnd = random.Random(8621)
    alphabet = '<>@,;:."\\()[] \t\r\nab=?_\x00\x7f\ufffdé'
    samples = ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 60))) for _ in range(1500)]
    samples += ["=?utf-8?q?" + s + "?=" for s in samples[:200]] + ["=?utf-8?b?" + s + "?=" for s in samples[:200]]
    for raw in samples:
        for form in h.FORMS:
            orjson.dumps(h.parse_form(raw, form))  # JSON-able: no lone surrogates either
        base_subject(raw)


@pytest.mark.parametrize("raw", [
    " " + '"\\"' * 100_000,              # quotes that never close
    " " + "(" * 200_000,                 # comments that never close
    " " + "<" * 200_000,
    " " + ", ".join(f'"N{i}" <a{i}@x.org>' for i in range(20_000)),
    " " + "=?utf-8?q?a?= " * 50_000,
    " " + "a" * 1_000_000,
])
def test_parsed_forms_of_huge_values_stay_linear(raw):
    start = time.perf_counter()
    for form in h.FORMS:
        h.parse_form(raw, form)
    base_subject(raw)
    assert time.perf_counter() - start < 8  # about a second here; quadratic would be minutes
