"""Email/import (RFC 8621 §4.8) and threading (§3) over HTTP, the hostile corpus, and import_messages."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest

from conftest import add_user, basic, share
from jmaple.app import open_runtime
from jmaple.config import Config
from jmaple.keys import RUNTIME
from jmaple.mail import importer, storage
from jmaple.mail.ingest import ImportItem, import_messages
from jmaple.users import create_user
from test_mail_mailbox import MAIL_USING, call, error, mail_client, mail_plugins, mailboxes

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

async def test_parse_of_properties_without_blob_ids_answers_them_alone(mail):
    """Email/parse asked for no property that holds a blobId: the same answers, nothing else made."""
    raw = message("Only the subject", "p@x").replace(b"Hi there.", b"Hi\x00 there.")
    blob = await mail.upload(raw, "message/rfc822")
    result = await call(mail, "Email/parse", {"blobIds": [blob["blobId"]], "properties": ["subject", "size"]})
    assert result["parsed"] == {blob["blobId"]: {"subject": "Only the subject", "size": len(raw) - 1}}
    assert not result["notParsable"] and not result["notFound"]


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


INNER = ("From: Inner <inner@example.org>\r\nSubject: Inner\r\nMIME-Version: 1.0\r\n"
         "Content-Type: multipart/mixed; boundary=\"in\"\r\n\r\n"
         "--in\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nInner text.\r\n"
         "--in\r\nContent-Type: application/pdf; name=\"inner.pdf\"\r\n"
         "Content-Disposition: attachment; filename=\"inner.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         + base64.b64encode(b"%PDF-1.4 inner").decode() + "\r\n--in--\r\n")
FORWARD = message("Fwd: Inner", "fwd@x",
                  extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="out"\r\n',
                  body="--out\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
                       "--out\r\nContent-Type: message/rfc822\r\n"
                       "Content-Disposition: attachment; filename=\"f.eml\"\r\n\r\n" + INNER + "\r\n--out--\r\n")


async def download(client, blob_id: str, account_id: str | None = None) -> bytes | None:
    resp = await client.get(f"/jmap/download/{account_id or client.account_id}/{blob_id}/x",
                            headers=client.headers())
    return await resp.read() if resp.status == 200 else None


def leaves(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [part] if part["subParts"] is None else [p for sub in part["subParts"] for p in leaves(sub)]


async def test_every_part_of_an_attached_message_parsed_from_its_blob_downloads(mail):
    """RFC 8621 §4.1.4: blobId is null "if, and only if, the part is of type multipart/*"; §4.9: Email/parse
    of the blob of an attached message (message/rfc822) gives its parts blobIds that download their decoded
    content, although parsing stores no Email."""
    outer = await imported(mail, FORWARD)
    got = await call(mail, "Email/get", {"ids": [outer["id"]], "properties": ["attachments"]})
    attached = got["list"][0]["attachments"][0]
    assert attached["type"] == "message/rfc822"
    assert await download(mail, attached["blobId"]) == INNER.encode()
    result = await call(mail, "Email/parse", {"blobIds": [attached["blobId"]],
                                              "properties": ["blobId", "subject", "bodyStructure", "attachments",
                                                             "textBody", "bodyValues"],
                                              "fetchTextBodyValues": True})
    email = result["parsed"][attached["blobId"]]
    assert email["subject"] == "Inner" and email["blobId"] == attached["blobId"]
    parts = leaves(email["bodyStructure"])
    assert [p["type"] for p in parts] == ["text/plain", "application/pdf"]
    assert all(p["blobId"] is not None for p in parts)
    assert email["bodyStructure"]["blobId"] is None   # multipart/mixed
    pdf = email["attachments"][0]
    assert pdf["name"] == "inner.pdf" and pdf["blobId"] == parts[1]["blobId"]
    assert await download(mail, pdf["blobId"]) == b"%PDF-1.4 inner"
    assert await download(mail, email["textBody"][0]["blobId"]) == b"Inner text."
    assert email["bodyValues"] == {"1": {"value": "Inner text.", "isEncodingProblem": False, "isTruncated": False}}
    # Nothing was stored but the blobs: still one Email in the account.
    assert (await call(mail, "Email/query", {}))["ids"] == [outer["id"]]


async def test_parse_of_an_upload_gives_downloadable_part_blobs_to_the_caller_only(aiohttp_client, tmp_path):
    """RFC 8620 §6.1: the part blobs Email/parse makes readable are the caller's, like an upload."""
    mail = await mail_client(aiohttp_client, tmp_path)
    bob = await add_user(mail, "bob@example.org")
    await share(mail, "bob@example.org", "alice@example.org", may_write=True)
    blob = await mail.upload(FORWARD, "message/rfc822")
    result = await call(mail, "Email/parse", {"blobIds": [blob["blobId"]], "properties": ["bodyStructure"]})
    parts = leaves(result["parsed"][blob["blobId"]]["bodyStructure"])
    assert [p["type"] for p in parts] == ["text/plain", "message/rfc822"]
    assert await download(mail, parts[0]["blobId"]) == b"See attached."
    assert await download(mail, parts[1]["blobId"]) == INNER.encode()
    mail.auth = basic("bob@example.org")
    assert await download(mail, parts[0]["blobId"]) is None
    assert bob.account_id != mail.account_id


