"""Email/query and Email/queryChanges (RFC 8621 §4.4, §4.5): inMailbox, receivedAt, collapseThreads, windowing."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from test_mail_import import imported, inbox, mail, message  # noqa: F401  (fixture)
from test_mail_mailbox import MAIL_USING, call, error, mailboxes


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
    assert result["total"] == 4 and result["position"] == 0 and result["canCalculateChanges"] is True
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
    ({"sort": [{"property": "receivedAt", "collation": 1}]}, "invalidArguments"),
    ({"sort": [{"isAscending": True}]}, "invalidArguments"),
    ({"sort": [5]}, "invalidArguments"),
    ({"position": "1"}, "invalidArguments"),
    ({"limit": -1}, "invalidArguments"),
    ({"anchor": 5}, "invalidArguments"),
    ({"collapseThreads": 1}, "invalidArguments"),
    ({"calculateTotal": None}, "invalidArguments"),
    ({"other": 1}, "invalidArguments"),
])
async def test_query_rejects_bad_arguments(mail, args, kind):  # noqa: F811
    assert (await error(mail, "Email/query", args))["type"] == kind


async def test_unknown_comparator_properties_are_ignored_as_jmapc_sends_them(mail, four):  # noqa: F811
    """RFC 8620 §5.5: a data type may define extra Comparator properties; jmapc serialises anchorOffset,
    calculateTotal and position into every Comparator. They are ignored, not invalidArguments."""
    import jmapc

    box = await inbox(mail)
    comparator = jmapc.Comparator(property="receivedAt", is_ascending=False).to_dict()
    assert set(comparator) > {"property", "isAscending"}
    result = await call(mail, "Email/query", {"filter": {"inMailbox": box}, "sort": [comparator]})
    assert result["ids"] == [four[3], four[2], four[1], four[0]]
    ascending = {**jmapc.Comparator(property="receivedAt").to_dict(), "keyword": "$seen", "x-vendor": [1]}
    result = await call(mail, "Email/query", {"filter": {"inMailbox": box}, "sort": [ascending]})
    assert result["ids"] == [four[0], four[1], four[2], four[3]]
    state = result["queryState"]
    changes = await call(mail, "Email/queryChanges", {"filter": {"inMailbox": box}, "sort": [ascending],
                                                      "sinceQueryState": state})
    assert changes["added"] == [] and changes["removed"] == []


async def test_email_query_sort_options_lists_exactly_the_supported_sorts(mail, four):  # noqa: F811
    """RFC 8621 §1.3.1 emailQuerySortOptions: "a list of all the values the server supports for the
    property field of the Comparator"; every one listed works, and nothing else is listed."""
    resp = await mail.get("/jmap/session", headers=mail.headers())
    options = (await resp.json())["accounts"][mail.account_id]["accountCapabilities"][
        "urn:ietf:params:jmap:mail"]["emailQuerySortOptions"]
    assert options == ["receivedAt"]
    for prop in options:
        for ascending in (True, False):
            result = await call(mail, "Email/query", {"sort": [{"property": prop, "isAscending": ascending}]})
            assert len(result["ids"]) == 5
    for prop in ("sentAt", "size", "from", "to", "subject", "hasKeyword"):
        assert (await error(mail, "Email/query", {"sort": [{"property": prop}]}))["type"] == "unsupportedSort"


async def test_deep_filter_nesting_is_refused(mail):  # noqa: F811
    """RFC 8620 §5.5: a filter the server will not process is unsupportedFilter (at most 16 levels)."""
    tree: dict = {"inMailbox": "M1"}
    for _ in range(40):
        tree = {"operator": "AND", "conditions": [tree]}
    assert (await error(mail, "Email/query", {"filter": tree}))["type"] == "unsupportedFilter"


@pytest.mark.parametrize("method,extra", [("Email/query", {}), ("Email/queryChanges", {"sinceQueryState": "0"})])
async def test_hostile_filter_and_sort_sizes_are_refused_promptly(mail, method, extra):  # noqa: F811
    """RFC 8620 §5.5: at most 256 operators and conditions in a filter, at most 16 Comparators."""
    box = await inbox(mail)
    async with asyncio.timeout(5):
        many = {"operator": "AND", "conditions": [{"inMailbox": box}] * 20_000}
        error_ = await error(mail, method, {**extra, "filter": many})
        assert error_["type"] == "unsupportedFilter" and "256" in error_["description"]
        error_ = await error(mail, method, {**extra, "sort": [{"property": "receivedAt"}] * 20_000})
        assert error_["type"] == "unsupportedSort" and "16" in error_["description"]
    assert "queryState" in await call(mail, "Email/query", {"filter": {
        "operator": "AND", "conditions": [{"inMailbox": box}] * 255}})




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


