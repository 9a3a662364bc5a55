"""Email/query (RFC 8621 §4.4) for the first view: inMailbox, receivedAt, collapseThreads, windowing."""

from __future__ import annotations

import pytest

from test_mail_import import imported, inbox, mail, message  # noqa: F401  (fixture)
from test_mail_mailbox import call, error, mailboxes


@pytest.fixture
async def four(mail):  # noqa: F811
    """Four emails in the Inbox (two in one thread), one in the Archive, at increasing receivedAt."""
    archive = (await mailboxes(mail))["Archive"]["id"]
    made = [
        await imported(mail, message("One", "1@x"), receivedAt="2026-11-01T00:00:00Z"),
        await imported(mail, message("Two", "2@x"), receivedAt="2026-11-02T00:00:00Z"),
        await imported(mail, message("Re: One", "3@x", in_reply_to="1@x"), receivedAt="2026-11-03T00:00:00Z"),
        await imported(mail, message("Four", "4@x"), receivedAt="2026-11-04T00:00:00Z"),
        await imported(mail, message("Five", "5@x"), receivedAt="2026-11-05T00:00:00Z",
                       mailboxIds={archive: True}),
    ]
    return [m["id"] for m in made]


async def test_in_mailbox_newest_first(mail, four):  # noqa: F811
    """The first view: inMailbox, receivedAt descending."""
    box = await inbox(mail)
    result = await call(mail, "Email/query", {"filter": {"inMailbox": box},
                                              "sort": [{"property": "receivedAt", "isAscending": False}],
                                              "calculateTotal": True})
    assert result["ids"] == [four[3], four[2], four[1], four[0]]
    assert result["total"] == 4 and result["position"] == 0 and result["canCalculateChanges"] is False
    ascending = await call(mail, "Email/query", {"filter": {"inMailbox": box}, "sort": [{"property": "receivedAt"}]})
    assert ascending["ids"] == [four[0], four[1], four[2], four[3]]


async def test_whole_account_and_collapse_threads(mail, four):  # noqa: F811
    result = await call(mail, "Email/query", {"collapseThreads": True, "calculateTotal": True})
    assert result["ids"] == [four[4], four[3], four[2], four[1]] and result["total"] == 4
    box = await inbox(mail)
    result = await call(mail, "Email/query", {"filter": {"operator": "AND", "conditions": [{"inMailbox": box}]},
                                              "collapseThreads": True})
    assert result["ids"] == [four[3], four[2], four[1]]


async def test_position_anchor_and_limit(mail, four):  # noqa: F811
    """RFC 8620 §5.5: position, negative position, anchor with anchorOffset, limit."""
    box = await inbox(mail)
    base = {"filter": {"inMailbox": box}}
    assert (await call(mail, "Email/query", {**base, "position": 1, "limit": 2}))["ids"] == [four[2], four[1]]
    negative = await call(mail, "Email/query", {**base, "position": -1})
    assert negative["ids"] == [four[0]] and negative["position"] == 3
    anchored = await call(mail, "Email/query", {**base, "anchor": four[2], "anchorOffset": -1, "limit": 2})
    assert anchored["ids"] == [four[3], four[2]] and anchored["position"] == 0
    assert (await error(mail, "Email/query", {**base, "anchor": "Enope"}))["type"] == "anchorNotFound"


async def test_two_mailboxes_anded(mail, four):  # noqa: F811
    boxes = await mailboxes(mail)
    result = await call(mail, "Email/query", {"filter": {"operator": "AND", "conditions": [
        {"inMailbox": boxes["Inbox"]["id"]}, {"inMailbox": boxes["Archive"]["id"]}]}})
    assert result["ids"] == []


@pytest.mark.parametrize("args,kind", [
    ({"filter": {"text": "x"}}, "unsupportedFilter"),
    ({"filter": {"operator": "OR", "conditions": []}}, "unsupportedFilter"),
    ({"filter": {"operator": "XOR", "conditions": []}}, "invalidArguments"),
    ({"filter": {"operator": "AND", "conditions": "x"}}, "invalidArguments"),
    ({"filter": {"inMailbox": 5}}, "invalidArguments"),
    ({"filter": []}, "invalidArguments"),
    ({"sort": [{"property": "subject"}]}, "unsupportedSort"),
    ({"sort": [{"property": "receivedAt", "isAscending": "yes"}]}, "invalidArguments"),
    ({"sort": "receivedAt"}, "invalidArguments"),
    ({"sort": [{"property": "receivedAt", "extra": 1}]}, "invalidArguments"),
    ({"position": "1"}, "invalidArguments"),
    ({"limit": -1}, "invalidArguments"),
    ({"anchor": 5}, "invalidArguments"),
    ({"collapseThreads": 1}, "invalidArguments"),
    ({"calculateTotal": None}, "invalidArguments"),
    ({"other": 1}, "invalidArguments"),
])
async def test_query_rejects_bad_arguments(mail, args, kind):  # noqa: F811
    assert (await error(mail, "Email/query", args))["type"] == kind


async def test_deep_filter_nesting_is_refused(mail):  # noqa: F811
    tree: dict = {"inMailbox": "M1"}
    for _ in range(100):
        tree = {"operator": "AND", "conditions": [tree]}
    assert (await error(mail, "Email/query", {"filter": tree}))["type"] == "invalidArguments"


async def test_query_changes_cannot_calculate(mail):  # noqa: F811
    """RFC 8620 §5.6: a server may always answer cannotCalculateChanges."""
    assert (await error(mail, "Email/queryChanges", {"sinceQueryState": "0"}))["type"] == "cannotCalculateChanges"


async def test_totals_come_from_the_maintained_counts_and_agree_with_the_ids(mail, four):  # noqa: F811
    box = await inbox(mail)
    for collapse in (False, True):
        for box_filter in ({"inMailbox": box}, None):
            args = {"filter": box_filter, "collapseThreads": collapse, "calculateTotal": True}
            every = await call(mail, "Email/query", {**args, "position": -100})   # the general path
            first = await call(mail, "Email/query", {**args, "limit": 2})
            later = await call(mail, "Email/query", {**args, "position": 2})
            assert first["total"] == later["total"] == every["total"] == len(every["ids"])
            assert first["ids"] + later["ids"] == every["ids"]
    beyond = await call(mail, "Email/query", {"filter": {"inMailbox": box}, "position": 50, "calculateTotal": True})
    assert beyond["ids"] == [] and beyond["total"] == 4
    empty = await call(mail, "Email/query", {"filter": {"inMailbox": "Mnope"}, "calculateTotal": True})
    assert empty["ids"] == [] and empty["total"] == 0