async def test_parse_of_a_blob_with_nul_octets_is_consistent(mail):
    """RFC 8621 §4.9 with §4.8: the message is parsed as it would be imported, without its NUL octets; its
    bodyValues come from those octets, and blobId and size are those of that message (which downloads)."""
    raw = ("From: a\x00lice@example.org\r\nX-Pad: \x00\x00\x00\x00\x00\x00\x00\x00\r\nSubject: Nul\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n"
           "--b\r\nContent-Type: text/plain\r\n\r\nPlain \x00text.\r\n"
           "--b\r\nContent-Type: text/html\r\n\r\n<p>HTML text.</p>\r\n--b--\r\n").encode()
    fixed = raw.replace(b"\x00", b"")
    blob = await mail.upload(raw, "message/rfc822")
    result = await call(mail, "Email/parse", {"blobIds": [blob["blobId"]],
                                              "properties": ["blobId", "size", "bodyValues", "textBody", "htmlBody"],
                                              "fetchAllBodyValues": True})
    email = result["parsed"][blob["blobId"]]
    assert email["bodyValues"] == {
        "1": {"value": "Plain text.", "isEncodingProblem": False, "isTruncated": False},
        "2": {"value": "<p>HTML text.</p>", "isEncodingProblem": False, "isTruncated": False}}
    assert email["size"] == len(fixed) and email["blobId"] != blob["blobId"]
    assert await download(mail, email["blobId"]) == fixed
    assert await download(mail, email["textBody"][0]["blobId"]) == b"Plain text."
    created = await imported(mail, raw)
    assert (created["blobId"], created["size"]) == (email["blobId"], email["size"])


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


# --- maxSizeAttachmentsPerEmail (§1.3.1) ------------------------------------------------------------------------

def with_attachment(size: int, message_id: str) -> bytes:
    data = base64.b64encode(b"x" * size).decode()
    return message("Attached", message_id,
                   extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n',
                   body="--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
                        "--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment\r\n"
                        "Content-Transfer-Encoding: base64\r\n\r\n" + data + "\r\n--b--\r\n")


async def test_import_and_copy_refuse_attachments_over_the_limit_as_too_large(aiohttp_client, tmp_path):
    """RFC 8621 §1.3.1 maxSizeAttachmentsPerEmail: "the maximum total size of attachments, in octets, allowed
    for a single Email object" (unencoded); §4.8: each import that fails gets its SetError, here the standard
    tooLarge (RFC 8620 §5.3), and so does a copy (§4.7)."""
    mail = await mail_client(aiohttp_client, tmp_path, max_size_attachments_per_email=1000)
    box = await inbox(mail)
    small = await mail.upload(with_attachment(1000, "small@x"), "message/rfc822")
    large = await mail.upload(with_attachment(1001, "large@x"), "message/rfc822")
    result = await call(mail, "Email/import", {"emails": {
        "small": {"blobId": small["blobId"], "mailboxIds": {box: True}},
        "large": {"blobId": large["blobId"], "mailboxIds": {box: True}}}})
    assert list(result["created"]) == ["small"]
    assert result["notCreated"]["large"]["type"] == "tooLarge"
    assert (await call(mail, "Email/query", {}))["ids"] == [result["created"]["small"]["id"]]

    # A message that got in another way (delivery, `jmapled import`) cannot be copied to an account.
    runtime = mail.app[RUNTIME]
    async with runtime.db.write() as tx:
        (stored,) = await import_messages(tx, runtime, mail.account_id,
                                          [ImportItem(with_attachment(5000, "old@x"), (box,))])
    bob = await add_user(mail, "bob@example.org")
    await share(mail, "bob@example.org", "alice@example.org", may_write=False)
    mail.auth, mail.account_id = basic("bob@example.org"), bob.account_id
    bob_box = await inbox(mail)
    copied = await call(mail, "Email/copy", {"fromAccountId": result["accountId"],
                                             "create": {"a": {"id": stored.id, "mailboxIds": {bob_box: True}},
                                                        "b": {"id": result["created"]["small"]["id"],
                                                              "mailboxIds": {bob_box: True}}}})
    assert list(copied["created"]) == ["b"] and copied["notCreated"]["a"]["type"] == "tooLarge"


async def test_jmapled_import_keeps_messages_over_the_attachment_limit(tmp_path):
    """maxSizeAttachmentsPerEmail bounds what a client adds through JMAP (RFC 8621 §1.3.1 describes it as a
    limit for the client to enforce); an operator importing an archive keeps every message."""
    config = Config.for_tests(data_dir=tmp_path / "data",
                              capabilities={"mail": {"max_size_attachments_per_email": 100}})
    mbox = tmp_path / "old.mbox"
    mbox.write_bytes(b"From bob@example.org Tue Mar  3 10:00:00 2026\n" + with_attachment(5000, "big@x"))
    async with open_runtime(config, mail_plugins()) as runtime:
        user = await create_user(runtime, "alice@example.org", "Alice", "correct horse battery staple")
        report = await importer.run_import(runtime, user.account_id, mbox, err=io.StringIO())
        assert (report.imported, report.failed) == (1, [])
