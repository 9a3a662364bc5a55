"""The generic standard methods /get, /set and /copy (RFC 8620 §5.1, §5.3, §5.4) over the test types
(/query is in test_core_query.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from conftest import basic, share
from notes import MAX_NOTE_SIZE, NOTE

UTC_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DEFAULTS = {"title": "", "body": "", "pinned": False, "rank": 0, "parentId": None, "notebookId": None,
            "tags": {}, "linkedIds": {}}


async def create_notes(client, *objects: dict[str, Any], account_id: str | None = None) -> list[str]:
    args: dict[str, Any] = {"create": {f"c{n}": o for n, o in enumerate(objects)}}
    if account_id:
        args["accountId"] = account_id
    result = await client.call("Note/set", args)
    assert result["notCreated"] is None, result["notCreated"]
    return [result["created"][f"c{n}"]["id"] for n in range(len(objects))]


async def get_one(client, object_id: str, type_name: str = "Note") -> dict[str, Any]:
    result = await client.call(f"{type_name}/get", {"ids": [object_id]})
    [obj] = result["list"]
    return obj


async def state_of(client, type_name: str = "Note") -> str:
    return (await client.call(f"{type_name}/get", {"ids": []}))["state"]


# /get (RFC 8620 §5.1)

async def test_get_with_ids_null_returns_every_object_with_every_property(client):
    """RFC 8620 §5.1: ids null returns all records; properties null returns all properties."""
    created = await client.call("Note/set", {"create": {"a": {"title": "A", "body": "hello"}, "b": {"rank": 7}}})
    a, b = created["created"]["a"], created["created"]["b"]
    result = await client.call("Note/get", {"ids": None})
    assert result == {
        "accountId": client.account_id,
        "state": created["newState"],
        "list": sorted([{**DEFAULTS, "title": "A", "body": "hello", **a},
                        {**DEFAULTS, "rank": 7, **b}], key=lambda o: o["id"]),
        "notFound": [],
    }
    assert UTC_DATE.match(a["createdAt"])


async def test_a_get_of_every_property_answers_what_naming_every_property_answers(client):
    """Without `properties` the stored JSON is sent as it is: it must be what the objects give, property by
    property, whatever the ids (repeated, missing, creation ids, none), before and after updates."""
    every = [p.name for p in NOTE.properties]
    notes = await create_notes(client, {"title": "Ünï \u2028 \"q\" </script>", "tags": {"a": True, "ß": True}},
                               {"rank": -5, "body": "x" * 5000}, {})
    await client.call("Note/set", {"update": {notes[0]: {"tags/a": None, "parentId": notes[1]},
                                              notes[1]: {"title": None}}})
    for ids in (None, notes, [notes[2], "Nmissing", notes[0], notes[2]], [], ["Nmissing"], ["#nope", notes[1]]):
        fast = await client.call("Note/get", {"ids": ids})
        named = await client.call("Note/get", {"ids": ids, "properties": every})
        assert fast == named
        assert all(set(o) == set(every) for o in fast["list"])


async def test_get_of_an_empty_account_returns_an_empty_list_and_state(client):
    assert await client.call("Note/get", {}) == {"accountId": client.account_id, "state": "0", "list": [],
                                                 "notFound": []}
    assert await client.call("Note/get", {"ids": []}) == {"accountId": client.account_id, "state": "0",
                                                          "list": [], "notFound": []}


async def test_get_properties_limits_what_is_returned_and_always_includes_the_id(client):
    """RFC 8620 §5.1: only the listed properties are returned; id is always returned."""
    [note] = await create_notes(client, {"title": "T", "rank": 3})
    result = await client.call("Note/get", {"ids": [note], "properties": ["rank", "title", "rank"]})
    assert result["list"] == [{"id": note, "rank": 3, "title": "T"}]
    result = await client.call("Note/get", {"ids": [note], "properties": []})
    assert result["list"] == [{"id": note}]
    result = await client.call("Note/get", {"ids": [note], "properties": ["id"]})
    assert result["list"] == [{"id": note}]


async def test_get_of_an_unknown_property_is_invalid_arguments(client):
    """RFC 8620 §5.1: "If an invalid property is requested, the call MUST be rejected with invalidArguments"."""
    error = await client.error("Note/get", {"accountId": client.account_id, "properties": ["title", "colour"]})
    assert error == {"type": "invalidArguments", "description": "unknown property 'colour'"}


async def test_get_reports_unknown_ids_in_not_found(client):
    [note] = await create_notes(client, {"title": "x"})
    result = await client.call("Note/get", {"ids": ["Nmissing", note, "Nother"], "properties": ["title"]})
    assert result["list"] == [{"id": note, "title": "x"}]
    assert result["notFound"] == ["Nmissing", "Nother"]


async def test_an_id_asked_twice_comes_back_once(client):
    """RFC 8620 §5.1: an identical id included more than once is in list or notFound only once."""
    [note] = await create_notes(client, {})
    result = await client.call("Note/get", {"ids": [note, "Nmissing", note, "Nmissing"], "properties": []})
    assert result["list"] == [{"id": note}]
    assert result["notFound"] == ["Nmissing"]


@pytest.mark.parametrize("ids", [
    ["Nabc\n"], ["N1", "N2,N3"], ["N1", ""], ["x" * 256], ["N1", 5], ["N1", None], [["N1"]], ["#"], ["##c"],
    ["N 1"], ["Né"], "N1", {"N1": True},
])
async def test_get_with_ids_that_are_not_ids_is_invalid_arguments(client, ids):
    """RFC 8620 §1.2: an Id is 1-255 characters of A-Za-z0-9, "-" and "_" (a "#" may prefix a creation id)."""
    error = await client.error("Note/get", {"accountId": client.account_id, "ids": ids})
    assert error == {"type": "invalidArguments", "description": "ids must be a list of Ids"}


async def test_get_of_many_ids_with_and_without_creation_references(client):
    notes = await create_notes(client, *({"rank": n} for n in range(20)))
    result = await client.call("Note/get", {"ids": [*reversed(notes), "Nmissing"], "properties": ["rank"]})
    assert result["list"] == [{"id": i, "rank": n} for n, i in reversed(list(enumerate(notes)))]
    assert result["notFound"] == ["Nmissing"]
    (_, created, _), (_, got, _) = await client.calls(
        ("Note/set", {"accountId": client.account_id, "create": {"k": {"title": "new"}}}),
        ("Note/get", {"accountId": client.account_id, "ids": [notes[0], "#k", "#unknown"], "properties": ["title"]}))
    assert got["list"] == [{"id": notes[0], "title": ""}, {"id": created["created"]["k"]["id"], "title": "new"}]
    assert got["notFound"] == ["#unknown"]


async def test_get_does_not_see_objects_of_another_account(client, bob):
    """An id from another account is not found in this one."""
    alice = client.account_id
    client.auth, client.account_id = basic("bob@example.org"), bob.account_id
    [bobs] = await create_notes(client, {"title": "bob's"})
    client.auth, client.account_id = basic("alice@example.org"), alice
    result = await client.call("Note/get", {"ids": [bobs]})
    assert result["list"] == [] and result["notFound"] == [bobs]
    result = await client.call("Note/set", {"update": {bobs: {"title": "mine"}}, "destroy": [bobs]})
    assert result["notUpdated"] == {bobs: {"type": "notFound"}}
    assert result["notDestroyed"] == {bobs: {"type": "notFound"}}


async def test_the_state_changes_with_the_data_and_only_then(client):
    """RFC 8620 §5.1: the state MUST change when the data changes, and SHOULD stay the same otherwise."""
    first = await state_of(client)
    assert await state_of(client) == first
    [note] = await create_notes(client, {})
    second = await state_of(client)
    assert second != first
    await client.call("Note/set", {"update": {note: {"title": "t"}}})
    third = await state_of(client)
    assert third not in (first, second)
    await client.call("Note/set", {"destroy": ["Nmissing"]})
    assert await state_of(client) == third


# /set (RFC 8620 §5.3)

async def test_set_create_returns_server_set_and_defaulted_properties(client):
    """RFC 8620 §5.3: created holds every property not sent by the client: server-set and defaulted ones."""
    result = await client.call("Note/set", {"create": {"n": {"title": "Groceries", "body": "eggs", "rank": 2}}})
    created = result["created"]["n"]
    assert created == {"id": created["id"], "pinned": False, "parentId": None, "notebookId": None, "tags": {},
                       "linkedIds": {}, "createdAt": created["createdAt"], "size": 4}
    assert created["id"].startswith("N") and UTC_DATE.match(created["createdAt"])
    assert result == {
        "accountId": client.account_id, "oldState": "0", "newState": result["newState"],
        "created": {"n": created}, "updated": None, "destroyed": None,
        "notCreated": None, "notUpdated": None, "notDestroyed": None,
    }
    assert result["newState"] != "0"


async def test_set_if_in_state_that_does_not_match_is_state_mismatch(client):
    """RFC 8620 §5.3: ifInState that does not match the current state aborts with stateMismatch."""
    [note] = await create_notes(client, {})
    state = await state_of(client)
    error = await client.error("Note/set", {"accountId": client.account_id, "ifInState": "0",
                                            "create": {"x": {}}, "destroy": [note]})
    assert error["type"] == "stateMismatch"
    assert await state_of(client) == state
    result = await client.call("Note/set", {"ifInState": state, "destroy": [note]})
    assert result["oldState"] == state and result["destroyed"] == [note]


@pytest.mark.parametrize("given,bad", [
    ({"id": "Nmine"}, ["id"]),
    ({"size": 4}, ["size"]),
    ({"createdAt": "2020-01-01T00:00:00Z", "title": "x"}, ["createdAt"]),
    ({"colour": "red"}, ["colour"]),
    ({"title": 5}, ["title"]),
    ({"title": None}, ["title"]),
    ({"title": "x" * 201}, ["title"]),
    ({"pinned": "yes"}, ["pinned"]),
    ({"rank": 1.5}, ["rank"]),
    ({"rank": 2**53}, ["rank"]),
    ({"rank": "1"}, ["rank"]),
    ({"parentId": "not an id"}, ["parentId"]),
    ({"parentId": 5}, ["parentId"]),
    ({"tags": ["a"]}, ["tags"]),
    ({"tags": {"a": False}}, ["tags"]),
    ({"linkedIds": {"not an id": True}}, ["linkedIds"]),
    ({"title": 5, "rank": "x", "pinned": None}, ["title", "pinned", "rank"]),
    ({"parentId": "Nmissing"}, ["parentId"]),
])
async def test_set_create_with_invalid_properties_names_them(client, given, bad):
    """RFC 8620 §5.3: invalidProperties SHOULD list all the invalid properties."""
    result = await client.call("Note/set", {"create": {"x": given}})
    assert result["created"] is None
    error = result["notCreated"]["x"]
    assert error["type"] == "invalidProperties"
    assert error["properties"] == bad


async def test_set_create_of_something_not_an_object_or_with_a_bad_creation_id_fails_alone(client):
    result = await client.call("Note/set", {"create": {"a": "note", "b": [], "not valid": {}, "ok": {}}})
    assert sorted(result["notCreated"]) == ["a", "b", "not valid"]
    assert {e["type"] for e in result["notCreated"].values()} == {"invalidProperties"}
    assert list(result["created"]) == ["ok"]


async def test_set_create_without_a_required_property_is_invalid_properties(client):
    result = await client.call("Notebook/set", {"create": {"b": {"labels": ["x"]}}})
    assert result["notCreated"] == {"b": {"type": "invalidProperties", "description": "missing properties: name",
                                          "properties": ["name"]}}


async def test_set_update_applies_a_patch_object_with_json_pointer_paths(client):
    """RFC 8620 §5.3: PatchObject keys are JSON pointers with an implicit leading "/"."""
    [note] = await create_notes(client, {"title": "T", "tags": {"a": True, "b/c": True, "~d": True}})
    result = await client.call("Note/set", {"update": {note: {
        "tags/e": True, "tags/b~1c": None, "tags/~0d": None, "rank": 5, "tags/missing": None}}})
    assert result["updated"] == {note: None}
    got = await get_one(client, note)
    assert got["tags"] == {"a": True, "e": True}
    assert got["rank"] == 5 and got["title"] == "T"


async def test_set_update_with_null_resets_a_property_to_its_default(client):
    """RFC 8620 §5.3: null sets the default value if there is one."""
    [parent] = await create_notes(client, {})
    [note] = await create_notes(client, {"title": "T", "rank": 3, "parentId": parent, "tags": {"x": True}})
    await client.call("Note/set", {"update": {note: {"title": None, "rank": None, "parentId": None, "tags": None}}})
    got = await get_one(client, note)
    assert {k: got[k] for k in ("title", "rank", "parentId", "tags")} == {"title": "", "rank": 0, "parentId": None,
                                                                          "tags": {}}


async def test_set_update_reports_what_the_server_changed_beyond_the_patch(client):
    """RFC 8620 §5.3: updated[id] holds properties changed in a way not requested, else null."""
    [note] = await create_notes(client, {"body": "abc"})
    result = await client.call("Note/set", {"update": {note: {"body": "abcdef"}}})
    assert result["updated"] == {note: {"size": 6}}
    result = await client.call("Note/set", {"update": {note: {"title": "no size change"}}})
    assert result["updated"] == {note: None}


async def test_set_update_may_send_the_whole_object_back_with_server_set_values_unchanged(client):
    """RFC 8620 §5.3: server-set properties MAY be in the patch if identical to the current value."""
    [note] = await create_notes(client, {"title": "T"})
    whole = await get_one(client, note)
    result = await client.call("Note/set", {"update": {note: {**whole, "title": "changed"}}})
    assert result["updated"] == {note: None}
    assert (await get_one(client, note))["title"] == "changed"


@pytest.mark.parametrize("patch,bad", [
    ({"id": "Nother"}, ["id"]),
    ({"size": 99}, ["size"]),
    ({"createdAt": "2000-01-01T00:00:00Z"}, ["createdAt"]),
    ({"colour": "red"}, ["colour"]),
    ({"rank": "high"}, ["rank"]),
    ({"tags/x": False}, ["tags"]),
    ({"title": "x" * 201, "pinned": 1}, ["title", "pinned"]),
    ({"parentId": "Nmissing"}, ["parentId"]),
])
async def test_set_update_with_invalid_properties_names_them(client, patch, bad):
    [note] = await create_notes(client, {"title": "T"})
    before = await get_one(client, note)
    result = await client.call("Note/set", {"update": {note: patch}})
    assert result["updated"] is None
    assert result["notUpdated"][note]["type"] == "invalidProperties"
    assert result["notUpdated"][note]["properties"] == bad
    assert await get_one(client, note) == before


@pytest.mark.parametrize("patch", [
    {"tags": {}, "tags/a": True},          # one pointer is a prefix of another
    {"tags/a": True, "tags": None},
    {"title/x": "y"},                       # descends into a string
    {"tags/a/b": True},                     # a part before the last does not exist
    {"tags/~2": True},                      # a bad escape
    {"/title": "x"},                        # keys have an implicit leading "/"
], ids=str)
async def test_set_update_with_an_invalid_patch_is_invalid_patch(client, patch):
    """RFC 8620 §5.3: a patch breaking the pointer rules MUST be rejected with invalidPatch."""
    [note] = await create_notes(client, {"title": "T", "tags": {"a": True}})
    result = await client.call("Note/set", {"update": {note: patch}})
    assert result["notUpdated"][note]["type"] == "invalidPatch"


async def test_set_update_may_not_point_inside_an_array(client):
    """RFC 8620 §5.3: "The pointer MUST NOT reference inside an array"."""
    result = await client.call("Notebook/set", {"create": {"b": {"name": "B", "labels": ["x", "y"]}}})
    book = result["created"]["b"]["id"]
    result = await client.call("Notebook/set", {"update": {book: {"labels/0": "z"}}})
    assert result["notUpdated"][book]["type"] == "invalidPatch"
    result = await client.call("Notebook/set", {"update": {book: {"labels": ["z"]}}})
    assert result["updated"] == {book: None}
    assert (await get_one(client, book, "Notebook"))["labels"] == ["z"]


async def test_set_update_with_a_patch_that_is_not_an_object_is_invalid_patch(client):
    [note] = await create_notes(client, {})
    result = await client.call("Note/set", {"update": {note: ["title", "x"]}})
    assert result["notUpdated"][note]["type"] == "invalidPatch"


async def test_set_update_and_destroy_of_unknown_ids_are_not_found(client):
    """RFC 8620 §5.3: an id that cannot be found is notFound for update and destroy."""
    result = await client.call("Note/set", {"update": {"Nmissing": {"title": "x"}, "#nope": {}},
                                            "destroy": ["Nmissing", "#nope"]})
    assert result["notUpdated"] == {"Nmissing": {"type": "notFound"}, "#nope": {"type": "notFound"}}
    assert result["notDestroyed"] == {"Nmissing": {"type": "notFound"}, "#nope": {"type": "notFound"}}
    assert result["oldState"] == result["newState"]


async def test_set_update_of_an_object_destroyed_in_the_same_call_is_will_destroy(client):
    """RFC 8620 §5.3: the server MAY skip such an update with willDestroy."""
    [note] = await create_notes(client, {})
    result = await client.call("Note/set", {"update": {note: {"title": "x"}}, "destroy": [note]})
    assert result["notUpdated"] == {note: {"type": "willDestroy"}}
    assert result["destroyed"] == [note]


async def test_set_destroy_removes_the_object(client):
    [a, b] = await create_notes(client, {}, {})
    result = await client.call("Note/set", {"destroy": [a, a]})
    assert result["destroyed"] == [a]
    got = await client.call("Note/get", {"ids": [a, b], "properties": []})
    assert got["list"] == [{"id": b}] and got["notFound"] == [a]


async def test_set_errors_a_type_raises_are_returned_per_object(client):
    """RFC 8620 §5.3: forbidden for create, update and destroy; a type's own SetError type."""
    [pinned, plain] = await create_notes(client, {"pinned": True}, {"title": "ok"})
    result = await client.call("Note/set", {"create": {"f": {"title": "forbidden"}},
                                            "update": {plain: {"title": "forbidden"}}, "destroy": [pinned]})
    assert result["notCreated"] == {"f": {"type": "forbidden", "description": "that title is not allowed"}}
    assert result["notUpdated"] == {plain: {"type": "forbidden", "description": "that title is not allowed"}}
    assert result["notDestroyed"] == {pinned: {"type": "forbidden", "description": "unpin the note first"}}
    assert result["oldState"] == result["newState"]


