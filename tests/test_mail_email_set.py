"""Email/set (RFC 8621 §4.6): updates of mailboxIds and keywords, destroy, create; counts stay right."""

from __future__ import annotations

import random

import pytest

from jmaple.keys import RUNTIME
from jmaple.mail import storage
from test_mail_import import imported, inbox, mail, message  # noqa: F401  (fixture)
from test_mail_mailbox import call, error, mailboxes


async def get(client, email_id: str, *props: str) -> dict:
    got = await call(client, "Email/get", {"ids": [email_id], "properties": list(props)})
    return got["list"][0]


async def counts_are_consistent(client) -> None:
    runtime = client.server.app[RUNTIME]
    async with runtime.db.read() as conn:
        assert await storage.recount(conn, client.account_id) == await storage.stored_counts(conn, client.account_id)


@pytest.fixture
async def one(mail):  # noqa: F811
    return await imported(mail, message(), keywords={"$flagged": True})


async def test_keyword_patches_and_whole_replacement(mail, one):  # noqa: F811
    """RFC 8621 §4.6: keywords change whole or by patch, and come back lower-case."""
    result = await call(mail, "Email/set", {"update": {one["id"]: {"keywords/$seen": True,
                                                                   "keywords/$flagged": None}}})
    assert result["updated"] == {one["id"]: None} and result["oldState"] != result["newState"]
    assert (await get(mail, one["id"], "keywords"))["keywords"] == {"$seen": True}
    assert (await mailboxes(mail))["Inbox"]["unreadEmails"] == 0
    await call(mail, "Email/set", {"update": {one["id"]: {"keywords": {"Work": True, "$answered": True}}}})
    assert (await get(mail, one["id"], "keywords"))["keywords"] == {"work": True, "$answered": True}
    await counts_are_consistent(mail)


async def test_a_keyword_stored_in_lower_case_is_returned_in_updated(mail, one):  # noqa: F811
    """RFC 8620 §5.3 updated: "a Foo object containing any property that changed in a way *not* explicitly
    requested by the PatchObject", or null. Keywords are stored lower-case (RFC 8621 §4.1.1), so a patch
    naming $Seen or $Flagged gets the whole keywords back."""
    result = await call(mail, "Email/set", {"update": {one["id"]: {"keywords/$Seen": True,
                                                                   "keywords/$flagged": None}}})
    assert result["updated"] == {one["id"]: {"keywords": {"$seen": True}}}
    result = await call(mail, "Email/set", {"update": {one["id"]: {"keywords": {"Work": True, "$seen": True}}}})
    assert result["updated"] == {one["id"]: {"keywords": {"$seen": True, "work": True}}}
    assert (await get(mail, one["id"], "keywords"))["keywords"] == {"$seen": True, "work": True}
    result = await call(mail, "Email/set", {"update": {one["id"]: {"keywords/$Flagged": None}}})
    assert result["updated"] == {one["id"]: {"keywords": {"$seen": True, "work": True}}}
    result = await call(mail, "Email/set", {"update": {one["id"]: {"keywords/$flagged": True}}})
    assert result["updated"] == {one["id"]: None}


async def test_mailbox_moves_by_patch_and_whole(mail, one):  # noqa: F811
    boxes = await mailboxes(mail)
    inbox_id, archive, trash = boxes["Inbox"]["id"], boxes["Archive"]["id"], boxes["Trash"]["id"]
    await call(mail, "Email/set", {"update": {one["id"]: {f"mailboxIds/{archive}": True,
                                                          f"mailboxIds/{inbox_id}": None}}})
    assert (await get(mail, one["id"], "mailboxIds"))["mailboxIds"] == {archive: True}
    await call(mail, "Email/set", {"update": {one["id"]: {"mailboxIds": {trash: True, inbox_id: True}}}})
    assert (await get(mail, one["id"], "mailboxIds"))["mailboxIds"] == {trash: True, inbox_id: True}
    boxes = await mailboxes(mail)
    assert boxes["Archive"]["totalEmails"] == 0 and boxes["Trash"]["totalEmails"] == 1
    await counts_are_consistent(mail)


