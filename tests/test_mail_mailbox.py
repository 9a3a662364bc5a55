"""Mailbox (RFC 8621 §2): /get, /changes, /query, /queryChanges and /set over HTTP, and the counts."""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
from typing import Any

import pytest

from conftest import CORE, add_user, basic
from jmaple.app import make_app
from jmaple.config import Config
from jmaple.core.capability import BUILTIN_PLUGINS, ENTRY_POINT_GROUP
from jmaple.keys import RUNTIME
from jmaple.mail import PLUGIN as MAIL_PLUGIN
from jmaple.mail import storage
from jmaple.mail.storage import EmailRecord
from jmaple.store import changes

MAIL = "urn:ietf:params:jmap:mail"
MAIL_USING = [CORE, MAIL]
COUNTS = ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]
ALL_RIGHTS = {"mayReadItems": True, "mayAddItems": True, "mayRemoveItems": True, "maySetSeen": True,
              "maySetKeywords": True, "mayCreateChild": True, "mayRename": True, "mayDelete": True,
              "maySubmit": True}


def mail_plugins() -> list[Any]:
    """The mail plugin, unless the registry already finds it (entry point or built-in)."""
    registered = "mail" in BUILTIN_PLUGINS or any(
        ep.name == "mail" for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return [] if registered else [MAIL_PLUGIN]


async def mail_client(aiohttp_client, tmp_path, login: str = "alice@example.org", **mail_settings: Any):
    """A client logged in as `login` on an app with the mail capability ([capabilities.mail] as given)."""
    config = Config.for_tests(data_dir=tmp_path / "data", capabilities={"mail": mail_settings})
    client = await aiohttp_client(make_app(config, capabilities=mail_plugins()))
    user = await add_user(client, login)
    client.auth = basic(login)
    client.account_id = user.account_id
    return client


@pytest.fixture
async def mail(aiohttp_client, tmp_path):
    return await mail_client(aiohttp_client, tmp_path)


async def call(client, method: str, args: dict[str, Any]) -> dict[str, Any]:
    return await client.call(method, args, using=MAIL_USING)


async def error(client, method: str, args: dict[str, Any]) -> dict[str, Any]:
    return await client.error(method, {"accountId": client.account_id, **args}, using=MAIL_USING)


async def mailboxes(client, **args: Any) -> dict[str, dict[str, Any]]:
    """name -> Mailbox (names are unique in these tests)."""
    result = await call(client, "Mailbox/get", {"ids": None, **args})
    return {m["name"]: m for m in result["list"]}


async def ids_by_name(client) -> dict[str, str]:
    return {name: m["id"] for name, m in (await mailboxes(client)).items()}


async def create(client, **objects: dict[str, Any]) -> dict[str, str]:
    """Create mailboxes (creation id -> properties); returns creation id -> id, asserting each succeeded."""
    result = await call(client, "Mailbox/set", {"create": objects})
    assert result["notCreated"] is None, result["notCreated"]
    return {cid: created["id"] for cid, created in result["created"].items()}


async def set_mailboxes(client, **args: Any) -> dict[str, Any]:
    return await call(client, "Mailbox/set", args)


async def mailbox_state(client) -> str:
    return (await call(client, "Mailbox/get", {"ids": []}))["state"]


# Emails stored straight through storage (Email/import comes with the Email methods).

_serial = itertools.count(1)


def email(mailbox_ids: list[str], *, thread: str | None = None, keywords: tuple[str, ...] = (),
          received_at: int = 1_700_000_000) -> EmailRecord:
    n = next(_serial)
    return EmailRecord(id=f"E{n}", blob_id=f"G{n:040x}", thread_id=thread or f"T{n}", size=100 + n,
                       received_at=received_at, mailbox_ids=mailbox_ids, keywords=keywords,
                       thread_keys=(f"{n}@example.org",), message_id=f"{n}@example.org",
                       base_subject=f"subject {thread or n}")


async def add_emails(client, *emails: EmailRecord, account_id: str | None = None) -> list[str]:
    async with client.app[RUNTIME].db.write() as tx:
        await storage.insert_emails(tx, account_id or client.account_id, list(emails))
    return [e.id for e in emails]


async def update_emails(client, **kwargs: Any) -> list[str]:
    async with client.app[RUNTIME].db.write() as tx:
        return await storage.update_emails(tx, client.account_id, **kwargs)


async def destroy_emails(client, ids: list[str]) -> list[str]:
    async with client.app[RUNTIME].db.write() as tx:
        return await storage.destroy_emails(tx, client.account_id, ids)


async def assert_counts_consistent(client, account_id: str | None = None) -> dict[str, storage.MailboxCounts]:
    async with client.app[RUNTIME].db.read() as conn:
        stored = await storage.stored_counts(conn, account_id or client.account_id)
        fresh = await storage.recount(conn, account_id or client.account_id)
    assert stored == fresh
    return stored


def counts_of(mailbox: dict[str, Any]) -> list[int]:
    return [mailbox[c] for c in COUNTS]


# Mailbox/get (§2.1)

async def test_a_new_account_has_the_default_mailboxes_with_every_property(mail):
    """RFC 8621 §2: every property of a Mailbox; the defaults are subscribed, top level, with roles."""
    result = await call(mail, "Mailbox/get", {"ids": None})
    assert result["accountId"] == mail.account_id and result["notFound"] == []
    by_name = {m["name"]: m for m in result["list"]}
    assert sorted(by_name) == ["Archive", "Drafts", "Inbox", "Junk", "Sent", "Trash"]
    inbox = by_name["Inbox"]
    assert inbox == {
        "id": inbox["id"], "name": "Inbox", "parentId": None, "role": "inbox", "sortOrder": 1,
        "totalEmails": 0, "unreadEmails": 0, "totalThreads": 0, "unreadThreads": 0,
        "myRights": {**ALL_RIGHTS, "mayDelete": False}, "isSubscribed": True,
    }
    assert inbox["id"].startswith("M")
    assert {m["name"]: m["role"] for m in result["list"]} == {
        "Inbox": "inbox", "Drafts": "drafts", "Sent": "sent", "Archive": "archive", "Junk": "junk",
        "Trash": "trash"}
    assert by_name["Trash"]["myRights"] == ALL_RIGHTS


async def test_get_returns_asked_ids_and_properties_and_reports_unknown_ids(mail):
    """RFC 8620 §5.1 as used by §2.1: ids, properties (id always), notFound."""
    ids = await ids_by_name(mail)
    result = await call(mail, "Mailbox/get", {"ids": [ids["Sent"], "Mnope"], "properties": ["name", "role"]})
    assert result["list"] == [{"id": ids["Sent"], "name": "Sent", "role": "sent"}]
    assert result["notFound"] == ["Mnope"]
    assert (await error(mail, "Mailbox/get", {"properties": ["colour"]}))["type"] == "invalidArguments"


async def test_mail_methods_need_the_mail_capability_in_using(mail):
    [[name, result, _]] = await mail.calls(("Mailbox/get", {"accountId": mail.account_id}), using=[CORE])
    assert (name, result["type"]) == ("error", "unknownMethod")


# Mailbox/changes (§2.2)

async def test_changes_reports_created_updated_and_destroyed_mailboxes(mail):
    since = await mailbox_state(mail)
    made = await create(mail, a={"name": "A"}, b={"name": "B"})
    mid = await mailbox_state(mail)
    await set_mailboxes(mail, update={made["a"]: {"name": "A2"}}, destroy=[made["b"]])
    result = await call(mail, "Mailbox/changes", {"sinceState": mid})
    assert (result["created"], result["updated"], result["destroyed"]) == ([], [made["a"]], [made["b"]])
    assert result["updatedProperties"] is None
    result = await call(mail, "Mailbox/changes", {"sinceState": since})
    assert (result["created"], result["updated"], result["destroyed"]) == ([made["a"]], [], [])


async def test_changes_of_counts_alone_report_updated_properties(mail):
    """RFC 8621 §2.2 and the example of §2.6: counts changed, then Mailbox/get of just those."""
    ids = await ids_by_name(mail)
    since = await mailbox_state(mail)
    await add_emails(mail, email([ids["Inbox"]]))
    responses = await mail.calls(
        ["Mailbox/changes", {"accountId": mail.account_id, "sinceState": since}, "0"],
        ["Mailbox/get", {"accountId": mail.account_id,
                         "#ids": {"resultOf": "0", "name": "Mailbox/changes", "path": "/updated"},
                         "#properties": {"resultOf": "0", "name": "Mailbox/changes",
                                         "path": "/updatedProperties"}}, "1"],
        using=MAIL_USING)
    changed, got = responses[0][1], responses[1][1]
    assert changed["updated"] == [ids["Inbox"]] and changed["created"] == changed["destroyed"] == []
    assert changed["updatedProperties"] == COUNTS
    assert got["list"] == [{"id": ids["Inbox"], "totalEmails": 1, "unreadEmails": 1, "totalThreads": 1,
                            "unreadThreads": 1}]
    assert got["state"] == changed["newState"]


async def test_a_rename_besides_count_changes_makes_updated_properties_null(mail):
    """RFC 8621 §2.2: if more than the counts may have changed, updatedProperties is null."""
    ids = await ids_by_name(mail)
    since = await mailbox_state(mail)
    await add_emails(mail, email([ids["Inbox"]]))
    await set_mailboxes(mail, update={ids["Inbox"]: {"name": "In"}})
    result = await call(mail, "Mailbox/changes", {"sinceState": since})
    assert result["updated"] == [ids["Inbox"]] and result["updatedProperties"] is None


async def test_changes_from_a_state_never_issued_cannot_be_calculated(mail):
    assert (await error(mail, "Mailbox/changes", {"sinceState": "999999"}))["type"] == "cannotCalculateChanges"
    assert (await error(mail, "Mailbox/changes", {"sinceState": 5}))["type"] == "invalidArguments"


# Mailbox/query (§2.3) and /queryChanges (§2.4)

@pytest.fixture
async def tree(mail) -> dict[str, str]:
    """Inbox > {Work > {Projects, archive2}, family}, and the defaults."""
    ids = await ids_by_name(mail)
    made = await create(mail, work={"name": "Work", "parentId": ids["Inbox"], "sortOrder": 5},
                        family={"name": "family", "parentId": ids["Inbox"], "sortOrder": 5},
                        projects={"name": "Projects", "parentId": "#work", "isSubscribed": False},
                        old={"name": "archive2", "parentId": "#work"})
    return {**ids, "Work": made["work"], "family": made["family"], "Projects": made["projects"],
            "archive2": made["old"]}


async def query(client, **args: Any) -> list[str]:
    return (await call(client, "Mailbox/query", args))["ids"]


def names(tree: dict[str, str], ids: list[str]) -> list[str]:
    by_id = {v: k for k, v in tree.items()}
    return [by_id[i] for i in ids]


async def test_query_filters_on_each_condition(mail, tree):
    """RFC 8621 §2.3: parentId, name (contains), role, hasAnyRole, isSubscribed."""
    by_name = [{"property": "name"}]
    assert names(tree, await query(mail, filter={"parentId": tree["Inbox"]}, sort=by_name)) == ["family", "Work"]
    assert names(tree, await query(mail, filter={"parentId": None}, sort=by_name)) == [
        "Archive", "Drafts", "Inbox", "Junk", "Sent", "Trash"]
    assert names(tree, await query(mail, filter={"name": "ARCH"}, sort=by_name)) == ["Archive", "archive2"]
    assert names(tree, await query(mail, filter={"role": "trash"})) == ["Trash"]
    assert names(tree, await query(mail, filter={"role": None}, sort=by_name)) == [
        "archive2", "family", "Projects", "Work"]
    assert len(await query(mail, filter={"hasAnyRole": True})) == 6
    assert names(tree, await query(mail, filter={"hasAnyRole": False, "isSubscribed": True}, sort=by_name)) == [
        "archive2", "family", "Work"]
    assert names(tree, await query(mail, filter={"isSubscribed": False})) == ["Projects"]
    assert names(tree, await query(mail, filter={"operator": "NOT", "conditions": [{"hasAnyRole": True}]},
                                   sort=by_name)) == ["archive2", "family", "Projects", "Work"]


async def test_query_sorts_by_sort_order_and_name(mail, tree):
    """RFC 8621 §2.3: sortOrder and name MUST be supported; equal sortOrder falls back on the name."""
    ids = await query(mail, sort=[{"property": "sortOrder"}])
    assert names(tree, ids) == ["archive2", "Projects", "Inbox", "Drafts", "Sent", "Archive", "family", "Junk",
                                "Work", "Trash"]
    ids = await query(mail, sort=[{"property": "name", "isAscending": False}], filter={"hasAnyRole": False})
    assert names(tree, ids) == ["Work", "Projects", "family", "archive2"]
    result = await call(mail, "Mailbox/query", {"sort": [{"property": "name"}], "position": 2, "limit": 2,
                                                "calculateTotal": True})
    assert names(tree, result["ids"]) == ["Drafts", "family"] and result["total"] == 10
    assert result["position"] == 2 and result["canCalculateChanges"] is True


async def test_sort_as_tree_puts_parents_before_children(mail, tree):
    """RFC 8621 §2.3 sortAsTree: siblings sorted, each followed by its descendants."""
    ids = await query(mail, sort=[{"property": "sortOrder"}, {"property": "name"}], sortAsTree=True)
    assert names(tree, ids) == ["Inbox", "family", "Work", "archive2", "Projects", "Drafts", "Sent", "Archive",
                                "Junk", "Trash"]
    ids = await query(mail, sort=[{"property": "name", "isAscending": False}], sortAsTree=True,
                      filter={"hasAnyRole": False})
    assert names(tree, ids) == ["Work", "Projects", "archive2", "family"]


async def test_filter_as_tree_keeps_only_mailboxes_whose_ancestors_match(mail, tree):
    """RFC 8621 §2.3 filterAsTree: a mailbox is included only if all its ancestors are."""
    no_role = {"hasAnyRole": False}
    assert await query(mail, filter=no_role, filterAsTree=True) == []
    subscribed = {"isSubscribed": True}
    ids = await query(mail, filter=subscribed, filterAsTree=True, sortAsTree=True)
    assert "Projects" not in names(tree, ids) and "archive2" in names(tree, ids)
    await set_mailboxes(mail, update={tree["Work"]: {"isSubscribed": False}})
    ids = await query(mail, filter=subscribed, filterAsTree=True)
    assert not {"Work", "archive2", "Projects"} & set(names(tree, ids))
    assert "archive2" in names(tree, await query(mail, filter=subscribed))


async def test_query_refuses_what_it_cannot_do(mail):
    """RFC 8620 §5.5: unsupportedFilter, unsupportedSort, invalidArguments for bad values."""
    assert (await error(mail, "Mailbox/query", {"filter": {"colour": "red"}}))["type"] == "unsupportedFilter"
    assert (await error(mail, "Mailbox/query", {"sort": [{"property": "totalEmails"}]}))["type"] == \
        "unsupportedSort"
    for bad in [{"parentId": 5}, {"parentId": "not an id!"}, {"name": None}, {"role": ["inbox"]},
                {"hasAnyRole": "yes"}, {"isSubscribed": 1},
                {"operator": "AND", "conditions": [{"name": 3}]}, {"operator": "AND"}, "x"]:
        assert (await error(mail, "Mailbox/query", {"filter": bad}))["type"] == "invalidArguments", bad
    for args in [{"sortAsTree": "yes"}, {"filterAsTree": 1}, {"limit": -1}, {"position": "0"}, {"anchor": 7},
                 {"calculateTotal": None}, {"nope": 1}, {"sort": {"property": "name"}}]:
        assert (await error(mail, "Mailbox/query", args))["type"] == "invalidArguments", args
    assert (await error(mail, "Mailbox/query", {"anchor": "Mnope"}))["type"] == "anchorNotFound"


async def test_query_refuses_hostile_filter_and_sort_sizes_promptly(mail):
    """RFC 8620 §5.5: at most 256 operators and conditions in a filter, at most 16 Comparators."""
    async with asyncio.timeout(5):
        many = {"operator": "OR", "conditions": [{"name": str(n)} for n in range(20_000)]}
        for method, extra in (("Mailbox/query", {}), ("Mailbox/queryChanges", {"sinceQueryState": "0"})):
            error_ = await error(mail, method, {**extra, "filter": many})
            assert error_["type"] == "unsupportedFilter" and "256" in error_["description"]
            error_ = await error(mail, method, {**extra, "sort": [{"property": "name"}] * 20_000})
            assert error_["type"] == "unsupportedSort" and "16" in error_["description"]


async def test_query_changes_reports_renamed_mailboxes_and_their_subtree(mail, tree):
    """RFC 8621 §2.4 / RFC 8620 §5.6: what changed is removed and re-added where it now is."""
    sort = [{"property": "name"}]
    before = await call(mail, "Mailbox/query", {"sort": sort, "sortAsTree": True})
    await set_mailboxes(mail, update={tree["Work"]: {"name": "Zwork"}})
    await add_emails(mail, email([tree["Junk"]]))    # counts alone: nothing moves
    result = await call(mail, "Mailbox/queryChanges", {"sort": sort, "sortAsTree": True,
                                                       "sinceQueryState": before["queryState"],
                                                       "calculateTotal": True})
    now = await query(mail, sort=sort, sortAsTree=True)
    assert sorted(result["removed"]) == sorted([tree["Work"], tree["Projects"], tree["archive2"]])
    assert result["added"] == [{"id": i, "index": now.index(i)} for i in now if i in result["removed"]]
    assert result["total"] == 10 and result["newQueryState"] == await mailbox_state(mail)
    cached = [i for i in before["ids"] if i not in result["removed"]]
    for item in result["added"]:
        cached.insert(item["index"], item["id"])
    assert cached == now
    flat = await call(mail, "Mailbox/queryChanges", {"sort": sort, "sinceQueryState": before["queryState"]})
    assert flat["removed"] == [tree["Work"]]


async def test_query_changes_refuses_unknown_states_and_too_many_changes(mail, tree):
    state = await mailbox_state(mail)
    assert (await error(mail, "Mailbox/queryChanges", {"sinceQueryState": "x"}))["type"] == \
        "cannotCalculateChanges"
    await set_mailboxes(mail, update={tree["Work"]: {"name": "W"}, tree["family"]: {"name": "F"}})
    assert (await error(mail, "Mailbox/queryChanges", {"sinceQueryState": state, "maxChanges": 1}))["type"] == \
        "tooManyChanges"
    assert (await error(mail, "Mailbox/queryChanges", {}))["type"] == "invalidArguments"


# Mailbox/set (§2.5)

async def test_create_fills_in_defaults_and_server_set_properties(mail):
    """RFC 8620 §5.3: created holds every property the server set or defaulted."""
    result = await set_mailboxes(mail, create={"a": {"name": "Receipts"}})
    created = result["created"]["a"]
    assert created == {"id": created["id"], "parentId": None, "role": None, "sortOrder": 0,
                       "totalEmails": 0, "unreadEmails": 0, "totalThreads": 0, "unreadThreads": 0,
                       "myRights": ALL_RIGHTS, "isSubscribed": True}
    assert result["oldState"] != result["newState"] == await mailbox_state(mail)
    got = (await mailboxes(mail))["Receipts"]
    assert got == {**created, "name": "Receipts"}


async def test_a_name_must_be_non_empty_within_the_limit_and_free_of_control_characters(mail):
    """RFC 8621 §2 name: Net-Unicode, at least one character, at most maxSizeMailboxName octets."""
    bad = {"empty": "", "nul": "a\x00b", "tab": "a\tb", "c1": "a\x85b", "separator": "a\u2028b",
           "long": "é" * 128, "number": 7, "null": None}
    result = await set_mailboxes(mail, create={k: {"name": v} for k, v in bad.items()})
    assert result["created"] is None
    assert {k: (e["type"], e["properties"]) for k, e in result["notCreated"].items()} == {
        k: ("invalidProperties", ["name"]) for k in bad}
    result = await set_mailboxes(mail, create={"fits": {"name": "é" * 127 + "x"}, "missing": {}})
    assert "fits" in result["created"]
    assert result["notCreated"]["missing"]["properties"] == ["name"]


async def test_a_name_is_stored_in_nfc_and_the_client_is_told(mail):
    """RFC 8621 §2: names are Net-Unicode (RFC 5198: NFC)."""
    result = await set_mailboxes(mail, create={"a": {"name": "Cafe\u0301"}})
    assert result["created"]["a"]["name"] == "Caf\u00e9"
    mailbox_id = result["created"]["a"]["id"]
    result = await set_mailboxes(mail, update={mailbox_id: {"name": "Re\u0301sume\u0301"}})
    assert result["updated"] == {mailbox_id: {"name": "R\u00e9sum\u00e9"}}
    result = await set_mailboxes(mail, create={"b": {"name": "R\u00e9sum\u00e9"}})
    assert result["notCreated"]["b"] == {"type": "alreadyExists", "description": "a sibling mailbox has this name",
                                         "existingId": mailbox_id}


async def test_sibling_names_are_unique_and_the_duplicate_names_the_existing_one(mail):
    """RFC 8621 §2: no two siblings with the same name; RFC 8620 §5.3 alreadyExists with existingId."""
    ids = await ids_by_name(mail)
    made = await create(mail, a={"name": "Lists"}, b={"name": "Lists", "parentId": ids["Inbox"]},
                        c={"name": "Other"})
    result = await set_mailboxes(mail, create={"dup": {"name": "Lists"}, "case": {"name": "lists"}},
                                 update={made["c"]: {"name": "Lists"}})
    assert result["notCreated"]["dup"]["type"] == "alreadyExists"
    assert result["notCreated"]["dup"]["existingId"] == made["a"]
    assert "case" in result["created"]
    assert result["notUpdated"][made["c"]]["existingId"] == made["a"]
    result = await set_mailboxes(mail, update={made["b"]: {"parentId": None}})
    assert result["notUpdated"][made["b"]]["type"] == "alreadyExists"
    result = await set_mailboxes(mail, update={made["a"]: {"name": "Lists", "sortOrder": 3}})
    assert result["updated"] == {made["a"]: None}


async def test_roles_must_be_known_lower_case_and_unique(mail):
    """RFC 8621 §2 role: an IANA mailbox attribute in lower case; no two mailboxes with one role."""
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, create={
        "second": {"name": "Inbox 2", "role": "inbox"}, "upper": {"name": "F", "role": "Flagged"},
        "unknown": {"name": "U", "role": "spam"}, "state": {"name": "N", "role": "noselect"},
        "number": {"name": "X", "role": 1}, "ok": {"name": "Flagged", "role": "flagged"}})
    for cid in ("second", "upper", "unknown", "state", "number"):
        assert result["notCreated"][cid]["type"] == "invalidProperties"
        assert result["notCreated"][cid]["properties"] == ["role"]
    assert set(result["created"]) == {"ok"}
    result = await set_mailboxes(mail, update={ids["Sent"]: {"role": "junk"}})
    assert result["notUpdated"][ids["Sent"]]["properties"] == ["role"]
    # A role passed on within one call: first given up, then taken.
    result = await set_mailboxes(mail, update={ids["Junk"]: {"role": None}, ids["Sent"]: {"role": "junk"}})
    assert set(result["updated"]) == {ids["Junk"], ids["Sent"]}
    got = await mailboxes(mail)
    assert (got["Junk"]["role"], got["Sent"]["role"]) == (None, "junk")


