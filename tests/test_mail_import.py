"""Email/import (RFC 8621 §4.8) and threading (§3) over HTTP, the hostile corpus, and import_messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jmaple.keys import RUNTIME
from jmaple.mail import storage
from test_mail_mailbox import MAIL_USING, call, error, mail_client, mailboxes

CORPUS = sorted((Path(__file__).parent / "corpus" / "mail").glob("*.eml"))


def message(subject: str = "Hello", message_id: str = "a@example.org", *, in_reply_to: str | None = None,
            references: str | None = None, body: str = "Hi there.\r\n", extra: str = "") -> bytes:
    head = (f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n")
    if in_reply_to:
        head += f"In-Reply-To: <{in_reply_to}>\r\n"
    if references:
        head += f"References: {references}\r\n"
    return (head + extra + "\r\n" + body).encode()


@pytest.fixture
async def mail(aiohttp_client, tmp_path):
    return await mail_client(aiohttp_client, tmp_path)


async def inbox(client) -> str:
    return (await mailboxes(client))["Inbox"]["id"]


async def import_raw(client, raw: bytes, **spec: Any) -> dict[str, Any]:
    blob = await client.upload(raw, "message/rfc822")
    box = spec.pop("mailboxIds", None) or {await inbox(client): True}
    return await call(client, "Email/import", {"emails": {"k": {"blobId": blob["blobId"], "mailboxIds": box,
                                                                  **spec}}})


async def imported(client, raw: bytes, **spec: Any) -> dict[str, Any]:
    result = await import_raw(client, raw, **spec)
    assert result["notCreated"] is None, result
    return result["created"]["k"]


async def test_import_creates_an_email_with_id_blob_thread_and_size(mail):
    """RFC 8621 §4.8: created has id, blobId, threadId and size; oldState and newState."""
    raw = message()
    blob = await mail.upload(raw, "message/rfc822")
    box = await inbox(mail)
    result = await call(mail, "Email/import", {"emails": {"k": {
        "blobId": blob["blobId"], "mailboxIds": {box: True}, "keywords": {"$Seen": True},
        "receivedAt": "2026-11-24T10:05:00Z"}}})
    created = result["created"]["k"]
    assert set(created) == {"id", "blobId", "threadId", "size"}
    assert created["blobId"] == blob["blobId"] and created["size"] == len(raw)
    assert result["oldState"] != result["newState"] and result["notCreated"] is None
    got = await call(mail, "Email/get", {"ids": [created["id"]],
                                         "properties": ["mailboxIds", "keywords", "receivedAt", "subject"]})
    assert got["list"] == [{"id": created["id"], "mailboxIds": {box: True}, "keywords": {"$seen": True},
                            "receivedAt": "2026-11-24T10:05:00Z", "subject": "Hello"}]
    assert got["state"] == result["newState"]
    boxes = await mailboxes(mail)
    assert boxes["Inbox"]["totalEmails"] == 1 and boxes["Inbox"]["unreadEmails"] == 0


async def test_import_back_reference_resolves_a_mailbox_created_earlier(mail):
    """RFC 8620 §5.3: "#creationId" keys of mailboxIds name a mailbox created in the same request."""
    blob = await mail.upload(message(), "message/rfc822")
    responses = await mail.calls(
        ("Mailbox/set", {"accountId": mail.account_id, "create": {"new": {"name": "Fresh"}}}),
        ("Email/import", {"accountId": mail.account_id, "emails": {"k": {
            "blobId": blob["blobId"], "mailboxIds": {"#new": True}}}}), using=MAIL_USING)
    assert responses[1][0] == "Email/import"
    email_id = responses[1][1]["created"]["k"]["id"]
    got = await call(mail, "Email/get", {"ids": [email_id], "properties": ["mailboxIds"]})
    assert got["list"][0]["mailboxIds"] == {responses[0][1]["created"]["new"]["id"]: True}


@pytest.mark.parametrize("spec,bad", [
    ({"blobId": "Bnope"}, "blobId"),
    ({"blobId": 7}, "blobId"),
    ({"mailboxIds": {}}, "mailboxIds"),
    ({"mailboxIds": {"Mnope": True}}, "mailboxIds"),
    ({"mailboxIds": ["x"]}, "mailboxIds"),
    ({"mailboxIds": "INBOX"}, "mailboxIds"),
    ({"mailboxIds": {"#unknown": True}}, "mailboxIds"),
    ({"keywords": {"$seen": False}}, "keywords"),
    ({"keywords": {"a b": True}}, "keywords"),
    ({"keywords": {"bad(": True}}, "keywords"),
    ({"keywords": {"x" * 256: True}}, "keywords"),
    ({"keywords": {"": True}}, "keywords"),
    ({"keywords": {"é": True}}, "keywords"),
    ({"keywords": ["$seen"]}, "keywords"),
    ({"receivedAt": "yesterday"}, "receivedAt"),
    ({"receivedAt": "2026-11-24T10:00:00+01:00"}, "receivedAt"),
    ({"receivedAt": 0}, "receivedAt"),
    ({"unknown": 1}, "unknown"),
])
async def test_import_rejects_invalid_properties(mail, spec, bad):
    """RFC 8621 §4.8: invalid blobId, mailboxIds or keywords are invalidProperties naming them."""
    blob = await mail.upload(message(), "message/rfc822")
    full = {"blobId": blob["blobId"], "mailboxIds": {await inbox(mail): True}, **spec}
    result = await call(mail, "Email/import", {"emails": {"k": full}})
    assert result["created"] is None
    assert result["notCreated"]["k"]["type"] == "invalidProperties"
    assert result["notCreated"]["k"]["properties"] == [bad]
    assert result["oldState"] == result["newState"]


async def test_import_of_a_blob_without_header_fields_is_invalid_email(mail):
    """RFC 8621 §4.8: what is not a message is invalidEmail."""
    result = await import_raw(mail, b"just some text\r\nwithout any header\r\n")
    assert result["notCreated"]["k"]["type"] == "invalidEmail"


async def test_import_of_another_users_upload_is_not_found(aiohttp_client, tmp_path):
    """RFC 8620 §6.1: a blob uploaded by someone else is not readable, so invalidProperties [blobId]."""
    alice = await mail_client(aiohttp_client, tmp_path / "a")
    blob = await alice.upload(message(), "message/rfc822")
    result = await call(alice, "Email/import", {"emails": {"k": {
        "blobId": blob["blobId"][:-1] + ("0" if blob["blobId"][-1] != "0" else "1"),
        "mailboxIds": {await inbox(alice): True}}}})
    assert result["notCreated"]["k"]["properties"] == ["blobId"]


@pytest.mark.parametrize("args", [
    {"emails": None}, {"emails": []}, {"emails": "x"}, {"ifInState": 5, "emails": {}}, {"other": 1, "emails": {}},
])
async def test_import_rejects_bad_arguments(mail, args):
    assert (await error(mail, "Email/import", args))["type"] == "invalidArguments"


async def test_import_if_in_state_mismatch(mail):
    assert (await error(mail, "Email/import", {"ifInState": "999", "emails": {}}))["type"] == "stateMismatch"


async def test_import_non_object_entry_is_invalid_properties(mail):
    result = await call(mail, "Email/import", {"emails": {"k": "nope"}})
    assert result["notCreated"]["k"]["type"] == "invalidProperties"


async def test_nul_bytes_are_dropped_and_the_new_blob_id_returned(mail):
    """RFC 8621 §4.8: a message the server fixes gets a blobId different from the upload's."""
    raw = message(body="a\x00b\r\n")
    blob = await mail.upload(raw, "message/rfc822")
    result = await call(mail, "Email/import", {"emails": {"k": {"blobId": blob["blobId"],
                                                                "mailboxIds": {await inbox(mail): True}}}})
    created = result["created"]["k"]
    assert created["blobId"] != blob["blobId"] and created["size"] == len(raw) - 1