async def test_set_create_beyond_the_types_limit_is_over_quota(client):
    """RFC 8620 §5.3: overQuota when a create would exceed a limit on the number of objects."""
    result = await client.call("Notebook/set", {"create": {f"b{n}": {"name": f"B{n}"} for n in range(7)}})
    assert len(result["created"]) == 5
    assert result["notCreated"] == {
        "b5": {"type": "overQuota", "description": "at most 5 of these per account"},
        "b6": {"type": "overQuota", "description": "at most 5 of these per account"},
    }


async def test_set_of_an_object_over_the_types_size_limit_is_too_large(client):
    """RFC 8620 §5.3: tooLarge when the create or update exceeds the maximum size of one object."""
    result = await client.call("Note/set", {"create": {"big": {"body": "x" * MAX_NOTE_SIZE}, "ok": {"body": "x"}}})
    assert result["notCreated"]["big"]["type"] == "tooLarge"
    assert result["notCreated"]["big"]["maxSize"] == MAX_NOTE_SIZE
    note = result["created"]["ok"]["id"]
    result = await client.call("Note/set", {"update": {note: {"body": "x" * MAX_NOTE_SIZE}}})
    assert result["notUpdated"][note]["type"] == "tooLarge"
    assert (await get_one(client, note))["body"] == "x"