async def test_two_mailboxes_may_swap_names_in_one_call(mail):
    """RFC 8620 §5.3: "A single method call could rename an object A => B and simultaneously rename another
    object B => A. If the final state is valid, this is allowed"; RFC 8621 §2 asks unique sibling names."""
    ids = await ids_by_name(mail)
    state = await mailbox_state(mail)
    result = await set_mailboxes(mail, update={ids["Junk"]: {"name": "Archive"}, ids["Archive"]: {"name": "Junk"}})
    assert result["updated"] == {ids["Junk"]: None, ids["Archive"]: None} and result["notUpdated"] is None
    got = await mailboxes(mail)
    assert (got["Archive"]["id"], got["Archive"]["role"]) == (ids["Junk"], "junk")
    assert (got["Junk"]["id"], got["Junk"]["role"]) == (ids["Archive"], "archive")
    changed = await call(mail, "Mailbox/changes", {"sinceState": state})
    assert sorted(changed["updated"]) == sorted([ids["Junk"], ids["Archive"]])
    assert changed["newState"] == result["newState"] == await mailbox_state(mail)
    # Three in a ring, and two that move together under a mailbox created in the same call.
    made = await create(mail, p={"name": "P"}, a={"name": "A"}, b={"name": "B", "parentId": "#p"})
    result = await set_mailboxes(mail, update={
        ids["Sent"]: {"name": "Drafts"}, ids["Drafts"]: {"name": "Trash"}, ids["Trash"]: {"name": "Sent"},
        made["a"]: {"parentId": made["p"], "name": "B"}, made["b"]: {"parentId": None, "name": "A"}})
    assert result["notUpdated"] is None and len(result["updated"]) == 5
    got = await mailboxes(mail)
    assert {n: got[n]["id"] for n in ("Drafts", "Trash", "Sent", "A", "B")} == {
        "Drafts": ids["Sent"], "Trash": ids["Drafts"], "Sent": ids["Trash"], "A": made["b"], "B": made["a"]}
    assert (got["A"]["parentId"], got["B"]["parentId"]) == (None, made["p"])


