"""/changes and /queryChanges (RFC 8620 §5.2, §5.6), the change log, and publishing new states (§7.1)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from typing import Any

import pytest

from conftest import add_user, basic, share
from jmaple.app import DATABASE_FILE, make_app
from jmaple.config import Config
from jmaple.keys import CONFIG, RUNTIME
from jmaple.store import changes
from jmaple.store.db import Database
from notes import PLUGIN as NOTES_PLUGIN


async def create_notes(client, *objects: dict[str, Any], account_id: str | None = None) -> list[str]:
    args: dict[str, Any] = {"create": {f"c{n}": o for n, o in enumerate(objects)}}
    if account_id:
        args["accountId"] = account_id
    result = await client.call("Note/set", args)
    assert result["notCreated"] is None, result["notCreated"]
    return [result["created"][f"c{n}"]["id"] for n in range(len(objects))]


async def state_of(client, type_name: str = "Note") -> str:
    return (await client.call(f"{type_name}/get", {"ids": []}))["state"]


async def note_changes(client, since: str, **args: Any) -> dict[str, Any]:
    return await client.call("Note/changes", {"sinceState": since, **args})


async def prune_all_tombstones(client) -> None:
    """Run the tombstone pruning of the daemon as if the horizon had passed for every tombstone."""
    runtime = client.app[RUNTIME]
    async with runtime.db.write() as tx:
        await changes.prune_tombstones(tx, tx.now + 1)


# /changes (RFC 8620 §5.2)

async def test_changes_reports_created_updated_and_destroyed_since_a_state(client):
    [a, b, c] = await create_notes(client, {}, {}, {})
    since = await state_of(client)
    [d] = await create_notes(client, {})
    await client.call("Note/set", {"update": {a: {"title": "x"}}, "destroy": [b]})
    now = await state_of(client)
    assert await note_changes(client, since) == {
        "accountId": client.account_id, "oldState": since, "newState": now, "hasMoreChanges": False,
        "created": [d], "updated": [a], "destroyed": [b],
    }
    assert await note_changes(client, now) == {
        "accountId": client.account_id, "oldState": now, "newState": now, "hasMoreChanges": False,
        "created": [], "updated": [], "destroyed": [],
    }
    assert c not in str(await note_changes(client, since))


async def test_changes_reports_a_created_then_updated_object_only_as_created(client):
    """RFC 8620 §5.2: created and updated since the old state SHOULD be only in created."""
    since = await state_of(client)
    [a] = await create_notes(client, {})
    await client.call("Note/set", {"update": {a: {"title": "1"}}})
    await client.call("Note/set", {"update": {a: {"title": "2"}}})
    result = await note_changes(client, since)
    assert (result["created"], result["updated"], result["destroyed"]) == ([a], [], [])


async def test_changes_omits_an_object_created_then_destroyed(client):
    """RFC 8620 §5.2: created and destroyed since the old state SHOULD be left out entirely."""
    [keep] = await create_notes(client, {})
    since = await state_of(client)
    [gone] = await create_notes(client, {})
    await client.call("Note/set", {"update": {gone: {"title": "x"}}})
    await client.call("Note/set", {"destroy": [gone]})
    result = await note_changes(client, since)
    assert (result["created"], result["updated"], result["destroyed"]) == ([], [], [])
    assert result["newState"] == await state_of(client) != since
    assert keep


async def test_changes_reports_an_updated_then_destroyed_object_only_as_destroyed(client):
    """RFC 8620 §5.2: updated and destroyed SHOULD be only in destroyed."""
    [a] = await create_notes(client, {})
    since = await state_of(client)
    await client.call("Note/set", {"update": {a: {"title": "x"}}})
    await client.call("Note/set", {"destroy": [a]})
    result = await note_changes(client, since)
    assert (result["created"], result["updated"], result["destroyed"]) == ([], [], [a])


async def test_changes_of_one_type_do_not_move_another_types_state(client):
    await create_notes(client, {})
    assert await state_of(client, "Notebook") == "0"
    assert await state_of(client, "NoteSettings") == "0"


@pytest.mark.parametrize("state", ["abc", "", "-1", "01", "1.0", " 1", "²", "١", "9" * 30, "99999999"])
async def test_changes_from_a_state_the_server_never_issued_is_cannot_calculate_changes(client, state):
    """RFC 8620 §5.2: cannotCalculateChanges when the server cannot calculate from the given state."""
    await create_notes(client, {})
    error = await client.error("Note/changes", {"accountId": client.account_id, "sinceState": state})
    assert error["type"] == "cannotCalculateChanges"


async def test_changes_from_a_future_state_is_cannot_calculate_changes(client):
    await create_notes(client, {})
    future = str(int(await state_of(client)) + 1)
    error = await client.error("Note/changes", {"accountId": client.account_id, "sinceState": future})
    assert error["type"] == "cannotCalculateChanges"


async def test_changes_from_before_the_tombstone_horizon_is_cannot_calculate_changes(client):
    """DESIGN: pruned tombstones raise the horizon; older states cannot be brought up to date."""
    [a, b] = await create_notes(client, {}, {})
    before = await state_of(client)
    await client.call("Note/set", {"destroy": [a]})
    after = await state_of(client)
    [c] = await create_notes(client, {})
    await prune_all_tombstones(client)
    for since in ("0", before):
        error = await client.error("Note/changes", {"accountId": client.account_id, "sinceState": since})
        assert error["type"] == "cannotCalculateChanges", since
        error = await client.error("Note/queryChanges", {"accountId": client.account_id, "sinceQueryState": since})
        assert error["type"] == "cannotCalculateChanges", since
    result = await note_changes(client, after)
    assert (result["created"], result["updated"], result["destroyed"]) == ([c], [], [])
    assert b


async def test_pruning_keeps_tombstones_younger_than_the_horizon(client):
    [a] = await create_notes(client, {})
    before = await state_of(client)
    await client.call("Note/set", {"destroy": [a]})
    runtime = client.app[RUNTIME]
    async with runtime.db.write() as tx:
        pruned = await changes.prune_tombstones(tx, tx.now - 30 * 86400)
    assert pruned == 0
    assert (await note_changes(client, before))["destroyed"] == [a]


def apply_page(cache: set[str], page: dict[str, Any]) -> None:
    """What a client does with one /changes response; it never hears of an update to an unknown object."""
    for object_id in page["created"]:
        assert object_id not in cache, "created twice"
        cache.add(object_id)
    for object_id in page["updated"]:
        assert object_id in cache, f"{object_id} updated before it was created"
    for object_id in page["destroyed"]:
        cache.discard(object_id)


async def test_max_changes_pages_end_on_valid_states_and_never_report_created_after_updated(client):
    """RFC 8620 §5.2: each page takes the client to an intermediate state; a record is never returned
    as created after a response that deems it updated."""
    since = await state_of(client)
    [a] = await create_notes(client, {"title": "a"})
    [b] = await create_notes(client, {"title": "b"})
    await client.call("Note/set", {"update": {a: {"title": "a2"}}})
    pages = []
    state = since
    while True:
        page = await note_changes(client, state, maxChanges=1)
        pages.append((page["created"], page["updated"], page["destroyed"], page["hasMoreChanges"]))
        assert page["oldState"] == state
        state = page["newState"]
        if not page["hasMoreChanges"]:
            break
    assert pages == [([a], [], [], True), ([b], [], [], True), ([], [a], [], False)]
    assert state == await state_of(client)


async def test_max_changes_paging_reaches_the_same_cache_as_one_call(client):
    """RFC 8620 §5.2: the number of ids across created, updated and destroyed never exceeds maxChanges."""
    rng = random.Random(8620)
    existing = await create_notes(client, *({"rank": n} for n in range(6)))
    since = await state_of(client)
    cache_before = set(existing)
    live = list(existing)
    for step in range(40):
        action = rng.choice(["create", "update", "destroy"]) if live else "create"
        if action == "create":
            live.extend(await create_notes(client, *({"rank": step} for _ in range(rng.randint(1, 3)))))
        elif action == "update":
            await client.call("Note/set", {"update": {i: {"rank": step} for i in rng.sample(live, min(2, len(live)))}})
        else:
            victim = rng.choice(live)
            live.remove(victim)
            await client.call("Note/set", {"destroy": [victim]})
    final = await state_of(client)
    for max_changes in (1, 2, 3, 7, 1000):
        cache = set(cache_before)
        state, calls = since, 0
        while True:
            page = await note_changes(client, state, maxChanges=max_changes)
            ids = page["created"] + page["updated"] + page["destroyed"]
            assert len(ids) <= max_changes and len(set(ids)) == len(ids)
            apply_page(cache, page)
            # Every page boundary is a state from which the rest can be fetched.
            state = page["newState"]
            calls += 1
            if not page["hasMoreChanges"]:
                break
            assert calls < 200
        assert state == final
        assert cache == set(live), max_changes


@pytest.mark.parametrize("max_changes", [None, 5, 1000])
async def test_changes_returns_at_most_max_objects_in_get_ids_whatever_max_changes_asks(
        aiohttp_client, tmp_path, max_changes):
    """RFC 8620 §5.2 lets the server return fewer changes than maxChanges: one response holds at most
    maxObjectsInGet ids (so they fit one /get), says hasMoreChanges, and the pages add up."""
    config = Config.for_tests(data_dir=tmp_path / "capped", limits={"max_objects_in_get": 3})
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))
    user = await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    client.account_id = user.account_id
    since = await state_of(client)
    created = await create_notes(client, *({"rank": n} for n in range(7)))
    args = {} if max_changes is None else {"maxChanges": max_changes}
    state, pages, seen = since, [], []
    while True:
        page = await note_changes(client, state, **args)
        pages.append((len(page["created"]), len(page["updated"]), len(page["destroyed"]), page["hasMoreChanges"]))
        seen += page["created"]
        state = page["newState"]
        if not page["hasMoreChanges"]:
            break
    assert pages == [(3, 0, 0, True), (3, 0, 0, True), (1, 0, 0, False)]
    assert seen == created
    assert state == await state_of(client)


async def test_changes_reports_updated_properties_when_only_counters_changed(client):
    """RFC 8620 §5.2 via the type: updatedProperties lists the counters when nothing else changed."""
    created = await client.call("Notebook/set", {"create": {"b": {"name": "B"}}})
    book = created["created"]["b"]["id"]
    since = created["newState"]
    await create_notes(client, {"notebookId": book}, {"notebookId": book})
    result = await client.call("Notebook/changes", {"sinceState": since})
    assert result == {"accountId": client.account_id, "oldState": since, "newState": await state_of(client, "Notebook"),
                      "hasMoreChanges": False, "created": [], "updated": [book], "destroyed": [],
                      "updatedProperties": ["noteCount"]}
    counted = result["newState"]
    await client.call("Notebook/set", {"update": {book: {"name": "renamed"}}})
    result = await client.call("Notebook/changes", {"sinceState": since})
    assert result["updated"] == [book] and result["updatedProperties"] is None
    renamed = result["newState"]
    await create_notes(client, {"notebookId": book})
    assert (await client.call("Notebook/changes", {"sinceState": renamed}))["updatedProperties"] == ["noteCount"]
    assert (await client.call("Notebook/changes", {"sinceState": counted}))["updatedProperties"] is None
    result = await client.call("Notebook/changes", {"sinceState": "0"})
    assert result["created"] == [book] and result["updatedProperties"] is None
    assert "updatedProperties" not in await note_changes(client, "0")


async def test_changes_of_a_granted_account(client, bob):
    await share(client, "alice@example.org", bob.account_id, False)
    alice = client.account_id
    client.auth, client.account_id = basic("bob@example.org"), bob.account_id
    [note] = await create_notes(client, {})
    client.auth, client.account_id = basic("alice@example.org"), alice
    result = await client.call("Note/changes", {"accountId": bob.account_id, "sinceState": "0"})
    assert result["accountId"] == bob.account_id and result["created"] == [note]
    assert (await note_changes(client, "0"))["created"] == []


# /queryChanges (RFC 8620 §5.6)

def splice(cached: list[str], result: dict[str, Any], total: int | None = None) -> list[str]:
    """RFC 8620 §5.6: splice out every removed id, then splice in each added item by ascending index."""
    out = [i for i in cached if i not in set(result["removed"])]
    indexes = [item["index"] for item in result["added"]]
    assert indexes == sorted(indexes), "added MUST be sorted by index"
    for item in result["added"]:
        out.insert(item["index"], item["id"])
    return out if total is None else out[:total]


QUERIES = [
    {},
    {"sort": [{"property": "title"}]},
    {"filter": {"minRank": 5}, "sort": [{"property": "rank", "isAscending": False}, {"property": "title"}]},
    {"filter": {"operator": "OR", "conditions": [{"pinned": True}, {"hasTag": "x"}]},
     "sort": [{"property": "pinned"}, {"property": "rank"}]},
    {"filter": {"operator": "NOT", "conditions": [{"title": "a"}]}, "sort": [{"property": "id"}]},
]


async def test_query_changes_lets_the_client_splice_its_results_into_the_new_ones(client):
    """RFC 8620 §5.6: applying removed then added to the old results gives the new results."""
    rng = random.Random(5)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]

    def random_note() -> dict[str, Any]:
        return {"title": rng.choice(words), "rank": rng.randint(0, 10), "pinned": rng.random() < 0.3,
                "tags": {"x": True} if rng.random() < 0.3 else {}}

    live = await create_notes(client, *(random_note() for _ in range(8)))
    for round_ in range(8):
        before = {n: await client.call("Note/query", q) for n, q in enumerate(QUERIES)}
        for _ in range(rng.randint(1, 4)):
            action = rng.choice(["create", "update", "destroy"])
            if action == "create" or len(live) < 3:
                live.extend(await create_notes(client, random_note()))
            elif action == "update":
                await client.call("Note/set", {"update": {rng.choice(live): random_note()}})
            else:
                victim = rng.choice(live)
                live.remove(victim)
                await client.call("Note/set", {"destroy": [victim]})
        for n, query in enumerate(QUERIES):
            after = await client.call("Note/query", query)
            result = await client.call("Note/queryChanges", {**query, "sinceQueryState": before[n]["queryState"],
                                                             "calculateTotal": True})
            assert result["oldQueryState"] == before[n]["queryState"]
            assert result["newQueryState"] == after["queryState"]
            assert result["total"] == len(after["ids"])
            assert splice(before[n]["ids"], result) == after["ids"], (round_, query)


async def test_query_changes_response_lists_removed_and_added(client):
    [a, b, c] = await create_notes(client, {"title": "a"}, {"title": "b"}, {"title": "c"})
    query = {"sort": [{"property": "title"}]}
    before = await client.call("Note/query", query)
    await client.call("Note/set", {"update": {a: {"title": "d"}}, "destroy": [b]})
    result = await client.call("Note/queryChanges", {**query, "sinceQueryState": before["queryState"]})
    assert result == {"accountId": client.account_id, "oldQueryState": before["queryState"],
                      "newQueryState": await state_of(client), "removed": sorted([a, b]),
                      "added": [{"id": a, "index": 1}]}
    assert splice([a, b, c], result) == [c, a]
    result = await client.call("Note/queryChanges", {**query, "sinceQueryState": result["newQueryState"]})
    assert result["removed"] == [] and result["added"] == []


async def test_query_changes_with_up_to_id_omits_additions_after_it_for_an_immutable_query(client):
    """RFC 8620 §5.6: with sort and filter on immutable properties, changes after upToId SHOULD be omitted."""
    ids = await create_notes(client, *({"rank": n} for n in range(10)))
    query = {"sort": [{"property": "id"}]}
    before = await client.call("Note/query", query)
    cached = before["ids"][:4]
    up_to = cached[-1]
    new = await create_notes(client, *({} for _ in range(6)))
    after = await client.call("Note/query", query)
    result = await client.call("Note/queryChanges", {**query, "sinceQueryState": before["queryState"],
                                                     "upToId": up_to})
    last = after["ids"].index(up_to)
    assert all(item["index"] <= last for item in result["added"])
    assert splice(cached, result) == after["ids"][:last + 1]
    full = await client.call("Note/queryChanges", {**query, "sinceQueryState": before["queryState"]})
    assert sorted(item["id"] for item in full["added"]) == sorted(new)
    assert ids


async def test_query_changes_ignores_up_to_id_for_a_query_on_mutable_properties(client):
    """RFC 8620 §5.6: "If they are not immutable, this argument is ignored"."""
    ids = await create_notes(client, *({"rank": n} for n in range(6)))
    query = {"sort": [{"property": "rank"}]}
    before = await client.call("Note/query", query)
    await client.call("Note/set", {"update": {ids[0]: {"rank": 100}}})
    result = await client.call("Note/queryChanges", {**query, "sinceQueryState": before["queryState"],
                                                     "upToId": ids[1]})
    assert result["added"] == [{"id": ids[0], "index": 5}]
    assert splice(before["ids"], result) == ids[1:] + ids[:1]


async def test_query_changes_over_max_changes_is_too_many_changes(client):
    """RFC 8620 §5.6: tooManyChanges when there are more changes than maxChanges (removed + added)."""
    ids = await create_notes(client, {}, {})
    before = await client.call("Note/query", {})
    await client.call("Note/set", {"update": {ids[0]: {"title": "x"}}})      # one removed, one added
    args = {"accountId": client.account_id, "sinceQueryState": before["queryState"]}
    error = await client.error("Note/queryChanges", {**args, "maxChanges": 1})
    assert error["type"] == "tooManyChanges"
    result = await client.call("Note/queryChanges", {**args, "maxChanges": 2})
    assert len(result["removed"]) + len(result["added"]) == 2
    result = await client.call("Note/queryChanges", {**args, "sinceQueryState": result["newQueryState"],
                                                     "maxChanges": 0})
    assert result["removed"] == result["added"] == []


@pytest.mark.parametrize("state", ["abc", "-1", "²", "99999"])
async def test_query_changes_from_an_unknown_state_is_cannot_calculate_changes(client, state):
    error = await client.error("Note/queryChanges", {"accountId": client.account_id, "sinceQueryState": state})
    assert error["type"] == "cannotCalculateChanges"


async def test_query_changes_checks_its_filter_and_sort_like_query(client):
    args = {"accountId": client.account_id, "sinceQueryState": "0"}
    assert (await client.error("Note/queryChanges", {**args, "filter": {"colour": 1}}))["type"] == "unsupportedFilter"
    assert (await client.error("Note/queryChanges", {**args, "sort": [{"property": "body"}]}))["type"] == \
        "unsupportedSort"


# Publishing new states (RFC 8620 §7.1; DESIGN "A request, end to end" steps 4-5)

# Other installed plugins (mail) publish their own types, e.g. when an account is created; these tests
# watch only the test capability's.
NOTE_TYPES = frozenset({"Note", "Notebook", "NoteSettings"})


class Recorder:
    """An on_publish hook that records each StateChange of the test types and checks it was committed."""

    def __init__(self, client):
        self.path = client.app[CONFIG].data_dir / DATABASE_FILE
        self.events: list[tuple[str, dict[str, str]]] = []
        client.app[RUNTIME].broker.add_on_publish(self)

    def __call__(self, account_id: str, type_states: dict[str, str]) -> None:
        type_states = {t: s for t, s in type_states.items() if t in NOTE_TYPES}
        if not type_states:
            return
        with sqlite3.connect(self.path) as db:    # a separate connection sees only committed data
            committed = dict(db.execute("SELECT type, modseq FROM type_states WHERE account_id = ?", (account_id,)))
        for type_name, state in type_states.items():
            assert str(committed.get(type_name)) == state, "published before commit"
        self.events.append((account_id, dict(type_states)))

    def take(self) -> list[tuple[str, dict[str, str]]]:
        events, self.events = self.events, []
        return events


async def test_each_mutating_call_publishes_one_state_change_after_commit(client):
    recorder = Recorder(client)
    runtime = client.app[RUNTIME]
    with runtime.broker.subscribe([client.account_id], NOTE_TYPES) as sub:
        result = await client.call("Note/set", {"create": {"a": {}, "b": {}, "c": {}}})
        assert recorder.take() == [(client.account_id, {"Note": result["newState"]})]
        assert sub.take() == {client.account_id: {"Note": result["newState"]}}
        book = (await client.call("Notebook/set", {"create": {"b": {"name": "B"}}}))["created"]["b"]["id"]
        recorder.take()
        sub.take()
        result = await client.call("Note/set", {"create": {"n": {"notebookId": book}}})
        expected = {"Note": result["newState"], "Notebook": await state_of(client, "Notebook")}
        assert recorder.take() == [(client.account_id, expected)]
        async with asyncio.timeout(5):
            assert await sub.next() == {client.account_id: expected}


async def test_failed_and_read_only_calls_publish_nothing(client):
    [note] = await create_notes(client, {"pinned": True})
    state = await state_of(client)
    recorder = Recorder(client)
    with client.app[RUNTIME].broker.subscribe([client.account_id], NOTE_TYPES) as sub:
        await client.calls(
            ("Note/get", {"accountId": client.account_id}),
            ("Note/query", {"accountId": client.account_id}),
            ("Note/changes", {"accountId": client.account_id, "sinceState": "0"}),
            ("Note/queryChanges", {"accountId": client.account_id, "sinceQueryState": "0"}),
            ("Note/set", {"accountId": client.account_id, "ifInState": "0", "create": {"x": {}}}),
            ("Note/set", {"accountId": client.account_id, "destroy": [note, "Nmissing"],
                          "create": {"bad": {"rank": "x"}}}),
            ("Note/set", {"accountId": client.account_id, "create": {"x": {"title": "crash"}}}),
            ("Note/set", {"accountId": client.account_id}),
            ("Core/echo", {}))
        assert recorder.take() == []
        assert sub.take() == {}
    assert await state_of(client) == state


async def test_a_read_only_grant_writing_publishes_nothing(client, bob):
    await share(client, "bob@example.org", client.account_id, False)
    recorder = Recorder(client)
    client.auth = basic("bob@example.org")
    error = await client.error("Note/set", {"accountId": client.account_id, "create": {"x": {}}})
    assert error["type"] == "accountReadOnly"
    assert recorder.take() == []


async def test_subscribers_of_other_accounts_hear_nothing(client, bob):
    with client.app[RUNTIME].broker.subscribe([bob.account_id], NOTE_TYPES) as sub:
        await create_notes(client, {})
        assert sub.take() == {}


async def test_a_copy_that_destroys_the_originals_publishes_each_account_once(client, bob):
    await share(client, "alice@example.org", bob.account_id, True)
    [note] = await create_notes(client, {}, account_id=bob.account_id)
    recorder = Recorder(client)
    responses = await client.calls(("Note/copy", {"accountId": client.account_id, "fromAccountId": bob.account_id,
                                                  "onSuccessDestroyOriginal": True, "create": {"c": {"id": note}}}))
    copied, destroyed = responses[0][1], responses[1][1]
    assert sorted(recorder.take()) == sorted([(client.account_id, {"Note": copied["newState"]}),
                                              (bob.account_id, {"Note": destroyed["newState"]})])


async def test_commits_by_another_process_are_published_within_a_second(client):
    """DESIGN: the daemon notices commits made by other processes and publishes them like its own."""
    runtime = client.app[RUNTIME]
    config = client.app[CONFIG]
    loop = asyncio.get_running_loop()
    with runtime.broker.subscribe([client.account_id], NOTE_TYPES) as sub:
        async with Database.open(config.data_dir / DATABASE_FILE, config.storage) as other:
            started = loop.time()
            async with other.write() as tx:
                await changes.record(tx, client.account_id, "Note", created=["Nelsewhere"])
            async with asyncio.timeout(5):
                changed = await sub.next()
            elapsed = loop.time() - started
    assert changed == {client.account_id: {"Note": await state_of(client)}}
    assert elapsed < 1.0
    result = await note_changes(client, "0")
    assert result["created"] == ["Nelsewhere"]


async def test_a_commit_is_published_once_even_when_the_poll_loop_sees_it_too(client):
    """The Dispatcher publishes its own commit; the poll loop, seeing it later, does not publish it again."""
    recorder = Recorder(client)
    result = await client.call("Note/set", {"create": {"a": {}}})
    # Let the poll loop run over the same commit: it must not publish it again.
    with client.app[RUNTIME].broker.subscribe([client.account_id], NOTE_TYPES) as sub:
        async with Database.open(client.app[CONFIG].data_dir / DATABASE_FILE,
                                 client.app[CONFIG].storage) as other:
            async with other.write() as tx:
                await changes.record(tx, client.account_id, "Notebook", created=["Bmarker"])
        async with asyncio.timeout(5):
            changed = await sub.next()
    assert changed == {client.account_id: {"Notebook": await state_of(client, "Notebook")}}
    assert [states for _, states in recorder.take()] == [{"Note": result["newState"]},
                                                         {"Notebook": await state_of(client, "Notebook")}]
