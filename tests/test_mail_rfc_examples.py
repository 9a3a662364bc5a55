"""RFC 8621's own examples (§2.6, §3.1.1, §4.2.1, §4.10) replayed against the real app (issue 4).

Each test sets up data matching the example, sends the example's request with our ids in place of the
RFC's (the substitutions are named in each test), and checks the response has the example's shape and
those of its values that follow from the data. Server-chosen values (ids, states, sortOrder, sizes of
the RFC's much larger messages) are checked for type or for consistency, not copied from the RFC.
"""

from __future__ import annotations

import base64
from email.utils import getaddresses
from typing import Any

from conftest import add_user, share
from test_mail_import import imported, inbox, mail  # noqa: F401  (fixture)
from test_mail_mailbox import MAIL_USING, call, create, mailboxes

COUNTS = ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]
RIGHTS = {"mayReadItems", "mayAddItems", "mayRemoveItems", "maySetSeen", "maySetKeywords", "mayCreateChild",
          "mayRename", "mayDelete", "maySubmit"}


def raw(subject: str, message_id: str, *, sender: str = "Alice <alice@example.org>",
        date: str = "Tue, 24 Nov 2026 10:00:00 +0000", in_reply_to: str | None = None,
        extra: str = "", content_type: str = "text/plain; charset=utf-8", body: str = "Hi there.\r\n") -> bytes:
    head = (f"From: {sender}\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}\r\n")
    if in_reply_to:
        head += f"In-Reply-To: <{in_reply_to}>\r\nReferences: <{in_reply_to}>\r\n"
    return (head + extra + "\r\n" + body).encode()


async def send(client, *calls: list[Any]) -> list[list[Any]]:
    """The method calls exactly as given (with their own call ids); the methodResponses."""
    return await client.calls(*calls, using=MAIL_USING)


# --- §2.6 -----------------------------------------------------------------------------------------------------

async def test_2_6_fetching_all_mailboxes(mail):  # noqa: F811
    """RFC 8621 §2.6: [[ "Mailbox/get", { "accountId": "u33084183", "ids": null }, "0" ]].

    Substituted: our account id for "u33084183". Data: an "Important mail" mailbox besides the defaults,
    and an Inbox holding 3 emails in 2 threads, 2 of the emails (in both threads) unread. The RFC's
    sortOrder (10), mayRename (false on the Inbox) and the ids and state are server choices.
    """
    await create(mail, important={"name": "Important mail"})
    box = await inbox(mail)
    await imported(mail, raw("Lunch?", "l1@example.org"), mailboxIds={box: True}, keywords={"$seen": True})
    await imported(mail, raw("Re: Lunch?", "l2@example.org", in_reply_to="l1@example.org"), mailboxIds={box: True})
    await imported(mail, raw("Report", "r1@example.org"), mailboxIds={box: True})
    (name, result, call_id), = await send(mail, ["Mailbox/get", {"accountId": mail.account_id, "ids": None}, "0"])
    assert (name, call_id) == ("Mailbox/get", "0")
    assert set(result) == {"accountId", "state", "list", "notFound"}
    assert result["accountId"] == mail.account_id and isinstance(result["state"], str)
    assert result["notFound"] == []
    by_name = {m["name"]: m for m in result["list"]}
    inbox_box = by_name["Inbox"]
    assert set(inbox_box) == {"id", "name", "parentId", "role", "sortOrder", "myRights", "isSubscribed", *COUNTS}
    assert inbox_box["id"] == box and inbox_box["parentId"] is None and inbox_box["role"] == "inbox"
    assert isinstance(inbox_box["sortOrder"], int) and inbox_box["isSubscribed"] is True
    assert [inbox_box[c] for c in COUNTS] == [3, 2, 2, 2]
    assert set(inbox_box["myRights"]) == RIGHTS
    assert {k: inbox_box["myRights"][k] for k in RIGHTS - {"mayRename"}} == {
        **{k: True for k in RIGHTS - {"mayRename"}}, "mayDelete": False}
    important = by_name["Important mail"]
    assert important["parentId"] is None and important["role"] is None
    assert [important[c] for c in COUNTS] == [0, 0, 0, 0]