@pytest.mark.parametrize("reverse", [False, True], ids=["taken-then-given-up", "given-up-then-taken"])
async def test_a_role_passes_between_mailboxes_in_either_order(mail, reverse):
    """RFC 8621 §2 role: "there MUST NOT be two Mailboxes in the same account with the same role"; RFC 8620
    §5.3: only the final state must be valid, so the order of the updates does not matter. The trash rule of
    unreadThreads follows the role."""
    ids = await ids_by_name(mail)
    await add_emails(mail, email([ids["Junk"]], thread="t1"), email([ids["Trash"]], thread="t1"),
                     email([ids["Inbox"]], thread="t2"), email([ids["Trash"]], thread="t2"))
    update = {ids["Junk"]: {"role": "trash"}, ids["Trash"]: {"role": None}}
    if reverse:
        update = dict(reversed(update.items()))
    result = await set_mailboxes(mail, update=update)
    assert result["notUpdated"] is None and set(result["updated"]) == {ids["Junk"], ids["Trash"]}
    got = await mailboxes(mail)
    assert [name for name, m in got.items() if m["role"] == "trash"] == ["Junk"]
    assert got["Trash"]["role"] is None
    await assert_counts_consistent(mail)


async def test_updates_that_really_collide_are_refused_and_write_nothing(mail):
    """RFC 8621 §2: a duplicate sibling name is alreadyExists with existingId (RFC 8620 §5.3), a role taken
    by a mailbox that keeps it is invalidProperties [role]; each refused update changes nothing (§5.3: an
    update is atomic), whatever else the call does."""
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, update={ids["Junk"]: {"role": "trash", "sortOrder": 9},
                                               ids["Trash"]: {"name": "Bin"}})
    assert result["notUpdated"] == {ids["Junk"]: {
        "type": "invalidProperties", "properties": ["role"],
        "description": f"mailbox {ids['Trash']} already has the role trash"}}
    assert result["updated"] == {ids["Trash"]: None}
    got = await mailboxes(mail)
    assert (got["Junk"]["role"], got["Junk"]["sortOrder"], got["Bin"]["role"]) == ("junk", 5, "trash")
    # Two updates taking one name: the first gets it.
    for first, second in ((ids["Sent"], ids["Drafts"]), (ids["Drafts"], ids["Sent"])):
        result = await set_mailboxes(mail, update={first: {"name": "Same"}, second: {"name": "Same"}})
        assert result["updated"] == {first: None}
        assert result["notUpdated"][second] == {
            "type": "alreadyExists", "description": "a sibling mailbox has this name", "existingId": first}
        await set_mailboxes(mail, update={first: {"name": f"Was {first}"}})
    # A name is free only if the update giving it up succeeds: a refused one keeps it, and so does a
    # mailbox whose update moves it elsewhere in vain.
    for giving_up in ({"name": "Old", "sortOrder": -1}, {"name": "Old", "parentId": "Mnope"},
                      {"name": "Old", "role": "spam"}):
        result = await set_mailboxes(mail, update={ids["Archive"]: giving_up, ids["Junk"]: {"name": "Archive"}})
        assert set(result["notUpdated"]) == {ids["Archive"], ids["Junk"]}
        assert result["notUpdated"][ids["Junk"]]["existingId"] == ids["Archive"]
        assert result["updated"] is None
    # A chain: Archive gives its name up, and the name it takes was wanted by a later update too.
    result = await set_mailboxes(mail, update={ids["Archive"]: {"name": "Old"}, ids["Junk"]: {"name": "Archive"},
                                               ids["Inbox"]: {"name": "Old"}})
    assert set(result["updated"]) == {ids["Archive"], ids["Junk"]}
    assert result["notUpdated"][ids["Inbox"]]["existingId"] == ids["Archive"]
    got = await ids_by_name(mail)
    assert (got["Old"], got["Archive"], got["Inbox"]) == (ids["Archive"], ids["Junk"], ids["Inbox"])
    await assert_counts_consistent(mail)