async def test_a_singleton_cannot_be_created_or_destroyed_but_can_be_read_and_updated(client):
    """RFC 8620 §5.3: singleton for create and destroy of a singleton type."""
    got = await client.call("NoteSettings/get", {"ids": None})
    assert got["list"] == [{"id": "singleton", "defaultSort": "title", "showPinnedFirst": True}]
    result = await client.call("NoteSettings/set", {"create": {"s": {}}, "destroy": ["singleton"],
                                                    "update": {"singleton": {"defaultSort": "rank"}}})
    assert result["notCreated"]["s"]["type"] == "singleton"
    assert result["notDestroyed"]["singleton"]["type"] == "singleton"
    assert result["updated"] == {"singleton": None}
    got = await client.call("NoteSettings/get", {"ids": ["singleton", "other"]})
    assert got["list"] == [{"id": "singleton", "defaultSort": "rank", "showPinnedFirst": True}]
    assert got["notFound"] == ["other"]
    changes = await client.call("NoteSettings/changes", {"sinceState": "0"})
    assert changes["updated"] == ["singleton"] and changes["created"] == []


async def test_a_type_refuses_a_destroy_with_its_own_set_error(client):
    book = (await client.call("Notebook/set", {"create": {"b": {"name": "B"}}}))["created"]["b"]["id"]
    await create_notes(client, {"notebookId": book})
    result = await client.call("Notebook/set", {"destroy": [book]})
    assert result["notDestroyed"] == {book: {"type": "notebookHasNotes", "description": "1 notes are still in it"}}