# Email/queryChanges (RFC 8621 §4.5, RFC 8620 §5.6)

def apply_changes(old: list[str], result: dict[str, Any]) -> list[str]:
    """What a client does with a /queryChanges response (RFC 8620 §5.6): removed first, then added by index."""
    assert [a["index"] for a in result["added"]] == sorted(a["index"] for a in result["added"])
    removed = set(result["removed"])
    out = [i for i in old if i not in removed]
    for item in result["added"]:
        out.insert(item["index"], item["id"])
    return out


async def test_query_changes_reports_a_new_email_at_its_place(mail, four):  # noqa: F811
    """RFC 8620 §5.6: an email that arrived since the old state is added at its index in the new results."""
    box = await inbox(mail)
    args = {"filter": {"inMailbox": box}, "sort": [{"property": "receivedAt", "isAscending": False}]}
    before = await call(mail, "Email/query", args)
    new = await imported(mail, message("Six", "6@x"), receivedAt="2026-11-02T12:00:00Z")
    result = await call(mail, "Email/queryChanges", {**args, "sinceQueryState": before["queryState"],
                                                     "calculateTotal": True})
    after = await call(mail, "Email/query", args)
    assert result == {"accountId": mail.account_id, "oldQueryState": before["queryState"],
                      "newQueryState": after["queryState"], "removed": [new["id"]],
                      "added": [{"id": new["id"], "index": 2}], "total": 5}
    assert apply_changes(before["ids"], result) == after["ids"] == [four[3], four[2], new["id"], four[1], four[0]]
    unchanged = await call(mail, "Email/queryChanges", {**args, "sinceQueryState": after["queryState"]})
    assert unchanged["removed"] == [] and unchanged["added"] == []
    assert unchanged["oldQueryState"] == unchanged["newQueryState"] == after["queryState"]


async def test_query_changes_reports_an_email_that_left_the_mailbox(mail, four):  # noqa: F811
    """RFC 8620 §5.6: an email moved out of the filtered mailbox is removed and not added again."""
    boxes = await mailboxes(mail)
    args = {"filter": {"inMailbox": boxes["Inbox"]["id"]}}
    before = await call(mail, "Email/query", args)
    await call(mail, "Email/set", {"update": {four[1]: {"mailboxIds": {boxes["Archive"]["id"]: True}}}})
    result = await call(mail, "Email/queryChanges", {**args, "sinceQueryState": before["queryState"]})
    assert result["removed"] == [four[1]] and result["added"] == []
    assert apply_changes(before["ids"], result) == (await call(mail, "Email/query", args))["ids"]


@pytest.mark.parametrize("change", ["move", "destroy", "reply"])
async def test_collapsed_query_changes_show_the_next_email_of_a_thread(mail, four, change):  # noqa: F811
    """RFC 8621 §4.5 with collapseThreads: when the email standing for a thread leaves (moved away or
    destroyed), or a newer reply takes its place, the thread's email in the results changes."""
    boxes = await mailboxes(mail)
    args = {"filter": {"inMailbox": boxes["Inbox"]["id"]}, "collapseThreads": True}
    before = await call(mail, "Email/query", args)
    assert before["ids"] == [four[3], four[2], four[1]]   # four[2] stands for the thread of four[0]
    if change == "move":
        await call(mail, "Email/set", {"update": {four[2]: {"mailboxIds": {boxes["Archive"]["id"]: True}}}})
        expected = [four[3], four[1], four[0]]
    elif change == "destroy":
        await call(mail, "Email/set", {"destroy": [four[2]]})
        expected = [four[3], four[1], four[0]]
    else:
        reply = await imported(mail, message("Re: One", "7@x", in_reply_to="3@x"), receivedAt="2026-11-06T00:00:00Z")
        expected = [reply["id"], four[3], four[1]]
    result = await call(mail, "Email/queryChanges", {**args, "sinceQueryState": before["queryState"]})
    assert (await call(mail, "Email/query", args))["ids"] == expected
    assert apply_changes(before["ids"], result) == expected