async def test_the_inbox_cannot_be_destroyed_but_loses_that_protection_with_its_role(mail):
    """RFC 8621 §2 myRights.mayDelete is false for the inbox; destroying it is forbidden."""
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, destroy=[ids["Inbox"]])
    assert result["notDestroyed"][ids["Inbox"]]["type"] == "forbidden"
    result = await set_mailboxes(mail, update={ids["Inbox"]: {"role": None}})
    assert result["updated"][ids["Inbox"]] == {"myRights": ALL_RIGHTS}
    result = await set_mailboxes(mail, destroy=[ids["Inbox"]])
    assert result["destroyed"] == [ids["Inbox"]]


async def test_parent_ids_may_not_form_a_loop_or_name_an_unknown_mailbox(mail):
    """RFC 8621 §2 parentId: the mailboxes form a forest; there MUST NOT be a loop."""
    made = await create(mail, a={"name": "A"}, b={"name": "B", "parentId": "#a"}, c={"name": "C", "parentId": "#b"})
    result = await set_mailboxes(mail, update={made["a"]: {"parentId": made["c"]}, made["b"]: {"parentId": made["b"]}},
                                 create={"x": {"name": "X", "parentId": "Mnope"}, "y": {"name": "Y", "parentId": "#z"},
                                         "p": {"name": "P", "parentId": "#q"}, "q": {"name": "Q", "parentId": "#p"}})
    for key in (made["a"], made["b"]):
        assert result["notUpdated"][key] | {"description": ""} == {
            "type": "invalidProperties", "properties": ["parentId"], "description": ""}
    for cid in ("x", "y", "p", "q"):
        assert result["notCreated"][cid]["type"] == "invalidProperties", cid
    got = await mailboxes(mail)
    assert (got["A"]["parentId"], got["B"]["parentId"]) == (None, made["a"])