async def test_set_with_nothing_to_do_keeps_the_state(client):
    await create_notes(client, {})
    state = await state_of(client)
    result = await client.call("Note/set", {"create": None, "update": None, "destroy": None})
    assert result == {"accountId": client.account_id, "oldState": state, "newState": state, "created": None,
                      "updated": None, "destroyed": None, "notCreated": None, "notUpdated": None,
                      "notDestroyed": None}


async def test_set_commits_the_objects_that_succeed_and_reports_the_others(client):
    """RFC 8620 §5.3: each create, update and destroy is its own atomic unit."""
    [a, b] = await create_notes(client, {"title": "a"}, {"title": "b"})
    result = await client.call("Note/set", {
        "create": {"good": {"title": "new"}, "bad": {"rank": "x"}},
        "update": {a: {"title": "a2"}, b: {"rank": "x"}},
        "destroy": [b, "Nmissing"]})
    assert list(result["created"]) == ["good"] and list(result["notCreated"]) == ["bad"]
    assert result["updated"] == {a: None} and list(result["notUpdated"]) == [b]
    assert result["destroyed"] == [b] and list(result["notDestroyed"]) == ["Nmissing"]
    got = await client.call("Note/get", {"ids": None, "properties": ["title"]})
    assert sorted(n["title"] for n in got["list"]) == ["a2", "new"]