async def test_query_changes_up_to_id_leaves_out_what_comes_after_it(mail, four):  # noqa: F811
    """RFC 8620 §5.6 upToId: the client holds the results up to that id; nothing is added after it."""
    args = {"sort": [{"property": "receivedAt", "isAscending": True}]}
    before = await call(mail, "Email/query", args)
    assert before["ids"] == four
    early = await imported(mail, message("Early", "e@x"), receivedAt="2026-10-01T00:00:00Z")
    late = await imported(mail, message("Late", "l@x"), receivedAt="2026-12-01T00:00:00Z")
    result = await call(mail, "Email/queryChanges", {**args, "sinceQueryState": before["queryState"],
                                                     "upToId": four[1]})
    assert result["added"] == [{"id": early["id"], "index": 0}]
    assert sorted(result["removed"]) == sorted([early["id"], late["id"]])
    assert apply_changes(before["ids"][:2], result) == [early["id"], four[0], four[1]]
    full = await call(mail, "Email/queryChanges", {**args, "sinceQueryState": before["queryState"]})
    assert full["added"] == [{"id": early["id"], "index": 0}, {"id": late["id"], "index": 6}]


async def test_query_changes_too_many_changes(mail, four):  # noqa: F811
    """RFC 8620 §5.6: more changes (removed plus added) than maxChanges is tooManyChanges."""
    before = await call(mail, "Email/query", {})
    await imported(mail, message("Six", "6@x"))
    args = {"sinceQueryState": before["queryState"]}
    assert (await error(mail, "Email/queryChanges", {**args, "maxChanges": 1}))["type"] == "tooManyChanges"
    result = await call(mail, "Email/queryChanges", {**args, "maxChanges": 2})
    assert len(result["removed"]) + len(result["added"]) == 2


@pytest.mark.parametrize("state", ["x", "", "-1", "01", "1.0", " 1", "\u0661", "99999999999999999999", "1000000"])
async def test_query_changes_from_a_state_never_issued_cannot_be_calculated(mail, four, state):  # noqa: F811
    """RFC 8620 §5.6: a sinceQueryState the server cannot calculate from is cannotCalculateChanges."""
    assert (await error(mail, "Email/queryChanges", {"sinceQueryState": state}))["type"] == "cannotCalculateChanges"


@pytest.mark.parametrize("args,kind", [
    ({}, "invalidArguments"),
    ({"sinceQueryState": None}, "invalidArguments"),
    ({"sinceQueryState": 3}, "invalidArguments"),
    ({"sinceQueryState": ["0"]}, "invalidArguments"),
    ({"sinceQueryState": "0", "maxChanges": -1}, "invalidArguments"),
    ({"sinceQueryState": "0", "maxChanges": "5"}, "invalidArguments"),
    ({"sinceQueryState": "0", "maxChanges": 1.5}, "invalidArguments"),
    ({"sinceQueryState": "0", "maxChanges": 2**60}, "invalidArguments"),
    ({"sinceQueryState": "0", "upToId": 5}, "invalidArguments"),
    ({"sinceQueryState": "0", "upToId": "not an id!"}, "invalidArguments"),
    ({"sinceQueryState": "0", "calculateTotal": "yes"}, "invalidArguments"),
    ({"sinceQueryState": "0", "collapseThreads": 1}, "invalidArguments"),
    ({"sinceQueryState": "0", "position": 0}, "invalidArguments"),
    ({"sinceQueryState": "0", "filter": {"inMailbox": 5}}, "invalidArguments"),
    ({"sinceQueryState": "0", "filter": {"text": "x"}}, "unsupportedFilter"),
    ({"sinceQueryState": "0", "sort": [{"property": "subject"}]}, "unsupportedSort"),
])
async def test_query_changes_rejects_bad_arguments(mail, args, kind):  # noqa: F811
    """RFC 8620 §3.6.2, §5.6: wrong types are invalidArguments; the query's own errors as Email/query has them."""
    assert (await error(mail, "Email/queryChanges", args))["type"] == kind


INBOX_AND_ARCHIVE = "inbox+archive"