async def test_2_6_fetching_mailbox_updates_with_back_references(mail):  # noqa: F811
    """RFC 8621 §2.6: "Now suppose an Email is marked read": Mailbox/changes, then Mailbox/get of
    #ids /created, and of #ids /updated with #properties /updatedProperties.

    Substituted: our account id for "u33084183", the state we got for "78540". Data: the Inbox holds a
    thread of 2 unread emails and 1 other unread email; both emails of the thread are marked read, which
    is what takes the RFC's unreadEmails 13905 -> 13903 and unreadThreads 5128 -> 5127.
    """
    box = await inbox(mail)
    first = await imported(mail, raw("Lunch?", "l1@example.org"))
    second = await imported(mail, raw("Re: Lunch?", "l2@example.org", in_reply_to="l1@example.org"))
    await imported(mail, raw("Report", "r1@example.org"))
    since = (await call(mail, "Mailbox/get", {"ids": []}))["state"]
    marked = await call(mail, "Email/set", {"update": {first["id"]: {"keywords/$seen": True},
                                                       second["id"]: {"keywords/$seen": True}}})
    assert marked["notUpdated"] is None
    account = mail.account_id
    responses = await send(
        mail,
        ["Mailbox/changes", {"accountId": account, "sinceState": since}, "0"],
        ["Mailbox/get", {"accountId": account,
                         "#ids": {"resultOf": "0", "name": "Mailbox/changes", "path": "/created"}}, "1"],
        ["Mailbox/get", {"accountId": account,
                         "#ids": {"resultOf": "0", "name": "Mailbox/changes", "path": "/updated"},
                         "#properties": {"resultOf": "0", "name": "Mailbox/changes",
                                         "path": "/updatedProperties"}}, "2"])
    assert [(name, call_id) for name, _, call_id in responses] == [
        ("Mailbox/changes", "0"), ("Mailbox/get", "1"), ("Mailbox/get", "2")]
    changes, created, updated = (args for _, args, _ in responses)
    assert changes["accountId"] == account and changes["oldState"] == since
    assert changes["hasMoreChanges"] is False
    assert sorted(changes["updatedProperties"]) == sorted(COUNTS)
    assert (changes["created"], changes["updated"], changes["destroyed"]) == ([], [box], [])
    assert created == {"accountId": account, "state": changes["newState"], "list": [], "notFound": []}
    assert updated == {"accountId": account, "state": changes["newState"], "notFound": [], "list": [
        {"id": box, "totalEmails": 3, "unreadEmails": 1, "totalThreads": 2, "unreadThreads": 1}]}


# --- §3.1.1 ---------------------------------------------------------------------------------------------------

async def test_3_1_1_thread_get(mail):  # noqa: F811
    """RFC 8621 §3.1.1: [[ "Thread/get", { "accountId": "acme", "ids": ["f123u4", "f41u44"] }, "#1" ]].

    Substituted: our account id for "acme"; the threadIds of our emails for "f123u4" (a message and its
    reply, so emailIds ["eaa623", "f782cbb"] in receivedAt order) and "f41u44" (one email, "82cf7bb").
    The call id "#1" is kept.
    """
    eaa623 = await imported(mail, raw("Plans", "p1@example.org"), receivedAt="2026-11-20T10:00:00Z")
    x82cf7bb = await imported(mail, raw("Other", "o1@example.org"), receivedAt="2026-11-21T10:00:00Z")
    f782cbb = await imported(mail, raw("Re: Plans", "p2@example.org", in_reply_to="p1@example.org"),
                             receivedAt="2026-11-22T10:00:00Z")
    assert eaa623["threadId"] == f782cbb["threadId"] != x82cf7bb["threadId"]
    f123u4, f41u44 = eaa623["threadId"], x82cf7bb["threadId"]
    (name, result, call_id), = await send(
        mail, ["Thread/get", {"accountId": mail.account_id, "ids": [f123u4, f41u44]}, "#1"])
    assert (name, call_id) == ("Thread/get", "#1")
    assert set(result) == {"accountId", "state", "list", "notFound"} and isinstance(result["state"], str)
    assert result["accountId"] == mail.account_id
    assert result["list"] == [{"id": f123u4, "emailIds": [eaa623["id"], f782cbb["id"]]},
                              {"id": f41u44, "emailIds": [x82cf7bb["id"]]}]
    assert result["notFound"] == []