@pytest.mark.parametrize("patch,kind,prop", [
    ({"mailboxIds": {}}, "invalidProperties", "mailboxIds"),
    ({"mailboxIds": {"Mnope": True}}, "invalidProperties", "mailboxIds"),
    ({"mailboxIds": ["x"]}, "invalidProperties", "mailboxIds"),
    ({"mailboxIds/Mnope": True}, "invalidProperties", "mailboxIds"),
    ({"mailboxIds/x y": True}, "invalidProperties", "mailboxIds"),
    ({"keywords/$seen": False}, "invalidProperties", "keywords"),
    ({"keywords/a(b": True}, "invalidProperties", "keywords"),
    ({"keywords": {"$seen": 1}}, "invalidProperties", "keywords"),
    ({"keywords": None}, "invalidProperties", "keywords"),
    ({"subject": "changed"}, "invalidProperties", "subject"),
    ({"receivedAt": "2026-01-01T00:00:00Z"}, "invalidProperties", "receivedAt"),
    ({"id": "x"}, "invalidProperties", "id"),
    ({"keywords": {}, "keywords/$seen": True}, "invalidPatch", None),
    ({"keywords/a/b": True}, "invalidPatch", None),
])
async def test_update_rejects_bad_patches(mail, one, patch, kind, prop):  # noqa: F811
    result = await call(mail, "Email/set", {"update": {one["id"]: patch}})
    error_ = result["notUpdated"][one["id"]]
    assert error_["type"] == kind
    if prop:
        assert error_["properties"] == [prop]


async def test_removing_the_last_mailbox_is_refused(mail, one):  # noqa: F811
    """RFC 8621 §4.1.1: an Email is always in at least one mailbox."""
    box = await inbox(mail)
    result = await call(mail, "Email/set", {"update": {one["id"]: {f"mailboxIds/{box}": None}}})
    assert result["notUpdated"][one["id"]]["properties"] == ["mailboxIds"]


async def test_too_many_mailboxes_and_keywords(aiohttp_client, tmp_path):
    from test_mail_mailbox import mail_client
    client = await mail_client(aiohttp_client, tmp_path, max_mailboxes_per_email=1)
    created = await imported(client, message())
    boxes = await mailboxes(client)
    result = await call(client, "Email/set", {"update": {created["id"]: {
        f"mailboxIds/{boxes['Archive']['id']}": True}}})
    assert result["notUpdated"][created["id"]]["type"] == "tooManyMailboxes"
    result = await call(client, "Email/set", {"update": {created["id"]: {
        "keywords": {f"k{n}": True for n in range(1001)}}}})
    assert result["notUpdated"][created["id"]]["type"] == "tooManyKeywords"


async def test_unknown_ids_are_not_found(mail):  # noqa: F811
    result = await call(mail, "Email/set", {"update": {"Enope": {"keywords": {}}}, "destroy": ["Enope"]})
    assert result["notUpdated"] == {"Enope": {"type": "notFound"}}
    assert result["notDestroyed"] == {"Enope": {"type": "notFound"}}


async def test_destroy_removes_the_email_and_its_thread(mail, one):  # noqa: F811
    """RFC 8621 §3: a thread whose last Email goes is destroyed."""
    thread_state = (await call(mail, "Thread/get", {"ids": []}))["state"]
    result = await call(mail, "Email/set", {"destroy": [one["id"]]})
    assert result["destroyed"] == [one["id"]]
    assert (await call(mail, "Email/get", {"ids": [one["id"]]}))["notFound"] == [one["id"]]
    assert (await call(mail, "Thread/get", {"ids": [one["threadId"]]}))["notFound"] == [one["threadId"]]
    thread_changes = await call(mail, "Thread/changes", {"sinceState": thread_state})
    assert thread_changes["destroyed"] == [one["threadId"]]
    assert (await mailboxes(mail))["Inbox"]["totalEmails"] == 0
    await counts_are_consistent(mail)


@pytest.mark.parametrize("args,kind", [
    ({"update": []}, "invalidArguments"),
    ({"destroy": "x"}, "invalidArguments"),
    ({"create": 5}, "invalidArguments"),
    ({"ifInState": "999"}, "stateMismatch"),
    ({"other": 1}, "invalidArguments"),
])
async def test_set_rejects_bad_arguments(mail, args, kind):  # noqa: F811
    assert (await error(mail, "Email/set", args))["type"] == kind


async def test_counts_stay_consistent_under_random_changes(mail):  # noqa: F811
    rng = random.Random(4)
    boxes = [b["id"] for b in (await mailboxes(mail)).values()]
    ids = []
    for n in range(12):
        made = await imported(mail, message(rng.choice(["A", "Re: A", "B"]), f"{n}@x",
                                            in_reply_to=f"{rng.randrange(n)}@x" if n else None))
        ids.append(made["id"])
    for _ in range(40):
        target = rng.choice(ids)
        choice = rng.random()
        if choice < 0.4:
            patch = {f"keywords/{rng.choice(['$seen', '$draft', 'x'])}": rng.choice([True, None])}
        elif choice < 0.8:
            patch = {"mailboxIds": {b: True for b in rng.sample(boxes, rng.randint(1, 3))}}
        else:
            await call(mail, "Email/set", {"destroy": [target]})
            continue
        await call(mail, "Email/set", {"update": {target: patch}})
    await counts_are_consistent(mail)