async def test_a_counter_moves_when_objects_of_another_type_change(client):
    books = (await client.call("Notebook/set", {"create": {"x": {"name": "X"}, "y": {"name": "Y"}}}))["created"]
    x, y = books["x"]["id"], books["y"]["id"]
    assert books["x"]["noteCount"] == 0
    [n1, n2] = await create_notes(client, {"notebookId": x}, {"notebookId": x})
    await client.call("Note/set", {"update": {n2: {"notebookId": y}}, "destroy": [n1]})
    got = await client.call("Notebook/get", {"ids": [x, y], "properties": ["noteCount"]})
    assert got["list"] == [{"id": x, "noteCount": 0}, {"id": y, "noteCount": 1}]
    result = await client.call("Note/set", {"create": {"n": {"notebookId": "Bmissing"}}})
    assert result["notCreated"]["n"]["properties"] == ["notebookId"]


# /copy (RFC 8620 §5.4)

@pytest.fixture
async def bob_note(client, bob) -> tuple[str, str]:
    """(bob's account id, a note in it titled "bob's"); alice may read and write bob's account."""
    await share(client, "alice@example.org", bob.account_id, True)
    [note] = await create_notes(client, {"title": "bob's", "body": "text", "tags": {"t": True}},
                                account_id=bob.account_id)
    return bob.account_id, note