# --- §4.2.1 ---------------------------------------------------------------------------------------------------

DINNER_HTML = ("<html><body><p>Hello all, dinner on Thursday is at the usual place. " + "Bring a friend. " * 20
               + "</p></body></html>\r\n")
DINNER_FOOTER = "-- Sent by your friendly mailing list software\r\n"
DINNER = raw("Dinner on Thursday?", "dinner@example.com", sender="Joe Bloggs <joe@example.com>",
             date="Sun, 13 Oct 2013 14:10:00 +0000", content_type='multipart/mixed; boundary="b"',
             extra="List-Post: <mailto:partytime@lists.example.com>\r\n",
             body=("--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + DINNER_HTML
                   + "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + DINNER_FOOTER + "--b--\r\n"))


async def test_4_2_1_email_get(mail):  # noqa: F811
    """RFC 8621 §4.2.1: Email/get of ["f123u456", "f123u457"] with properties threadId, mailboxIds, from,
    subject, receivedAt, header:List-POST:asURLs, htmlBody, bodyValues; bodyProperties partId, blobId, size,
    type; fetchHTMLBodyValues and maxBodyValueBytes 256.

    Substituted: our account id for "abc", our email's id for "f123u457" ("f123u456" stays, unknown), the
    Inbox for mailbox "f123". Data: Joe Bloggs's "Dinner on Thursday?" received 2013-10-13T14:12:00Z, a
    multipart/mixed of an HTML part longer than 256 bytes and a short plain-text list footer, so htmlBody
    holds both parts (1 text/html, 2 text/plain), the first value truncated and the second not. (A part's
    last CRLF belongs to the boundary after it, so it is not in its size or value.)
    """
    box = await inbox(mail)
    dinner = await imported(mail, DINNER, receivedAt="2013-10-13T14:12:00Z")
    (name, result, call_id), = await send(mail, ["Email/get", {
        "accountId": mail.account_id,
        "ids": ["f123u456", dinner["id"]],
        "properties": ["threadId", "mailboxIds", "from", "subject", "receivedAt", "header:List-POST:asURLs",
                       "htmlBody", "bodyValues"],
        "bodyProperties": ["partId", "blobId", "size", "type"],
        "fetchHTMLBodyValues": True,
        "maxBodyValueBytes": 256}, "#1"])
    assert (name, call_id) == ("Email/get", "#1")
    assert set(result) == {"accountId", "state", "list", "notFound"} and isinstance(result["state"], str)
    assert result["accountId"] == mail.account_id and result["notFound"] == ["f123u456"]
    email, = result["list"]
    html_part, footer_part = email["htmlBody"]
    assert email == {
        "id": dinner["id"],
        "threadId": dinner["threadId"],
        "mailboxIds": {box: True},
        "from": [{"name": "Joe Bloggs", "email": "joe@example.com"}],
        "subject": "Dinner on Thursday?",
        "receivedAt": "2013-10-13T14:12:00Z",
        "header:List-POST:asURLs": ["mailto:partytime@lists.example.com"],
        "htmlBody": [{"partId": "1", "blobId": html_part["blobId"], "size": len(DINNER_HTML) - 2, "type": "text/html"},
                     {"partId": "2", "blobId": footer_part["blobId"], "size": len(DINNER_FOOTER) - 2,
                      "type": "text/plain"}],
        "bodyValues": {
            "1": {"isEncodingProblem": False, "isTruncated": True, "value": DINNER_HTML[:256]},
            "2": {"isEncodingProblem": False, "isTruncated": False, "value": DINNER_FOOTER[:-2]},
        },
    }
    assert isinstance(html_part["blobId"], str) and html_part["blobId"] != footer_part["blobId"]


# --- §4.10 ----------------------------------------------------------------------------------------------------

REVEAL_TEXT = ("As you may be aware, we are required to prepare a\r\npresentation where we wow a panel of 5 random "
               "members of the\r\npublic, on or before 30 June each year.  We have drafted...\r\n")
REVEAL = raw("The Big Reveal", "reveal@example.com", sender="Jane Doe <jdoe@example.com>",
             date="Wed, 27 Jun 2018 00:20:00 +0000", content_type='multipart/mixed; boundary="b"',
             body=("--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + REVEAL_TEXT
                   + "--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"d.pdf\"\r\n"
                   "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"%PDF-1.4 x").decode()
                   + "\r\n--b--\r\n"))
QUERY_ARGS = {"filter": {"inMailbox": None}, "sort": [{"isAscending": False, "property": "receivedAt"}],
              "collapseThreads": True}
BRILLIANT = "I have the most brilliant plan.  Let me tell you all about it.  What we do is, we"


async def inbox_listing(mail) -> dict[str, Any]:  # noqa: F811
    """The §4.10 inbox: "The Big Reveal" (newest, one email), a thread of two emails, one older email."""
    box = await inbox(mail)
    older = await imported(mail, raw("Older", "c1@example.com"), receivedAt="2018-06-20T00:00:00Z")
    b1 = await imported(mail, raw("Budget", "b1@example.com"), receivedAt="2018-06-25T00:00:00Z",
                        keywords={"$seen": True})
    b2 = await imported(mail, raw("Re: Budget", "b2@example.com", in_reply_to="b1@example.com"),
                        receivedAt="2018-06-26T00:00:00Z")
    reveal = await imported(mail, REVEAL, receivedAt="2018-06-27T00:20:35Z",
                            keywords={"$seen": True, "$flagged": True})
    return {"box": box, "reveal": reveal, "b1": b1, "b2": b2, "older": older}


async def test_4_10_first_login_lists_the_inbox_by_thread(mail):  # noqa: F811
    """RFC 8621 §4.10: Email/query (inMailbox, receivedAt descending, collapseThreads, position 0, limit 30,
    calculateTotal), then Email/get #ids /ids, Thread/get #ids /list/*/threadId, Email/get #ids
    /list/*/emailIds with the listing properties.

    Substituted: our account id for "ue150411c", our Inbox for "fb666a55". Data: "The Big Reveal" from
    Jane Doe (newest, $seen and $flagged, with an attachment) standing for "Ma783e5cdf5f2deffbc97930a",
    a two-email thread whose newer email stands for "M9bd17497e2a99cb345fc1d0a" (older:
    "M3b568670a63e5d100f518fa5"), and one older email; so total is 3 (threads), not 115.
    """
    data = await inbox_listing(mail)
    box, reveal, b1, b2, older = (data[k] for k in ("box", "reveal", "b1", "b2", "older"))
    account = mail.account_id
    responses = await send(
        mail,
        ["Email/query", {"accountId": account, **QUERY_ARGS, "filter": {"inMailbox": box},
                         "position": 0, "limit": 30, "calculateTotal": True}, "0"],
        ["Email/get", {"accountId": account, "#ids": {"resultOf": "0", "name": "Email/query", "path": "/ids"},
                       "properties": ["threadId"]}, "1"],
        ["Thread/get", {"accountId": account,
                        "#ids": {"resultOf": "1", "name": "Email/get", "path": "/list/*/threadId"}}, "2"],
        ["Email/get", {"accountId": account,
                       "#ids": {"resultOf": "2", "name": "Thread/get", "path": "/list/*/emailIds"},
                       "properties": ["threadId", "mailboxIds", "keywords", "hasAttachment", "from", "subject",
                                      "receivedAt", "size", "preview"]}, "3"])
    assert [(name, call_id) for name, _, call_id in responses] == [
        ("Email/query", "0"), ("Email/get", "1"), ("Thread/get", "2"), ("Email/get", "3")]
    query, threads_of, threads, listing = (args for _, args, _ in responses)
    assert query["accountId"] == account and isinstance(query["queryState"], str)
    assert query["canCalculateChanges"] is True and query["position"] == 0 and query["total"] == 3
    assert query["ids"] == [reveal["id"], b2["id"], older["id"]]
    assert threads_of["list"] == [{"id": reveal["id"], "threadId": reveal["threadId"]},
                                  {"id": b2["id"], "threadId": b2["threadId"]},
                                  {"id": older["id"], "threadId": older["threadId"]}]
    assert threads_of["notFound"] == []
    assert threads["list"] == [{"id": reveal["threadId"], "emailIds": [reveal["id"]]},
                               {"id": b2["threadId"], "emailIds": [b1["id"], b2["id"]]},
                               {"id": older["threadId"], "emailIds": [older["id"]]}]
    assert threads["notFound"] == [] and isinstance(threads["state"], str)
    assert [e["id"] for e in listing["list"]] == [reveal["id"], b1["id"], b2["id"], older["id"]]
    assert listing["state"] == threads_of["state"] and listing["notFound"] == []
    assert listing["list"][0] == {
        "id": reveal["id"],
        "threadId": reveal["threadId"],
        "mailboxIds": {box: True},
        "keywords": {"$seen": True, "$flagged": True},
        "hasAttachment": True,
        "from": [{"email": "jdoe@example.com", "name": "Jane Doe"}],
        "subject": "The Big Reveal",
        "receivedAt": "2018-06-27T00:20:35Z",
        "size": len(REVEAL),
        "preview": listing["list"][0]["preview"],
    }
    # The RFC's preview is reflowed by its page layout; compare it word by word.
    assert listing["list"][0]["preview"].split() == REVEAL_TEXT.split()


async def test_4_10_marking_unread_then_fetching_changes(mail):  # noqa: F811
    """RFC 8621 §4.10: Email/set update {"keywords/$seen": null} answered with updated {id: null}; "the user
    also deletes a few Emails, and then a new message arrives"; then Email/changes (maxChanges 50) and
    Email/queryChanges (the same filter/sort/collapseThreads, upToId, maxChanges 25, calculateTotal).

    Substituted: as in the first-login test, plus: the Email state before the update for "780605", the first
    listing's queryState for "09aa9a075588-780599:0", its last id for upToId "Mc2781d5e856a908d8a35a564",
    and a new email for "Me8de6c9f6de198239b982ea2". The deleted emails are both of the two-email thread
    (so only "M9bd17497e2a99cb345fc1d0a", the one that was listed, is removed); total is 3, not 115.
    Deviation allowed by RFC 8620 §5.6: extra removed ids (the email marked unread is removed and re-added
    in place; the new and destroyed emails' ids may be listed as removed too).
    """
    data = await inbox_listing(mail)
    box, reveal, b1, b2, older = (data[k] for k in ("box", "reveal", "b1", "b2", "older"))
    account = mail.account_id
    listed = await call(mail, "Email/query", {**QUERY_ARGS, "filter": {"inMailbox": box}, "position": 0,
                                              "limit": 30, "calculateTotal": True})
    assert listed["ids"] == [reveal["id"], b2["id"], older["id"]]

    (name, result, call_id), = await send(mail, ["Email/set", {"accountId": account, "update": {
        reveal["id"]: {"keywords/$seen": None}}}, "0"])
    assert (name, call_id) == ("Email/set", "0")
    assert result["accountId"] == account and result["oldState"] != result["newState"]
    assert result["updated"] == {reveal["id"]: None}
    since = result["oldState"]

    deleted = await call(mail, "Email/set", {"destroy": [b1["id"], b2["id"]]})
    assert sorted(deleted["destroyed"]) == sorted([b1["id"], b2["id"]])
    new = await imported(mail, raw("Fresh news", "new@example.com"), receivedAt="2018-06-28T00:00:00Z")

    responses = await send(
        mail,
        ["Email/changes", {"accountId": account, "sinceState": since, "maxChanges": 50}, "3"],
        ["Email/queryChanges", {"accountId": account, **QUERY_ARGS, "filter": {"inMailbox": box},
                                "sinceQueryState": listed["queryState"], "upToId": older["id"],
                                "maxChanges": 25, "calculateTotal": True}, "11"])
    assert [(name, call_id) for name, _, call_id in responses] == [("Email/changes", "3"),
                                                                   ("Email/queryChanges", "11")]
    changes, query_changes = (args for _, args, _ in responses)
    assert changes["accountId"] == account and changes["oldState"] == since
    assert changes["hasMoreChanges"] is False and isinstance(changes["newState"], str)
    assert changes["created"] == [new["id"]] and changes["updated"] == [reveal["id"]]
    assert sorted(changes["destroyed"]) == sorted([b1["id"], b2["id"]])
    assert query_changes["accountId"] == account and query_changes["oldQueryState"] == listed["queryState"]
    assert isinstance(query_changes["newQueryState"], str)
    # The RFC's answer is exactly added [new at 0], removed [b2]. Ours may also report every email of a
    # changed thread (the change log does not say which property changed, so the email marked unread is
    # removed and re-added in place); RFC 8620 §5.6 lets a server report such extra ids. The client's splice
    # must still come out right.
    assert {"id": new["id"], "index": 0} in query_changes["added"] and b2["id"] in query_changes["removed"]
    assert set(query_changes["removed"]) <= {b2["id"], b1["id"], reveal["id"], new["id"]}
    assert {a["id"] for a in query_changes["added"]} <= {new["id"], reveal["id"]}
    spliced = [i for i in listed["ids"] if i not in query_changes["removed"]]
    for added in sorted(query_changes["added"], key=lambda a: a["index"]):
        spliced.insert(added["index"], added["id"])
    now = await call(mail, "Email/query", {**QUERY_ARGS, "filter": {"inMailbox": box}})
    assert spliced == now["ids"] == [new["id"], reveal["id"], older["id"]]
    assert query_changes["total"] == 3


async def test_4_10_drafts_are_saved_replaced_and_copied_to_another_account(mail):  # noqa: F811
    """RFC 8621 §4.10: Email/set create "k192" (a text/plain draft from bodyStructure with
    header:Content-Language and bodyValues "bd48"); then create "k1546" (multipart/alternative of "a49d"
    text/html and "bd48" text/plain, a To: recipient) while destroying the first draft; then Email/copy "k45"
    into another account with onSuccessDestroyOriginal, answered by Email/copy and Email/set, both "0".

    Substituted: our account id for "ue150411c", our Drafts mailbox for "2ea1ca41b38e", bob's account
    (shared with alice, writable) for "u6c6c41ac" and bob's Drafts for "75a4c956"; created ids from the
    responses for "Mf40b5f831efa7233b9eb1c7f" and "Md45b47b4877521042cec0938". Not checked: the RFC's two
    drafts share a threadId; nothing links them (no In-Reply-To/References), so that is Cyrus's choice, and the
    Message-Id/User-Agent of its sample message are the server's own.
    """
    # Bob's account is shared before alice's first request (her credentials are cached for a second).
    bob = await add_user(mail, "bob@example.org")
    await share(mail, "alice@example.org", "bob@example.org", may_write=True)
    account = mail.account_id
    drafts = (await mailboxes(mail))["Drafts"]["id"]
    html = ('<!DOCTYPE html><html><head><title></title><style type="text/css">div{font-size:16px}</style>'
            "</head><body><div>I have the most <b>brilliant</b> plan.  Let me tell you all about it.  "
            "What we do is, we</div></body></html>")

    (name, result, call_id), = await send(mail, ["Email/set", {"accountId": account, "create": {"k192": {
        "mailboxIds": {drafts: True},
        "keywords": {"$seen": True, "$draft": True},
        "from": [{"name": "Joe Bloggs", "email": "joe@example.com"}],
        "subject": "World domination",
        "receivedAt": "2018-07-10T01:03:11Z",
        "sentAt": "2018-07-10T11:03:11+10:00",
        "bodyStructure": {"type": "text/plain", "partId": "bd48", "header:Content-Language": "en"},
        "bodyValues": {"bd48": {"value": BRILLIANT, "isTruncated": False}}}}}, "0"])
    assert (name, call_id) == ("Email/set", "0")
    assert result["accountId"] == account and result["oldState"] != result["newState"]
    assert result["notCreated"] is None
    k192 = result["created"]["k192"]
    assert set(k192) == {"id", "blobId", "threadId", "size"}
    resp = await mail.get(f"/jmap/download/{account}/{k192['blobId']}/m.eml?accept=message/rfc822",
                          headers=mail.headers())
    message = await resp.read()
    assert len(message) == k192["size"]
    head, _, body = message.partition(b"\r\n\r\n")
    headers = {line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")}
    assert headers[b"date"] == b"Tue, 10 Jul 2018 11:03:11 +1000"
    # The RFC shows From: "Joe Bloggs" <joe@example.com>; the quotes are optional around an atom phrase.
    assert getaddresses([headers[b"from"].decode()]) == [("Joe Bloggs", "joe@example.com")]
    assert headers[b"subject"] == b"World domination"
    assert headers[b"content-language"] == b"en"
    assert headers[b"content-type"].split(b";")[0] == b"text/plain"
    assert headers[b"mime-version"] == b"1.0" and b"message-id" in headers
    got = await call(mail, "Email/get", {"ids": [k192["id"]], "fetchTextBodyValues": True, "properties": [
        "mailboxIds", "keywords", "receivedAt", "sentAt", "textBody", "bodyValues"],
        "bodyProperties": ["partId", "type", "language"]})
    email = got["list"][0]
    part = email["textBody"][0]
    assert email["mailboxIds"] == {drafts: True} and email["keywords"] == {"$seen": True, "$draft": True}
    assert email["receivedAt"] == "2018-07-10T01:03:11Z" and email["sentAt"] == "2018-07-10T11:03:11+10:00"
    assert part["type"] == "text/plain" and part["language"] == ["en"]
    assert email["bodyValues"][part["partId"]]["value"] == BRILLIANT

    (name, result, call_id), = await send(mail, ["Email/set", {"accountId": account, "create": {"k1546": {
        "mailboxIds": {drafts: True},
        "keywords": {"$seen": True, "$draft": True},
        "from": [{"name": "Joe Bloggs", "email": "joe@example.com"}],
        "to": [{"name": "John", "email": "john@example.com"}],
        "subject": "World domination",
        "receivedAt": "2018-07-10T01:05:08Z",
        "sentAt": "2018-07-10T11:05:08+10:00",
        "bodyStructure": {"type": "multipart/alternative", "subParts": [
            {"partId": "a49d", "type": "text/html", "header:Content-Language": "en"},
            {"partId": "bd48", "type": "text/plain", "header:Content-Language": "en"}]},
        "bodyValues": {"bd48": {"value": BRILLIANT, "isTruncated": False},
                       "a49d": {"value": html, "isTruncated": False}}}},
        "destroy": [k192["id"]]}, "0"])
    assert (name, call_id) == ("Email/set", "0")
    assert result["notCreated"] is None and result["notDestroyed"] is None
    k1546 = result["created"]["k1546"]
    assert set(k1546) == {"id", "blobId", "threadId", "size"}
    assert result["destroyed"] == [k192["id"]]
    got = await call(mail, "Email/get", {"ids": [k1546["id"], k192["id"]], "fetchAllBodyValues": True,
                                         "properties": ["to", "subject", "sentAt", "bodyStructure", "textBody",
                                                        "htmlBody", "bodyValues"],
                                         "bodyProperties": ["partId", "type", "language", "subParts"]})
    assert got["notFound"] == [k192["id"]]
    email = got["list"][0]
    assert email["to"] == [{"name": "John", "email": "john@example.com"}]
    assert email["subject"] == "World domination" and email["sentAt"] == "2018-07-10T11:05:08+10:00"
    structure = email["bodyStructure"]
    assert structure["type"] == "multipart/alternative"
    assert [(p["type"], p["language"]) for p in structure["subParts"]] == [("text/html", ["en"]),
                                                                           ("text/plain", ["en"])]
    assert [email["bodyValues"][p["partId"]]["value"] for p in email["htmlBody"]] == [html]
    assert [email["bodyValues"][p["partId"]]["value"] for p in email["textBody"]] == [BRILLIANT]

    bob_drafts = {m["role"]: m["id"] for m in (await call(mail, "Mailbox/get", {
        "accountId": bob.account_id, "ids": None}))["list"]}["drafts"]
    responses = await send(mail, ["Email/copy", {
        "fromAccountId": account, "accountId": bob.account_id,
        "create": {"k45": {"id": k1546["id"], "mailboxIds": {bob_drafts: True}}},
        "onSuccessDestroyOriginal": True}, "0"])
    assert [(name, call_id) for name, _, call_id in responses] == [("Email/copy", "0"), ("Email/set", "0")]
    (_, copied, _), (_, destroyed, _) = responses
    assert copied["fromAccountId"] == account and copied["accountId"] == bob.account_id
    assert copied["oldState"] != copied["newState"] and copied["notCreated"] is None
    k45 = copied["created"]["k45"]
    assert set(k45) == {"id", "blobId", "threadId", "size"} and k45["size"] == k1546["size"]
    assert destroyed["accountId"] == account and destroyed["destroyed"] == [k1546["id"]]
    assert destroyed["oldState"] != destroyed["newState"]