# --- create (§4.6) --------------------------------------------------------------------------------------------

async def create(client, spec: dict, **extra) -> dict:
    box = await inbox(client)
    return await call(client, "Email/set", {"create": {"c": {"mailboxIds": {box: True}, **spec}}, **extra})


async def test_create_from_text_html_and_attachment(mail):  # noqa: F811
    """RFC 8621 §4.6: textBody, htmlBody and attachments with blobIds make a correct MIME message."""
    blob = await mail.upload(b"\x00\x01binary", "application/octet-stream")
    result = await create(mail, {
        "from": [{"name": "Élise", "email": "elise@example.org"}], "to": [{"email": "bob@example.org"}],
        "subject": "Résumé attached", "keywords": {"$draft": True, "$seen": True},
        "header:X-Mailer:asText": "jmaple tests",
        "bodyValues": {"t": {"value": "Hello Bob,\nsee attached. ✓"}, "h": {"value": "<p>Hello <b>Bob</b></p>"}},
        "textBody": [{"partId": "t", "type": "text/plain"}], "htmlBody": [{"partId": "h", "type": "text/html"}],
        "attachments": [{"blobId": blob["blobId"], "type": "application/pdf", "name": "cv é.pdf"}]})
    created = result["created"]["c"]
    assert set(created) == {"id", "blobId", "threadId", "size"}
    email = (await call(mail, "Email/get", {"ids": [created["id"]], "fetchAllBodyValues": True, "properties": [
        "from", "to", "subject", "sentAt", "messageId", "keywords", "textBody", "htmlBody", "attachments",
        "bodyValues", "hasAttachment", "header:X-Mailer:asText", "header:MIME-Version"]}))["list"][0]
    assert email["from"] == [{"name": "Élise", "email": "elise@example.org"}]
    assert email["to"] == [{"name": None, "email": "bob@example.org"}]
    assert email["subject"] == "Résumé attached" and email["header:X-Mailer:asText"] == "jmaple tests"
    assert email["sentAt"] is not None and len(email["messageId"]) == 1
    assert email["keywords"] == {"$draft": True, "$seen": True}
    assert email["header:MIME-Version"] == " 1.0"
    text_id = email["textBody"][0]["partId"]
    assert email["bodyValues"][text_id]["value"] == "Hello Bob,\nsee attached. ✓"
    assert email["htmlBody"][0]["type"] == "text/html"
    attachment = email["attachments"][0]
    assert attachment["name"] == "cv é.pdf" and attachment["type"] == "application/pdf"
    download = await mail.get(f"/jmap/download/{mail.account_id}/{attachment['blobId']}/x?accept=application/pdf",
                              headers=mail.headers())
    assert await download.read() == b"\x00\x01binary"
    raw = await mail.get(f"/jmap/download/{mail.account_id}/{created['blobId']}/m.eml?accept=message/rfc822",
                         headers=mail.headers())
    data = await raw.read()
    assert b"\r\nDate: " in data and b"\r\nMessage-ID: <" in data and b"\n" not in data.replace(b"\r\n", b"")
    import email as stdlib_email
    from email import policy
    parsed = stdlib_email.message_from_bytes(data, policy=policy.default)
    assert parsed.get_content_type() == "multipart/mixed" and parsed.defects == []


async def test_create_from_body_structure(mail):  # noqa: F811
    result = await create(mail, {
        "subject": "structured", "messageId": ["own@example.org"], "sentAt": "2026-11-24T10:00:00+01:00",
        "bodyValues": {"1": {"value": "plain"}},
        "bodyStructure": {"type": "multipart/alternative", "subParts": [
            {"partId": "1", "type": "text/plain", "header:X-Part": " yes"},
            {"partId": "1", "type": "text/html"}]}})
    created = result["created"]["c"]
    email = (await call(mail, "Email/get", {"ids": [created["id"]], "properties": [
        "messageId", "sentAt", "bodyStructure"], "bodyProperties": ["type", "subParts", "header:X-Part"]}))["list"][0]
    assert email["messageId"] == ["own@example.org"] and email["sentAt"] == "2026-11-24T10:00:00+01:00"
    assert [p["type"] for p in email["bodyStructure"]["subParts"]] == ["text/plain", "text/html"]
    assert email["bodyStructure"]["subParts"][0]["header:X-Part"] == " yes"