async def test_parent_may_be_a_mailbox_created_later_in_the_same_call(mail):
    """RFC 8620 §5.3: "#creationId" references to objects created in the same call."""
    result = await set_mailboxes(mail, create={"child": {"name": "Child", "parentId": "#parent"},
                                               "parent": {"name": "Parent"}})
    assert result["notCreated"] is None
    assert (await mailboxes(mail))["Child"]["parentId"] == result["created"]["parent"]["id"]


async def test_the_tree_may_not_be_deeper_than_max_mailbox_depth(aiohttp_client, tmp_path):
    """RFC 8621 §1.3.1 maxMailboxDepth: one more than the most ancestors a mailbox may have."""
    mail = await mail_client(aiohttp_client, tmp_path, max_mailbox_depth=3)
    made = await create(mail, a={"name": "A"}, b={"name": "B", "parentId": "#a"}, c={"name": "C", "parentId": "#b"},
                        x={"name": "X"}, y={"name": "Y", "parentId": "#x"})
    result = await set_mailboxes(mail, create={"d": {"name": "D", "parentId": made["c"]}})
    assert result["notCreated"]["d"]["properties"] == ["parentId"]
    # Moving X (two deep with Y) under B would put Y four deep; under A, three.
    result = await set_mailboxes(mail, update={made["x"]: {"parentId": made["b"]}})
    assert result["notUpdated"][made["x"]]["properties"] == ["parentId"]
    result = await set_mailboxes(mail, update={made["x"]: {"parentId": made["a"]}})
    assert result["updated"] == {made["x"]: None}
    result = await set_mailboxes(mail, update={made["y"]: {"parentId": made["c"]}})
    assert result["notUpdated"][made["y"]]["type"] == "invalidProperties"


