"""Email/get and Email/changes (RFC 8621 §4.1-§4.3) over HTTP."""

from __future__ import annotations

import base64

import orjson
import pytest

from jmaple.keys import RUNTIME
from test_mail_import import imported, mail, message  # noqa: F401  (fixture)
from test_mail_mailbox import call, error

MULTIPART = (
    "From: \"Alice A.\" <alice@example.org>\r\nTo: bob@example.org, Team: carol@example.org;\r\n"
    "Subject: =?UTF-8?Q?Caf=C3=A9?= report\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\n"
    "Message-ID: <m1@example.org>\r\nList-Post: <mailto:list@example.org>\r\nX-Custom: one\r\nX-Custom: two\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
    "--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
    "--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain caf\xe9 text body.\r\n"
    "--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML <b>caf\xe9</b> body</p>\r\n"
    "--inner--\r\n"
    "--outer\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\n"
    "Content-Disposition: attachment; filename=\"r.pdf\"\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"%PDF-1.4 data").decode() + "\r\n"
    "--outer--\r\n").encode("utf-8")


@pytest.fixture
async def multipart(mail):  # noqa: F811
    return await imported(mail, MULTIPART, receivedAt="2026-11-24T09:00:00Z", keywords={"$flagged": True})


async def test_get_default_properties(mail, multipart):  # noqa: F811
    """RFC 8621 §4.2: without properties, the default list is returned."""
    got = await call(mail, "Email/get", {"ids": [multipart["id"]]})
    email = got["list"][0]
    assert set(email) == {"id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId",
                          "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject",
                          "sentAt", "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody", "attachments"}
    assert email["subject"] == "Café report"
    assert email["from"] == [{"name": "Alice A.", "email": "alice@example.org"}]
    assert email["to"] == [{"name": None, "email": "bob@example.org"}, {"name": None, "email": "carol@example.org"}]
    assert email["messageId"] == ["m1@example.org"] and email["inReplyTo"] is None
    assert email["sentAt"] == "2026-11-24T10:00:00+01:00"
    assert email["hasAttachment"] is True
    assert email["preview"] == "Plain café text body."
    assert email["bodyValues"] == {}
    assert [p["type"] for p in email["textBody"]] == ["text/plain"]
    assert [p["type"] for p in email["htmlBody"]] == ["text/html"]
    assert [p["name"] for p in email["attachments"]] == ["r.pdf"]
    assert email["keywords"] == {"$flagged": True}
    assert set(email["textBody"][0]) == {"partId", "blobId", "size", "name", "type", "charset", "disposition",
                                         "cid", "language", "location"}


async def test_every_body_part_downloads_by_its_blob_id(mail, multipart):  # noqa: F811
    """RFC 8621 §4.1.4: a leaf part's blobId is its decoded content."""
    got = await call(mail, "Email/get", {"ids": [multipart["id"]], "properties": ["attachments", "textBody"]})
    pdf = got["list"][0]["attachments"][0]
    resp = await mail.get(f"/jmap/download/{mail.account_id}/{pdf['blobId']}/r.pdf?accept=application/pdf",
                          headers=mail.headers())
    assert resp.status == 200 and await resp.read() == b"%PDF-1.4 data"
    text = got["list"][0]["textBody"][0]
    resp = await mail.get(f"/jmap/download/{mail.account_id}/{text['blobId']}/t.txt?accept=text/plain",
                          headers=mail.headers())
    assert await resp.read() == "Plain café text body.".encode()  # the CRLF belongs to the boundary
    raw = await mail.get(f"/jmap/download/{mail.account_id}/{multipart['blobId']}/m.eml?accept=message/rfc822",
                         headers=mail.headers())
    assert await raw.read() == MULTIPART


async def test_body_values_fetch_flags_and_truncation(mail, multipart):  # noqa: F811
    """RFC 8621 §4.2: fetchTextBodyValues, fetchHTMLBodyValues, fetchAllBodyValues, maxBodyValueBytes."""
    async def values(**flags):
        got = await call(mail, "Email/get", {"ids": [multipart["id"]], "properties": ["bodyValues"], **flags})
        return got["list"][0]["bodyValues"]

    text = await values(fetchTextBodyValues=True)
    assert text == {"1.1": {"value": "Plain café text body.", "isEncodingProblem": False, "isTruncated": False}}
    html = await values(fetchHTMLBodyValues=True)
    assert list(html) == ["1.2"]
    assert set(await values(fetchAllBodyValues=True)) == {"1.1", "1.2"}  # the PDF is not text
    cut = await values(fetchTextBodyValues=True, maxBodyValueBytes=10)
    assert cut["1.1"] == {"value": "Plain caf", "isEncodingProblem": False, "isTruncated": True}


async def test_max_body_value_bytes_zero_means_no_truncation(mail, multipart):  # noqa: F811
    """RFC 8621 §4.2: maxBodyValueBytes "UnsignedInt" (default: 0); 0 means values are not truncated."""
    args = {"ids": [multipart["id"]], "properties": ["bodyValues"], "fetchTextBodyValues": True}
    default = (await call(mail, "Email/get", args))["list"][0]["bodyValues"]
    zero = (await call(mail, "Email/get", {**args, "maxBodyValueBytes": 0}))["list"][0]["bodyValues"]
    assert zero == default == {
        "1.1": {"value": "Plain café text body.", "isEncodingProblem": False, "isTruncated": False}}