async def test_create_with_nothing_but_a_mailbox(mail):  # noqa: F811
    result = await create(mail, {})
    assert "c" in result["created"]


async def test_a_missing_attachment_blob_is_blob_not_found(mail):  # noqa: F811
    """RFC 8621 §4.6: blobNotFound with notFound listing the missing blob ids."""
    result = await create(mail, {"attachments": [{"blobId": "Bmissing", "type": "image/png"}]})
    assert result["notCreated"]["c"]["type"] == "blobNotFound"
    assert result["notCreated"]["c"]["notFound"] == ["Bmissing"]


async def test_created_email_can_be_referenced_later_in_the_request(mail):  # noqa: F811
    box = await inbox(mail)
    result = await call(mail, "Email/set", {"create": {"c": {"mailboxIds": {box: True}}},
                                            "update": {"#c": {"keywords/$seen": True}}})
    assert result["updated"] == {result["created"]["c"]["id"]: None}


@pytest.mark.parametrize("spec,prop", [
    ({"id": "x"}, "id"),
    ({"blobId": "x"}, "blobId"),
    ({"threadId": "x"}, "threadId"),
    ({"size": 1}, "size"),
    ({"preview": "x"}, "preview"),
    ({"hasAttachment": True}, "hasAttachment"),
    ({"headers": []}, "headers"),
    ({"nope": 1}, "nope"),
    ({"mailboxIds": {}}, "mailboxIds"),
    ({"keywords": {"a b": True}}, "keywords"),
    ({"receivedAt": "now"}, "receivedAt"),
    ({"subject": 5}, "subject"),
    ({"from": "alice"}, "from"),
    ({"from": [{"email": "a@b\r\nBcc: x@y"}]}, "from"),
    ({"header:Subject": "x\r\nBcc: evil@example.org"}, "header:Subject"),
    ({"subject": "a", "header:Subject:asText": "b"}, "header:Subject:asText"),
    ({"header:Subject:asAddresses": []}, "header:Subject:asAddresses"),
    ({"header:Content-Type": " text/plain"}, "header:Content-Type"),
    ({"messageId": ["a b"]}, "messageId"),
    ({"sentAt": "tuesday"}, "sentAt"),
    ({"textBody": [{"partId": "t", "type": "text/html"}], "bodyValues": {"t": {"value": "x"}}}, "textBody"),
    ({"textBody": [{"partId": "missing"}]}, "textBody"),
    ({"textBody": [{"partId": "t", "blobId": "B1"}], "bodyValues": {"t": {"value": "x"}}}, "textBody"),
    ({"htmlBody": [{"partId": "t"}, {"partId": "t"}], "bodyValues": {"t": {"value": "x"}}}, "htmlBody"),
    ({"bodyValues": {"t": {"value": "x", "isTruncated": True}}}, "bodyValues"),
    ({"bodyValues": {"t": "x"}}, "bodyValues"),
    ({"bodyStructure": {"partId": "t"}, "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "x"}}},
     "bodyStructure"),
    ({"bodyStructure": {"type": "multipart/mixed", "subParts": "x"}}, "bodyStructure"),
    ({"bodyStructure": "x"}, "bodyStructure"),
    ({"bodyStructure": {"partId": "t", "header:Content-Transfer-Encoding": " 8bit"},
      "bodyValues": {"t": {"value": "x"}}}, "bodyStructure"),
    ({"subject": "a", "bodyStructure": {"partId": "t", "header:Subject": " b"}, "bodyValues": {"t": {"value": "x"}}},
     "bodyStructure"),
    ({"attachments": "x"}, "attachments"),
    ({"attachments": [{"blobId": 5}]}, "attachments"),
])
async def test_create_rejects_what_section_4_6_forbids(mail, spec, prop):  # noqa: F811
    result = await create(mail, spec)
    assert result["created"] is None, result
    assert result["notCreated"]["c"]["type"] == "invalidProperties"
    assert result["notCreated"]["c"]["properties"] == [prop]


async def test_deeply_nested_body_structure_is_refused(mail):  # noqa: F811
    structure: dict = {"partId": "t"}
    for _ in range(50):
        structure = {"type": "multipart/mixed", "subParts": [structure]}
    result = await create(mail, {"bodyStructure": structure, "bodyValues": {"t": {"value": "x"}}})
    assert result["notCreated"]["c"]["type"] == "invalidProperties"


# --- copy (§4.7) ----------------------------------------------------------------------------------------------

async def as_user(client, auth: str, *calls) -> list:
    body = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
            "methodCalls": [[m, a, str(n)] for n, (m, a) in enumerate(calls)]}
    return (await client.request_json(body, auth=auth))["methodResponses"]