async def test_copy_creates_the_object_in_the_target_account(client, bob_note):
    """RFC 8620 §5.4: created holds the server-set properties of each copy, whose id is new."""
    bob_account, note = bob_note
    result = await client.call("Note/copy", {"fromAccountId": bob_account,
                                             "create": {"c": {"id": note, "rank": 9}}})
    copy = result["created"]["c"]
    assert result == {"fromAccountId": bob_account, "accountId": client.account_id, "oldState": "0",
                      "newState": result["newState"], "created": {"c": copy}, "notCreated": None}
    assert set(copy) == {"id", "createdAt", "size"} and copy["id"] != note and copy["size"] == 4
    got = await get_one(client, copy["id"])
    assert {k: got[k] for k in ("title", "body", "tags", "rank")} == {"title": "bob's", "body": "text",
                                                                      "tags": {"t": True}, "rank": 9}
    original = await client.call("Note/get", {"accountId": bob_account, "ids": [note], "properties": []})
    assert original["list"] == [{"id": note}]


async def test_copy_within_one_account_is_invalid_arguments(client):
    """RFC 8620 §5.4: fromAccountId MUST differ from accountId."""
    [note] = await create_notes(client, {})
    error = await client.error("Note/copy", {"accountId": client.account_id, "fromAccountId": client.account_id,
                                             "create": {"c": {"id": note}}})
    assert error["type"] == "invalidArguments"


