"""Thread (RFC 8621 §3): threading at import, Thread/get and Thread/changes over HTTP."""

from __future__ import annotations

import pytest

from jmaple.keys import RUNTIME
from jmaple.mail.ingest import ImportItem, Imported, import_messages
from test_mail_import import imported, inbox, mail, message  # noqa: F401  (fixture)
from test_mail_mailbox import call, error


async def test_a_reply_with_the_same_base_subject_joins_the_thread(mail):  # noqa: F811
    """RFC 8621 §3: a shared message id and the same base subject (RFC 5256) make one thread."""
    first = await imported(mail, message("Plans", "p1@x"), receivedAt="2026-11-24T10:00:00Z")
    reply = await imported(mail, message("Re: [list] PLANS", "p2@x", in_reply_to="p1@x"),
                           receivedAt="2026-11-24T11:00:00Z")
    deeper = await imported(mail, message("RE: Fwd: plans", "p3@x", references="<p1@x> <p2@x>"),
                            receivedAt="2026-11-24T09:00:00Z")
    assert first["threadId"] == reply["threadId"] == deeper["threadId"]
    thread = await call(mail, "Thread/get", {"ids": [first["threadId"]]})
    assert thread["list"] == [{"id": first["threadId"], "emailIds": [deeper["id"], first["id"], reply["id"]]}]


async def test_a_reply_with_another_subject_starts_a_new_thread(mail):  # noqa: F811
    first = await imported(mail, message("Plans", "p1@x"))
    other = await imported(mail, message("Something else", "p2@x", in_reply_to="p1@x"))
    assert first["threadId"] != other["threadId"]


async def test_a_parent_arriving_after_its_reply_joins_the_replys_thread(mail):  # noqa: F811
    reply = await imported(mail, message("Re: Plans", "p2@x", in_reply_to="p1@x"))
    parent = await imported(mail, message("Plans", "p1@x"))
    assert parent["threadId"] == reply["threadId"]


async def test_a_bridging_message_keeps_the_two_threads_apart(mail):  # noqa: F811
    """RFC 8621 §3: threadId never changes, so two threads a message bridges stay two."""
    a = await imported(mail, message("Topic", "a@x"))
    b = await imported(mail, message("Topic", "b@x"))
    assert a["threadId"] != b["threadId"]
    bridge = await imported(mail, message("Re: Topic", "c@x", references="<a@x> <b@x>"))
    assert bridge["threadId"] in (a["threadId"], b["threadId"])
    for one in (a, b):
        got = await call(mail, "Email/get", {"ids": [one["id"]], "properties": ["threadId"]})
        assert got["list"][0]["threadId"] == one["threadId"]


async def test_threading_within_one_batch(mail):  # noqa: F811
    """Messages imported together thread with each other as if imported one by one."""
    runtime = mail.server.app[RUNTIME]
    box = await inbox(mail)
    async with runtime.db.write() as tx:
        results = await import_messages(tx, runtime, mail.account_id, [
            ImportItem(message("Re: Batch", "b2@x", in_reply_to="b1@x"), (box,), ("$seen",), 1_700_000_100),
            ImportItem(message("Batch", "b1@x"), (box,), (), 1_700_000_000),
            ImportItem(b"no headers here", (box,)),
            ImportItem(message(), ("Mnope",)),
            ImportItem(message(), (box,), ("bad keyword",)),
        ])
    assert isinstance(results[0], Imported) and isinstance(results[1], Imported)
    assert results[0].thread_id == results[1].thread_id
    assert [getattr(r, "type", None) for r in results[2:]] == ["invalidEmail", "invalidProperties",
                                                               "invalidProperties"]
    thread = await call(mail, "Thread/get", {"ids": [results[0].thread_id]})
    assert thread["list"][0]["emailIds"] == [results[1].id, results[0].id]


@pytest.mark.parametrize("args", [{"ids": None}, {"ids": "x"}, {"ids": [], "properties": ["nope"]}])
async def test_thread_get_rejects_bad_arguments(mail, args):  # noqa: F811
    assert (await error(mail, "Thread/get", args))["type"] in ("invalidArguments", "requestTooLarge")


async def test_thread_get_unknown_is_not_found(mail):  # noqa: F811
    got = await call(mail, "Thread/get", {"ids": ["Tnope"]})
    assert got["list"] == [] and got["notFound"] == ["Tnope"]