async def bob_with_access(mail, may_write: bool):  # noqa: F811
    from conftest import add_user, basic, share
    bob = await add_user(mail, "bob@example.org")
    await share(mail, "bob@example.org", "alice@example.org", may_write=may_write)
    auth = basic("bob@example.org")
    (_, boxes, _), = await as_user(mail, auth, ("Mailbox/get", {"accountId": bob.account_id, "ids": None}))
    return bob.account_id, auth, {m["role"]: m["id"] for m in boxes["list"]}


async def test_copy_into_another_account_and_destroy_the_original(mail, one):  # noqa: F811
    """RFC 8621 §4.7: only mailboxIds, keywords and receivedAt may be set; onSuccessDestroyOriginal."""
    bob_account, auth, bob_boxes = await bob_with_access(mail, may_write=True)
    responses = await as_user(mail, auth, ("Email/copy", {
        "fromAccountId": mail.account_id, "accountId": bob_account, "onSuccessDestroyOriginal": True,
        "create": {"x": {"id": one["id"], "mailboxIds": {bob_boxes["archive"]: True},
                         "receivedAt": "2026-01-02T03:04:05Z"}}}))
    name, result, _ = responses[0]
    assert name == "Email/copy", result
    copy = result["created"]["x"]
    assert copy["blobId"] == one["blobId"] and copy["size"] == one["size"] and copy["id"] != one["id"]
    assert responses[1][0] == "Email/set" and responses[1][1]["destroyed"] == [one["id"]]
    (_, got, _), = await as_user(mail, auth, ("Email/get", {"accountId": bob_account, "ids": [copy["id"]],
                                                            "properties": ["mailboxIds", "keywords", "receivedAt"]}))
    assert got["list"][0] == {"id": copy["id"], "mailboxIds": {bob_boxes["archive"]: True},
                              "keywords": {"$flagged": True}, "receivedAt": "2026-01-02T03:04:05Z"}


async def test_copy_refusals(mail, one):  # noqa: F811
    bob_account, auth, bob_boxes = await bob_with_access(mail, may_write=False)
    archive = {bob_boxes["archive"]: True}
    (_, result, _), = await as_user(mail, auth, ("Email/copy", {
        "fromAccountId": mail.account_id, "accountId": bob_account, "create": {
            "a": {"id": "Enope", "mailboxIds": archive},
            "b": {"id": one["id"], "mailboxIds": archive, "subject": "x"},
            "c": {"id": one["id"], "mailboxIds": {}},
            "d": {"mailboxIds": archive}}}))
    assert result["notCreated"]["a"]["type"] == "notFound"
    assert result["notCreated"]["b"]["properties"] == ["subject"]
    assert result["notCreated"]["c"]["properties"] == ["mailboxIds"]
    assert result["notCreated"]["d"]["properties"] == ["id"]
    (name, result, _), = await as_user(mail, auth, ("Email/copy", {
        "fromAccountId": bob_account, "accountId": bob_account, "create": {}}))
    assert (name, result["type"]) == ("error", "invalidArguments")
    (name, result, _), = await as_user(mail, auth, ("Email/copy", {
        "fromAccountId": bob_account, "accountId": mail.account_id, "create": {}}))
    assert (name, result["type"]) == ("error", "accountReadOnly")


async def test_a_read_only_grantee_reads_but_cannot_change_emails(mail, one):  # noqa: F811
    """RFC 8620 §5.3 accountReadOnly for Email/set and Email/import; Email/get and Thread/get still work."""
    _, auth, _ = await bob_with_access(mail, may_write=False)
    responses = await as_user(mail, auth,
                              ("Email/get", {"accountId": mail.account_id, "ids": [one["id"]], "properties": ["id"]}),
                              ("Thread/get", {"accountId": mail.account_id, "ids": [one["threadId"]]}),
                              ("Email/set", {"accountId": mail.account_id, "destroy": [one["id"]]}),
                              ("Email/import", {"accountId": mail.account_id, "emails": {}}))
    assert responses[0][1]["list"] == [{"id": one["id"]}]
    assert responses[1][1]["list"] == [{"id": one["threadId"], "emailIds": [one["id"]]}]
    assert [(r[0], r[1].get("type")) for r in responses[2:]] == [("error", "accountReadOnly")] * 2