async def test_receivedat_defaults_to_the_latest_received_header(mail):
    """RFC 8621 §4.8: receivedAt defaults to the most recent Received header field."""
    raw = message(extra="Received: from a by b; Mon, 23 Nov 2026 08:00:00 +0000\r\n"
                        "Received: from c by d; Sun, 22 Nov 2026 08:00:00 +0000\r\n")
    created = await imported(mail, raw)
    got = await call(mail, "Email/get", {"ids": [created["id"]], "properties": ["receivedAt"]})
    assert got["list"][0]["receivedAt"] == "2026-11-23T08:00:00Z"


async def test_the_whole_hostile_corpus_imports(mail):
    """Every corpus message imports or is cleanly invalidEmail; /get of all of it never fails."""
    assert CORPUS
    box = await inbox(mail)
    ids = []
    for path in CORPUS:
        blob = await mail.upload(path.read_bytes(), "message/rfc822")
        result = await call(mail, "Email/import", {"emails": {"k": {"blobId": blob["blobId"],
                                                                    "mailboxIds": {box: True}}}})
        if result["created"] is None:
            assert result["notCreated"]["k"]["type"] == "invalidEmail", (path.name, result)
        else:
            ids.append(result["created"]["k"]["id"])
    assert len(ids) >= len(CORPUS) - 2
    got = await call(mail, "Email/get", {
        "ids": ids, "properties": ["id", "headers", "bodyStructure", "bodyValues", "textBody", "htmlBody",
                                   "attachments", "preview", "hasAttachment", "from", "to", "subject", "sentAt",
                                   "messageId", "references", "header:List-Id:asText"],
        "fetchAllBodyValues": True, "maxBodyValueBytes": 100})
    assert len(got["list"]) == len(ids)
    runtime = mail.server.app[RUNTIME]
    async with runtime.db.read() as conn:
        assert await storage.recount(conn, mail.account_id) == await storage.stored_counts(conn, mail.account_id)