async def test_copy_from_an_unknown_or_foreign_account_is_from_account_not_found(client, bob):
    """RFC 8620 §5.4: fromAccountNotFound."""
    for source in ("Anope", bob.account_id):
        error = await client.error("Note/copy", {"accountId": client.account_id, "fromAccountId": source,
                                                 "create": {"c": {"id": "N1"}}})
        assert error == {"type": "fromAccountNotFound"}


async def test_copy_of_a_missing_original_is_not_found_in_not_created(client, bob_note):
    bob_account, note = bob_note
    result = await client.call("Note/copy", {"fromAccountId": bob_account, "create": {
        "gone": {"id": "Nmissing"}, "noid": {"title": "x"}, "bad": {"id": note, "rank": "x"}}})
    assert result["created"] is None
    assert result["notCreated"]["gone"]["type"] == "notFound"
    assert result["notCreated"]["noid"]["type"] == "invalidProperties"
    assert result["notCreated"]["bad"] == {"type": "invalidProperties", "description": "invalid properties: rank",
                                           "properties": ["rank"]}


async def test_copy_with_states_that_do_not_match_is_state_mismatch(client, bob_note):
    bob_account, note = bob_note
    for states in ({"ifInState": "99"}, {"ifFromInState": "0"}):
        error = await client.error("Note/copy", {"accountId": client.account_id, "fromAccountId": bob_account,
                                                 "create": {"c": {"id": note}}, **states})
        assert error["type"] == "stateMismatch"
    assert (await client.call("Note/get", {}))["list"] == []