async def batch(client, calls: list[tuple[str, dict[str, Any]]]) -> list[list[Any]]:
    """The calls in as few requests as the server's maxCallsInRequest allows."""
    out: list[list[Any]] = []
    for start in range(0, len(calls), 32):
        out += await client.calls(*[(m, {"accountId": client.account_id, **a}) for m, a in calls[start:start + 32]],
                                  using=MAIL_USING)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_query_changes_bring_old_results_to_the_new_ones_after_random_changes(mail, seed):  # noqa: F811
    """RFC 8620 §5.6: the old results with removed taken out and added put in are the new results, for every
    query Email/query supports (inMailbox alone or ANDed, either order, with and without collapseThreads),
    in full, up to an upToId, and within maxChanges, after random imports, replies, moves, keyword changes
    and destroys."""
    rng = random.Random(seed)
    boxes = await mailboxes(mail)
    inbox_id, archive_id = boxes["Inbox"]["id"], boxes["Archive"]["id"]
    filters = {"all": None, "inbox": {"inMailbox": inbox_id},
               INBOX_AND_ARCHIVE: {"operator": "AND", "conditions": [{"inMailbox": inbox_id},
                                                                     {"inMailbox": archive_id}]}}
    variants = [{"filter": f, "sort": [{"property": "receivedAt", "isAscending": ascending}],
                 "collapseThreads": collapse}
                for f in filters.values() for ascending in (True, False) for collapse in (False, True)]
    variants.append({"collapseThreads": True})   # no sort: newest first
    emails: list[str] = []
    serial = 0

    async def add() -> None:
        nonlocal serial
        serial += 1
        topic = rng.randrange(6)   # the messages of a topic make one thread
        raw = message(("Re: " if rng.random() < 0.5 else "") + f"Topic {topic}", f"m{serial}@x",
                      references=f"<root{topic}@x>")
        box_choice = rng.choice([{inbox_id: True}, {archive_id: True}, {inbox_id: True, archive_id: True}])
        day = rng.randrange(1, 6)   # few distinct receivedAt: ties are ordered by id
        created = await imported(mail, raw, mailboxIds=box_choice, receivedAt=f"2026-11-0{day}T00:00:00Z")
        emails.append(created["id"])

    for _ in range(6):
        await add()
    for _ in range(12):
        responses = await batch(mail, [("Email/query", v) for v in variants])
        before = [r[1] for r in responses]
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["add", "add", "move", "keyword", "destroy"])
            if kind == "add" or not emails:
                await add()
            elif kind == "move":
                target = rng.choice([{inbox_id: True}, {archive_id: True}, {inbox_id: True, archive_id: True}])
                await call(mail, "Email/set", {"update": {rng.choice(emails): {"mailboxIds": target}}})
            elif kind == "keyword":
                await call(mail, "Email/set", {"update": {rng.choice(emails): {"keywords/$seen": True}}})
            else:
                gone = rng.choice(emails)
                emails.remove(gone)
                await call(mail, "Email/set", {"destroy": [gone]})
        calls: list[tuple[str, dict[str, Any]]] = []
        up_to: list[str | None] = []
        for variant, old in zip(variants, before):
            since = {**variant, "sinceQueryState": old["queryState"], "calculateTotal": True}
            up_to.append(rng.choice(old["ids"]) if old["ids"] else None)
            calls += [("Email/query", variant), ("Email/queryChanges", since),
                      ("Email/queryChanges", {**since, "upToId": up_to[-1]})]
        responses = await batch(mail, calls)
        for n, (variant, old) in enumerate(zip(variants, before)):
            (_, now, _), (name, full, _), (_, partial, _) = responses[3 * n:3 * n + 3]
            assert name == "Email/queryChanges", full
            assert full["newQueryState"] == now["queryState"] and full["total"] == len(now["ids"])
            assert apply_changes(old["ids"], full) == now["ids"], (variant, old["ids"], full)
            if up_to[n] in now["ids"]:
                last = now["ids"].index(up_to[n])
                prefix = old["ids"][:old["ids"].index(up_to[n]) + 1]
                assert apply_changes(prefix, partial) == now["ids"][:last + 1], (variant, up_to[n], partial)
            else:
                assert partial == full
            size = len(full["removed"]) + len(full["added"])
            args = {**variant, "sinceQueryState": old["queryState"]}
            exact = await call(mail, "Email/queryChanges", {**args, "maxChanges": size})
            assert apply_changes(old["ids"], exact) == now["ids"]
            if size:
                too_many = await error(mail, "Email/queryChanges", {**args, "maxChanges": size - 1})
                assert too_many["type"] == "tooManyChanges"