# --- Email/parse (§4.9) ---------------------------------------------------------------------------------------

async def test_parse_returns_an_email_without_storing_it(mail):
    """RFC 8621 §4.9: id, mailboxIds, keywords, receivedAt and threadId are null; nothing is stored."""
    raw = message("Parsed", "p@x")
    blob = await mail.upload(raw, "message/rfc822")
    junk = await mail.upload(b"no header at all", "text/plain")
    result = await call(mail, "Email/parse", {"blobIds": [blob["blobId"], junk["blobId"], "Bnope"],
                                              "properties": ["id", "blobId", "threadId", "mailboxIds", "keywords",
                                                             "receivedAt", "size", "subject", "bodyValues",
                                                             "textBody"],
                                              "fetchTextBodyValues": True})
    email = result["parsed"][blob["blobId"]]
    assert email["id"] is None and email["threadId"] is None and email["mailboxIds"] is None
    assert email["keywords"] is None and email["receivedAt"] is None
    assert email["blobId"] == blob["blobId"] and email["size"] == len(raw) and email["subject"] == "Parsed"
    assert email["bodyValues"][email["textBody"][0]["partId"]]["value"] == "Hi there.\n"
    assert result["notParsable"] == [junk["blobId"]] and result["notFound"] == ["Bnope"]
    assert (await call(mail, "Email/query", {}))["ids"] == []


async def test_parse_default_properties(mail):
    blob = await mail.upload(message(), "message/rfc822")
    email = (await call(mail, "Email/parse", {"blobIds": [blob["blobId"]]}))["parsed"][blob["blobId"]]
    assert set(email) == {"messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo",
                          "subject", "sentAt", "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody",
                          "attachments"}


@pytest.mark.parametrize("args", [{}, {"blobIds": None}, {"blobIds": "x"}, {"blobIds": [], "properties": ["x"]},
                                  {"blobIds": [], "ids": []}])
async def test_parse_rejects_bad_arguments(mail, args):
    assert (await error(mail, "Email/parse", args))["type"] == "invalidArguments"


async def test_a_message_with_many_identical_parts_stores_their_content_once(mail):
    """Every leaf part gets a blobId; parts with the same content share it (one write)."""
    parts = "".join("--b\r\nContent-Type: application/octet-stream\r\n\r\nsame\r\n" for _ in range(300))
    raw = message(extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n',
                  body=parts + "--b--\r\n")
    created = await imported(mail, raw)
    got = await call(mail, "Email/get", {"ids": [created["id"]], "properties": ["attachments"]})
    attachments = got["list"][0]["attachments"]
    assert len(attachments) == 300 and len({a["blobId"] for a in attachments}) == 1