async def test_copy_on_success_destroy_original_adds_an_implicit_set_with_the_same_call_id(client, bob_note):
    """RFC 8620 §5.4: after the /copy response, a Foo/set destroys the originals copied successfully."""
    bob_account, note = bob_note
    from_state = await state_of_account(client, bob_account)
    responses = await client.calls(
        ("Note/copy", {"accountId": client.account_id, "fromAccountId": bob_account, "onSuccessDestroyOriginal": True,
                       "destroyFromIfInState": from_state,
                       "create": {"c": {"id": note}, "x": {"id": "Nmissing"}}}, "move"),
        ("Note/get", {"accountId": client.account_id, "ids": ["#c"], "properties": ["title"]}, "get"))
    [copy_response, set_response, get_response] = responses
    assert copy_response[0] == "Note/copy" and copy_response[2] == "move"
    new = copy_response[1]["created"]["c"]["id"]
    assert set_response == ["Note/set", {
        "accountId": bob_account, "oldState": from_state, "newState": set_response[1]["newState"],
        "created": None, "updated": None, "destroyed": [note],
        "notCreated": None, "notUpdated": None, "notDestroyed": None}, "move"]
    assert get_response[1]["list"] == [{"id": new, "title": "bob's"}]
    assert (await client.call("Note/get", {"accountId": bob_account}))["list"] == []


async def state_of_account(client, account_id: str) -> str:
    return (await client.call("Note/get", {"accountId": account_id, "ids": []}))["state"]


async def test_the_implicit_destroy_reports_its_own_errors_and_keeps_the_copy(client, bob_note):
    bob_account, note = bob_note
    responses = await client.calls(
        ("Note/copy", {"accountId": client.account_id, "fromAccountId": bob_account, "onSuccessDestroyOriginal": True,
                       "destroyFromIfInState": "0", "create": {"c": {"id": note}}}, "move"))
    assert responses[0][0] == "Note/copy" and responses[0][1]["created"]
    assert responses[1][0] == "error" and responses[1][1]["type"] == "stateMismatch" and responses[1][2] == "move"
    assert len((await client.call("Note/get", {"accountId": bob_account}))["list"]) == 1
    assert len((await client.call("Note/get", {}))["list"]) == 1


async def test_copy_from_a_read_only_account_cannot_destroy_the_original(client, bob):
    await share(client, "alice@example.org", bob.account_id, False)
    client.auth, client.account_id, alice = basic("bob@example.org"), bob.account_id, client.account_id
    [note] = await create_notes(client, {"title": "bob's"})
    client.auth, client.account_id = basic("alice@example.org"), alice
    responses = await client.calls(
        ("Note/copy", {"accountId": alice, "fromAccountId": bob.account_id, "onSuccessDestroyOriginal": True,
                       "create": {"c": {"id": note}}}, "move"))
    assert responses[0][0] == "Note/copy" and responses[0][1]["created"]
    assert responses[1] == ["error", {"type": "accountReadOnly"}, "move"]


async def test_copy_into_a_read_only_account_is_account_read_only(client, bob):
    """RFC 8620 §3.6.2: writing into a read-only grant is accountReadOnly."""
    await share(client, "bob@example.org", client.account_id, False)
    client.auth, client.account_id, alice = basic("bob@example.org"), bob.account_id, client.account_id
    [note] = await create_notes(client, {"title": "bob's"})
    error = await client.error("Note/copy", {"accountId": alice, "fromAccountId": bob.account_id,
                                             "create": {"c": {"id": note}}})
    assert error["type"] == "accountReadOnly"