async def test_header_properties_keep_the_requested_capitalisation(mail, multipart):  # noqa: F811
    """RFC 8621 §4.1.3: header:{name}:as{form}[:all], named as requested."""
    got = await call(mail, "Email/get", {"ids": [multipart["id"]], "properties": [
        "header:x-CUSTOM", "header:X-Custom:all", "header:Subject:asText", "header:List-Post:asURLs",
        "header:To:asGroupedAddresses", "header:Date:asDate", "header:Message-Id:asMessageIds", "header:Missing"]})
    email = got["list"][0]
    assert email["header:x-CUSTOM"] == " two"
    assert email["header:X-Custom:all"] == [" one", " two"]
    assert email["header:Subject:asText"] == "Café report"
    assert email["header:List-Post:asURLs"] == ["mailto:list@example.org"]
    assert email["header:To:asGroupedAddresses"][1]["name"] == "Team"
    assert email["header:Date:asDate"] == "2026-11-24T10:00:00+01:00"
    assert email["header:Message-Id:asMessageIds"] == ["m1@example.org"]
    assert email["header:Missing"] is None


async def test_headers_and_body_structure_with_body_properties(mail, multipart):  # noqa: F811
    got = await call(mail, "Email/get", {"ids": [multipart["id"]], "properties": ["headers", "bodyStructure"],
                                         "bodyProperties": ["partId", "type", "subParts", "header:Content-Type"]})
    email = got["list"][0]
    assert email["headers"][0] == {"name": "From", "value": " \"Alice A.\" <alice@example.org>"}
    structure = email["bodyStructure"]
    assert structure["type"] == "multipart/mixed" and structure["partId"] is None
    assert [p["type"] for p in structure["subParts"]] == ["multipart/alternative", "application/pdf"]
    assert structure["subParts"][1]["header:Content-Type"] == " application/pdf; name=\"r.pdf\""


CONVENIENCE = ["messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject",
               "sentAt"]


@pytest.mark.parametrize("stored", [
    pytest.param(lambda p: {"m": p["m"], "b": p["b"]}, id="stored-before-they-were-kept"),
    pytest.param(lambda p: {**p, "c": {k: "stale" for k in p["c"]}, "cv": 0}, id="stored-by-an-older-parser"),
])
async def test_convenience_properties_of_an_older_stored_email_come_from_its_header_fields(
        mail, multipart, stored):  # noqa: F811
    """RFC 8621 §4.1.3: the convenience properties are the header fields parsed; whatever was stored of them
    at import by an older version does not change what a client sees."""
    args = {"ids": [multipart["id"]], "properties": CONVENIENCE}
    fresh = (await call(mail, "Email/get", args))["list"][0]
    assert fresh["subject"] == "Café report" and fresh["messageId"] == ["m1@example.org"]
    async with mail.app[RUNTIME].db.write() as tx:
        parsed = orjson.loads(await tx.value("SELECT parsed FROM emails WHERE id = ?", (multipart["id"],)))
        await tx.execute("UPDATE emails SET parsed = ? WHERE id = ?",
                         (orjson.dumps(stored(parsed)), multipart["id"]))
    assert (await call(mail, "Email/get", args))["list"] == [fresh]


@pytest.mark.parametrize("args", [
    {"properties": ["header:Subject:asAddresses"]},
    {"properties": ["header:From:asDate"]},
    {"properties": ["header:X:asNothing"]},
    {"properties": ["header:"]},
    {"properties": ["nope"]},
    {"properties": "id"},
    {"properties": [1]},
    {"bodyProperties": ["nope"]},
    {"bodyProperties": "partId"},
    {"ids": "x"},
    {"ids": [1]},
    {"fetchTextBodyValues": "yes"},
    {"maxBodyValueBytes": -1},
    {"maxBodyValueBytes": "10"},
    {"maxBodyValueBytes": 2**60},
    {"other": True},
])
async def test_get_rejects_bad_arguments(mail, args):  # noqa: F811
    """RFC 8621 §4.2: a form not allowed for a field, unknown properties, bad types: invalidArguments."""
    assert (await error(mail, "Email/get", {"ids": [], **args}))["type"] == "invalidArguments"


async def test_unknown_ids_are_not_found(mail, multipart):  # noqa: F811
    got = await call(mail, "Email/get", {"ids": ["Enope", multipart["id"]], "properties": ["id"]})
    assert got["list"] == [{"id": multipart["id"]}] and got["notFound"] == ["Enope"]


async def test_get_with_ids_null_returns_every_email(mail, multipart):  # noqa: F811
    got = await call(mail, "Email/get", {"ids": None, "properties": ["id"]})
    assert got["list"] == [{"id": multipart["id"]}]


async def test_email_and_thread_changes(mail):  # noqa: F811
    """RFC 8621 §4.3, §3.2: Email/changes and Thread/changes report the import."""
    state = (await call(mail, "Email/get", {"ids": []}))["state"]
    thread_state = (await call(mail, "Thread/get", {"ids": []}))["state"]
    created = await imported(mail, message())
    changes = await call(mail, "Email/changes", {"sinceState": state})
    assert changes["created"] == [created["id"]] and changes["updated"] == [] and changes["destroyed"] == []
    thread_changes = await call(mail, "Thread/changes", {"sinceState": thread_state})
    assert thread_changes["created"] == [created["threadId"]]
    assert (await error(mail, "Email/changes", {"sinceState": "x"}))["type"] == "cannotCalculateChanges"