async def test_max_size_mailbox_name_is_configurable_and_counts_octets(aiohttp_client, tmp_path):
    """RFC 8621 §1.3.1 maxSizeMailboxName: in octets of UTF-8."""
    mail = await mail_client(aiohttp_client, tmp_path, max_size_mailbox_name=100)
    result = await set_mailboxes(mail, create={"ok": {"name": "x" * 100}, "long": {"name": "x" * 101},
                                               "wide": {"name": "€" * 34}})
    assert set(result["created"]) == {"ok"}
    assert set(result["notCreated"]) == {"long", "wide"}


async def test_top_level_mailboxes_need_may_create_top_level_mailbox(aiohttp_client, tmp_path):
    """RFC 8621 §1.3.1 mayCreateTopLevelMailbox: without it, a null parentId is refused."""
    mail = await mail_client(aiohttp_client, tmp_path, may_create_top_level_mailbox=False)
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, create={"top": {"name": "Top"},
                                               "child": {"name": "C", "parentId": ids["Inbox"]}})
    assert result["notCreated"]["top"]["type"] == "forbidden"
    child = result["created"]["child"]["id"]
    result = await set_mailboxes(mail, update={child: {"parentId": None}, ids["Sent"]: {"name": "Sent mail"}})
    assert result["notUpdated"][child]["type"] == "forbidden"
    assert result["updated"] == {ids["Sent"]: None}


async def test_sort_order_is_an_unsigned_int_below_two_to_the_31(mail):
    """RFC 8621 §2 sortOrder: 0 <= sortOrder < 2^31."""
    result = await set_mailboxes(mail, create={"max": {"name": "A", "sortOrder": 2**31 - 1},
                                               "over": {"name": "B", "sortOrder": 2**31},
                                               "neg": {"name": "C", "sortOrder": -1},
                                               "float": {"name": "D", "sortOrder": 1.5},
                                               "huge": {"name": "E", "sortOrder": 2**53}})
    assert set(result["created"]) == {"max"}
    assert {e["properties"][0] for e in result["notCreated"].values()} == {"sortOrder"}


async def test_server_set_properties_cannot_be_set(mail):
    """RFC 8621 §2: id, the counts and myRights are server-set."""
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, create={"a": {"name": "A", "totalEmails": 0},
                                               "b": {"name": "B", "myRights": ALL_RIGHTS},
                                               "c": {"name": "C", "id": "M1"}})
    assert {cid: e["type"] for cid, e in result["notCreated"].items()} == {
        "a": "invalidProperties", "b": "invalidProperties", "c": "invalidProperties"}
    result = await set_mailboxes(mail, update={ids["Sent"]: {"unreadEmails": 5},
                                               ids["Junk"]: {"myRights/mayDelete": False}})
    assert result["notUpdated"][ids["Sent"]]["properties"] == ["unreadEmails"]
    assert result["notUpdated"][ids["Junk"]]["properties"] == ["myRights"]
    # The same values as stored are accepted (RFC 8620 §5.3).
    result = await set_mailboxes(mail, update={ids["Sent"]: {"totalEmails": 0, "myRights": ALL_RIGHTS}})
    assert result["updated"] == {ids["Sent"]: None}


async def test_is_subscribed_can_be_changed(mail):
    """RFC 8621 §2 isSubscribed."""
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, update={ids["Junk"]: {"isSubscribed": False}})
    assert result["updated"] == {ids["Junk"]: None}
    assert (await mailboxes(mail))["Junk"]["isSubscribed"] is False
    await set_mailboxes(mail, update={ids["Junk"]: {"isSubscribed": True}})
    assert (await mailboxes(mail))["Junk"]["isSubscribed"] is True


async def test_a_mailbox_with_children_is_not_destroyed_and_nothing_is_touched(mail):
    """RFC 8621 §2.5 mailboxHasChild, checked before onDestroyRemoveEmails removes anything."""
    made = await create(mail, parent={"name": "P"}, child={"name": "C", "parentId": "#parent"})
    [kept] = await add_emails(mail, email([made["parent"]]))
    state = await mailbox_state(mail)
    result = await set_mailboxes(mail, destroy=[made["parent"]], onDestroyRemoveEmails=True)
    assert result["notDestroyed"] == {made["parent"]: {
        "type": "mailboxHasChild", "description": "destroy or move its child mailboxes first"}}
    assert result["newState"] == state
    async with mail.app[RUNTIME].db.read() as conn:
        assert (await storage.email_states(conn, mail.account_id, [kept]))[kept].mailbox_ids == {made["parent"]}


async def test_a_whole_subtree_can_be_destroyed_in_one_call_in_any_order(mail):
    made = await create(mail, a={"name": "A"}, b={"name": "B", "parentId": "#a"}, c={"name": "C", "parentId": "#b"})
    result = await set_mailboxes(mail, destroy=[made["a"], made["c"], made["b"]])
    assert result["notDestroyed"] is None and sorted(result["destroyed"]) == sorted(made.values())


async def test_a_mailbox_with_emails_needs_on_destroy_remove_emails(mail):
    """RFC 8621 §2.5 mailboxHasEmail when onDestroyRemoveEmails is false (the default)."""
    made = await create(mail, box={"name": "Box"})
    await add_emails(mail, email([made["box"]]))
    for args in ({}, {"onDestroyRemoveEmails": False}):
        result = await set_mailboxes(mail, destroy=[made["box"]], **args)
        assert result["notDestroyed"][made["box"]]["type"] == "mailboxHasEmail"


async def test_on_destroy_remove_emails_destroys_emails_only_there_and_unlinks_the_rest(mail):
    """RFC 8621 §2.5 onDestroyRemoveEmails: emails in no other mailbox are destroyed."""
    ids = await ids_by_name(mail)
    made = await create(mail, box={"name": "Box"})
    box = made["box"]
    only = email([box], thread="Tshared")
    both = email([box, ids["Archive"]], thread="Tshared", keywords=("$seen",))
    other = email([ids["Inbox"]])
    await add_emails(mail, only, both, other)
    email_state = (await call(mail, "Mailbox/get", {"ids": []}))["state"]
    async with mail.app[RUNTIME].db.read() as conn:
        email_since = int(await changes.state(conn, mail.account_id, "Email"))
        thread_since = int(await changes.state(conn, mail.account_id, "Thread"))
    result = await set_mailboxes(mail, destroy=[box], onDestroyRemoveEmails=True)
    assert result["destroyed"] == [box]
    async with mail.app[RUNTIME].db.read() as conn:
        states = await storage.email_states(conn, mail.account_id, [only.id, both.id, other.id])
        email_log = await changes.since(conn, mail.account_id, "Email", email_since, None)
        thread_log = await changes.since(conn, mail.account_id, "Thread", thread_since, None)
        threads = await storage.thread_email_ids(conn, mail.account_id, ["Tshared"])
    assert set(states) == {both.id, other.id}
    assert states[both.id].mailbox_ids == {ids["Archive"]}
    assert {(c.object_id, c.is_destroyed) for c in email_log} == {(only.id, True), (both.id, False)}
    assert [(c.object_id, c.is_destroyed) for c in thread_log] == [("Tshared", False)]
    assert threads == {"Tshared": [both.id]}
    got = await mailboxes(mail)
    assert counts_of(got["Archive"]) == [1, 0, 1, 0]
    assert "Box" not in got
    changed = await call(mail, "Mailbox/changes", {"sinceState": email_state})
    assert changed["destroyed"] == [box] and changed["updatedProperties"] is None
    await assert_counts_consistent(mail)


async def test_emails_destroyed_with_their_mailbox_let_go_of_their_blobs(mail):
    """RFC 8620 §6: a blob no object refers to any more may go (at the next collection)."""
    made = await create(mail, box={"name": "Box"})
    runtime = mail.app[RUNTIME]
    data = b"Subject: hello\r\n\r\nbody\r\n"
    blob_id = await runtime.blobs.write(data)
    record = email([made["box"]])
    async with runtime.db.write() as tx:
        await runtime.blobs.register(tx, blob_id, data)
        await storage.insert_emails(tx, mail.account_id, [record])
        await runtime.blobs.add_refs(tx, mail.account_id, storage.email_blob_owner(record.id), [blob_id])
    async with runtime.db.read() as conn:
        assert len(await conn.all("SELECT * FROM blob_refs WHERE account_id = ?", (mail.account_id,))) == 1
    await set_mailboxes(mail, destroy=[made["box"]], onDestroyRemoveEmails=True)
    async with runtime.db.read() as conn:
        assert await conn.all("SELECT * FROM blob_refs WHERE account_id = ?", (mail.account_id,)) == []


async def test_destroying_unknown_or_repeated_ids(mail):
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, destroy=["Mnope", ids["Junk"], ids["Junk"]])
    assert result["destroyed"] == [ids["Junk"]]
    assert result["notDestroyed"] == {"Mnope": {"type": "notFound"}}


@pytest.mark.parametrize("args", [
    {"create": []}, {"create": "x"}, {"update": [1]}, {"destroy": "M1"}, {"destroy": [1]},
    {"destroy": ["bad id!"]}, {"onDestroyRemoveEmails": "true"}, {"onDestroyRemoveEmails": None},
    {"ifInState": 5}, {"colour": "red"},
])
async def test_set_refuses_malformed_arguments(mail, args):
    """RFC 8620 §3.6.2 invalidArguments, for each argument of Mailbox/set."""
    assert (await error(mail, "Mailbox/set", args))["type"] == "invalidArguments"


async def test_set_refuses_malformed_objects_one_by_one(mail):
    ids = await ids_by_name(mail)
    result = await set_mailboxes(mail, create={"list": [], "str": "x", "bad id!": {"name": "A"},
                                               "parent": {"name": "P", "parentId": 5},
                                               "subscribed": {"name": "S", "isSubscribed": "yes"},
                                               "unknown": {"name": "U", "colour": "red"}},
                                 update={ids["Sent"]: [], ids["Junk"]: {"name": None}, "Mnope": {"name": "x"},
                                         ids["Trash"]: {"parentId/x": 1}})
    assert result["created"] is None and len(result["notCreated"]) == 6
    assert result["notUpdated"][ids["Sent"]]["type"] == "invalidPatch"
    assert result["notUpdated"][ids["Junk"]]["properties"] == ["name"]
    assert result["notUpdated"]["Mnope"]["type"] == "notFound"
    assert result["notUpdated"][ids["Trash"]]["type"] == "invalidPatch"


async def test_if_in_state_guards_the_whole_call(mail):
    assert (await error(mail, "Mailbox/set", {"ifInState": "1", "create": {"a": {"name": "A"}}}))["type"] == \
        "stateMismatch"
    state = await mailbox_state(mail)
    assert (await set_mailboxes(mail, ifInState=state, create={"a": {"name": "A"}}))["created"]


@pytest.mark.parametrize("method, args", [
    ("Mailbox/get", {"ids": "M1"}), ("Mailbox/get", {"ids": [None]}), ("Mailbox/get", {"properties": "name"}),
    ("Mailbox/get", {"properties": [1]}), ("Mailbox/get", {"colour": 1}),
    ("Mailbox/changes", {}), ("Mailbox/changes", {"sinceState": None}),
    ("Mailbox/changes", {"sinceState": "0", "maxChanges": 0}),
    ("Mailbox/changes", {"sinceState": "0", "maxChanges": "5"}),
    ("Mailbox/changes", {"sinceState": "0", "maxChanges": 2**53}),
    ("Mailbox/queryChanges", {"sinceQueryState": "0", "upToId": 5}),
    ("Mailbox/queryChanges", {"sinceQueryState": "0", "maxChanges": -1}),
    ("Mailbox/queryChanges", {"sinceQueryState": "0", "sortAsTree": "no"}),
    ("Mailbox/queryChanges", {"sinceQueryState": "0", "filter": {"role": 5}}),
    ("Mailbox/queryChanges", {"sinceQueryState": "0", "position": 0}),
])
async def test_every_method_refuses_malformed_arguments(mail, method, args):
    """RFC 8620 §3.6.2 invalidArguments, for each argument of the other Mailbox methods."""
    assert (await error(mail, method, args))["type"] == "invalidArguments"


async def test_names_are_counted_in_octets_and_need_valid_unicode(mail):
    """RFC 8621 §2: maxSizeMailboxName counts UTF-8 octets; a lone surrogate is not JSON text (I-JSON)."""
    smiley = "\U0001F600"    # four octets
    result = await set_mailboxes(mail, create={"fits": {"name": smiley * 63}, "over": {"name": smiley * 64}})
    assert set(result["created"]) == {"fits"} and set(result["notCreated"]) == {"over"}
    body = (b'{"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [["Mailbox/set",'
            b' {"accountId": "' + mail.account_id.encode() + b'", "create": {"a": {"name": "x\\ud800"}}}, "0"]]}')
    for data in (body, body.replace(b"x\\ud800", b"x\xff")):
        resp = await mail.post("/jmap/api", data=data, headers=mail.headers({"Content-Type": "application/json"}))
        assert resp.status == 400 and (await resp.json())["type"] == "urn:ietf:params:jmap:error:notJSON"


async def test_too_many_objects_in_one_set_is_request_too_large(mail):
    limit = mail.app[RUNTIME].config.limits.max_objects_in_set
    args = {"create": {f"c{n}": {"name": f"N{n}"} for n in range(limit + 1)}}
    assert (await error(mail, "Mailbox/set", args))["type"] == "requestTooLarge"

