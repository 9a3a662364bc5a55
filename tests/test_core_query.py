"""The generic /query (RFC 8620 §5.5) over the test types: filters, sorts, windows and their limits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jmapc
import pytest

from conftest import logged_in
from jmaple.config import Config
from test_core_methods import bob_note, create_notes, state_of  # noqa: F401  (bob_note is a fixture)


# /query (RFC 8620 §5.5)

@pytest.fixture
async def notes(client) -> dict[str, str]:
    """title -> id of six notes."""
    specs = [
        {"title": "apple", "rank": 3, "pinned": True, "tags": {"fruit": True}},
        {"title": "Banana", "rank": 10, "tags": {"fruit": True, "yellow": True}},
        {"title": "éclair", "rank": -2},
        {"title": "Eclair", "rank": 100, "pinned": True},
        {"title": "zebra", "rank": 9, "tags": {"animal": True}},
        {"title": "10 things", "rank": 0},
    ]
    ids = await create_notes(client, *specs)
    return {s["title"]: i for s, i in zip(specs, ids)}


async def query_titles(client, notes: dict[str, str], **args: Any) -> list[str]:
    result = await client.call("Note/query", args)
    by_id = {v: k for k, v in notes.items()}
    return [by_id[i] for i in result["ids"]]


async def test_query_without_arguments_returns_every_id_in_a_stable_order(client, notes):
    """RFC 8620 §5.5: without a sort, the order is server dependent but stable."""
    result = await client.call("Note/query", {})
    assert result == {"accountId": client.account_id, "queryState": await state_of(client),
                      "canCalculateChanges": True, "position": 0, "ids": sorted(notes.values()), "limit": 1000}
    assert (await client.call("Note/query", {}))["ids"] == result["ids"]


async def test_query_filter_conditions_and_operators(client, notes):
    """RFC 8620 §5.5: AND (all), OR (at least one), NOT (none of the conditions match)."""
    sort = [{"property": "title", "collation": "i;octet"}]
    assert await query_titles(client, notes, filter={"pinned": True}, sort=sort) == ["Eclair", "apple"]
    assert await query_titles(client, notes, filter={"hasTag": "fruit", "minRank": 5}, sort=sort) == ["Banana"]
    assert await query_titles(client, notes, sort=sort, filter={"operator": "AND", "conditions": [
        {"hasTag": "fruit"}, {"pinned": True}]}) == ["apple"]
    assert await query_titles(client, notes, sort=sort, filter={"operator": "OR", "conditions": [
        {"hasTag": "animal"}, {"pinned": True}]}) == ["Eclair", "apple", "zebra"]
    assert await query_titles(client, notes, sort=sort, filter={"operator": "NOT", "conditions": [
        {"hasTag": "fruit"}, {"pinned": True}]}) == ["10 things", "zebra", "éclair"]
    assert await query_titles(client, notes, sort=sort, filter={"operator": "NOT", "conditions": [
        {"operator": "OR", "conditions": [{"minRank": 5}, {"title": "e"}]}]}) == ["10 things", "éclair"]
    assert await query_titles(client, notes, sort=sort, filter={"operator": "AND", "conditions": []}) == sorted(
        notes, key=lambda t: t.encode())
    assert await query_titles(client, notes, filter={"operator": "OR", "conditions": []}) == []
    assert await query_titles(client, notes, filter={}) == sorted(notes, key=lambda t: notes[t])


@pytest.mark.parametrize("collation,expected", [
    ("i;unicode-casemap", ["10 things", "apple", "Banana", "Eclair", "éclair", "zebra"]),
    ("i;ascii-casemap", ["10 things", "apple", "Banana", "Eclair", "zebra", "éclair"]),
    ("i;octet", ["10 things", "Banana", "Eclair", "apple", "zebra", "éclair"]),
])
async def test_query_sorts_strings_with_the_requested_collation(client, notes, collation, expected):
    """RFC 8620 §5.5: the collation is one of collationAlgorithms in the core capability."""
    titles = await query_titles(client, notes, sort=[{"property": "title", "collation": collation}])
    assert titles == expected
    titles = await query_titles(client, notes, sort=[{"property": "title", "collation": collation,
                                                      "isAscending": False}])
    assert titles == expected[::-1]


async def test_the_default_collation_is_unicode_aware_and_case_insensitive(client, notes):
    """RFC 8620 §5.5: the default collation MUST be unicode-aware and SHOULD be case insensitive."""
    assert await query_titles(client, notes, sort=[{"property": "title"}]) == [
        "10 things", "apple", "Banana", "Eclair", "éclair", "zebra"]


async def test_query_sorts_with_ascii_numeric(client):
    """RFC 4790 §9.1: i;ascii-numeric compares leading digits as numbers; strings without come last."""
    ids = await create_notes(client, *({"title": t} for t in ["100", "9", "x", "10 b", "010", "20"]))
    notes = dict(zip(["100", "9", "x", "10 b", "010", "20"], ids))
    titles = await query_titles(client, notes, sort=[{"property": "title", "collation": "i;ascii-numeric"},
                                                     {"property": "id", "collation": "i;octet"}])
    tied = sorted([notes["010"], notes["10 b"]])      # equal numbers: the next comparator (id) decides
    by_id = {v: k for k, v in notes.items()}
    assert titles == ["9", by_id[tied[0]], by_id[tied[1]], "20", "100", "x"]


async def test_query_sorts_other_types_naturally_and_by_several_comparators(client, notes):
    """RFC 8620 §5.5: Boolean false before true; numbers ascending; ties go to the next comparator."""
    assert await query_titles(client, notes, sort=[{"property": "rank"}]) == [
        "éclair", "10 things", "apple", "zebra", "Banana", "Eclair"]
    assert await query_titles(client, notes, sort=[{"property": "pinned", "isAscending": False},
                                                   {"property": "rank", "isAscending": False}]) == [
        "Eclair", "apple", "Banana", "zebra", "10 things", "éclair"]
    assert await query_titles(client, notes, sort=[{"property": "pinned", "collation": "i;octet"},
                                                   {"property": "title", "collation": "i;octet"}]) == [
        "10 things", "Banana", "zebra", "éclair", "Eclair", "apple"]


@pytest.mark.parametrize("position,expected", [
    (0, ["éclair", "10 things"]),
    (4, ["Banana", "Eclair"]),
    (5, ["Eclair"]),
    (6, []),
    (60, []),
    (-2, ["Banana", "Eclair"]),
    (-1, ["Eclair"]),
    (-6, ["éclair", "10 things"]),
    (-100, ["éclair", "10 things"]),
])
async def test_query_position_and_limit_window_the_results(client, notes, position, expected):
    """RFC 8620 §5.5: a negative position counts from the end and is clamped to 0."""
    result = await client.call("Note/query", {"sort": [{"property": "rank"}], "position": position, "limit": 2,
                                              "calculateTotal": True})
    by_id = {v: k for k, v in notes.items()}
    assert [by_id[i] for i in result["ids"]] == expected
    assert result["total"] == 6
    assert result["position"] == (position if position >= 0 else max(0, 6 + position))
    assert "limit" not in result


@pytest.mark.parametrize("anchor,offset,expected_position", [
    ("apple", 0, 2), ("apple", -1, 1), ("apple", 2, 4), ("apple", -10, 0), ("Eclair", 3, 8), ("éclair", 0, 0),
])
async def test_query_anchor_and_anchor_offset_choose_the_position(client, notes, anchor, offset,
                                                                  expected_position):
    """RFC 8620 §5.5: the anchor's index plus anchorOffset, clamped to 0; position is ignored."""
    order = ["éclair", "10 things", "apple", "zebra", "Banana", "Eclair"]
    result = await client.call("Note/query", {"sort": [{"property": "rank"}], "anchor": notes[anchor],
                                              "anchorOffset": offset, "position": 3, "limit": 2})
    assert result["position"] == expected_position
    by_id = {v: k for k, v in notes.items()}
    assert [by_id[i] for i in result["ids"]] == order[expected_position:expected_position + 2]


async def test_query_anchor_offset_is_ignored_without_an_anchor(client, notes):
    result = await client.call("Note/query", {"sort": [{"property": "rank"}], "anchorOffset": 3, "position": 1,
                                              "limit": 1})
    assert result["position"] == 1


async def test_query_anchor_not_in_the_results_is_anchor_not_found(client, notes):
    """RFC 8620 §5.5: anchorNotFound."""
    for anchor in ("Nmissing", notes["zebra"]):
        error = await client.error("Note/query", {"accountId": client.account_id, "anchor": anchor,
                                                  "filter": {"pinned": True}})
        assert error["type"] == "anchorNotFound"


async def test_query_without_total_omits_it(client, notes):
    """RFC 8620 §5.5: total MUST be omitted unless calculateTotal is true."""
    assert "total" not in await client.call("Note/query", {})
    assert "total" not in await client.call("Note/query", {"calculateTotal": False})
    assert (await client.call("Note/query", {"calculateTotal": True, "filter": {"pinned": True}}))["total"] == 2


async def test_query_limit_zero_returns_no_ids(client, notes):
    result = await client.call("Note/query", {"limit": 0, "calculateTotal": True})
    assert result["ids"] == [] and result["total"] == 6 and "limit" not in result


async def test_query_negative_limit_is_invalid_arguments(client):
    """RFC 8620 §5.5: "If a negative value is given, the call MUST be rejected with invalidArguments"."""
    error = await client.error("Note/query", {"accountId": client.account_id, "limit": -1})
    assert error["type"] == "invalidArguments"


@pytest.fixture
async def small(aiohttp_client, tmp_path):
    config = Config.for_tests(tmp_path / "small", limits={"max_query_limit": 4})
    return await logged_in(aiohttp_client, config)


async def test_query_limit_is_clamped_to_the_configured_maximum_and_echoed(small):
    """RFC 8620 §5.5: a limit over the server's maximum (or none) is clamped and the new limit returned."""
    ids = await create_notes(small, *({"rank": n} for n in range(6)))
    for args in ({}, {"limit": 5}, {"limit": None}):
        result = await small.call("Note/query", {"sort": [{"property": "rank"}], **args})
        assert result["ids"] == ids[:4]
        assert result["limit"] == 4
    result = await small.call("Note/query", {"sort": [{"property": "rank"}], "limit": 4})
    assert result["ids"] == ids[:4] and "limit" not in result
    result = await small.call("Note/query", {"sort": [{"property": "rank"}], "limit": 3, "position": 4})
    assert result["ids"] == ids[4:] and "limit" not in result


@pytest.mark.parametrize("filter_", [
    {"colour": "red"},
    {"body": "x"},
    {"operator": "XOR", "conditions": []},
    {"operator": "AND", "conditions": [{"title": "x"}, {"nope": 1}]},
], ids=str)
async def test_query_filter_the_type_cannot_process_is_unsupported_filter(client, filter_):
    """RFC 8620 §5.5: unsupportedFilter."""
    error = await client.error("Note/query", {"accountId": client.account_id, "filter": filter_})
    assert error["type"] == "unsupportedFilter"


async def test_query_filters_nested_too_deep_are_unsupported(client):
    tree: Any = {"title": "x"}
    for _ in range(40):
        tree = {"operator": "NOT", "conditions": [tree]}
    error = await client.error("Note/query", {"accountId": client.account_id, "filter": tree})
    assert error["type"] == "unsupportedFilter"


@pytest.mark.parametrize("sort", [
    [{"property": "colour"}],
    [{"property": "body"}],
    [{"property": "title", "collation": "i;klingon"}],
], ids=str)
async def test_query_sort_the_type_cannot_do_is_unsupported_sort(client, sort):
    """RFC 8620 §5.5: unsupportedSort for a property or collation the server does not support."""
    error = await client.error("Note/query", {"accountId": client.account_id, "sort": sort})
    assert error["type"] == "unsupportedSort"


async def test_query_of_a_granted_account(client, bob_note):
    bob_account, note = bob_note
    result = await client.call("Note/query", {"accountId": bob_account})
    assert result["accountId"] == bob_account and result["ids"] == [note]


HOSTILE_FILTERS = [
    {"operator": "OR", "conditions": [{"title": str(n)} for n in range(20_000)]},
    {"operator": "AND", "conditions": [{"operator": "OR", "conditions": [{"title": "x"}] * 200}] * 200},
]


@pytest.mark.parametrize("method,extra", [("Note/query", {}), ("Note/queryChanges", {"sinceQueryState": "0"})])
async def test_query_refuses_hostile_filter_and_sort_sizes_promptly(client, notes, method, extra):
    """RFC 8620 §5.5: a filter or sort the server will not process is unsupportedFilter / unsupportedSort;
    at most 256 operators and conditions, 16 levels and 16 Comparators, checked before any is evaluated."""
    base = {"accountId": client.account_id, **extra}
    started = time.monotonic()
    async with asyncio.timeout(5):
        for tree in HOSTILE_FILTERS:
            error = await client.error(method, {**base, "filter": tree})
            assert error["type"] == "unsupportedFilter" and "256" in error["description"]
        error = await client.error(method, {**base, "sort": [{"property": "title"}] * 20_000})
        assert error["type"] == "unsupportedSort" and "16" in error["description"]
    assert time.monotonic() - started < 2
    assert (await client.error(method, {**base, "sort": [{"property": "rank"}] * 17}))["type"] == "unsupportedSort"
    result = await client.call(method, {**base, "sort": [{"property": "rank"}] * 16, "filter": {
        "operator": "OR", "conditions": [{"title": str(n)} for n in range(255)]}})
    assert "ids" in result or "added" in result


async def test_query_filter_depth_limit_is_sixteen(client):
    tree: Any = {"title": "x"}
    for _ in range(16):
        tree = {"operator": "NOT", "conditions": [tree]}
    assert (await client.call("Note/query", {"filter": tree}))["ids"] == []
    error = await client.error("Note/query", {"accountId": client.account_id,
                                              "filter": {"operator": "NOT", "conditions": [tree]}})
    assert error["type"] == "unsupportedFilter" and "16" in error["description"]


async def test_unknown_comparator_properties_are_ignored_as_jmapc_sends_them(client, notes):
    """RFC 8620 §5.5: a data type may add Comparator properties; jmapc serialises anchorOffset,
    calculateTotal and position into every Comparator. Unknown ones are ignored; known ones still checked."""
    comparator = jmapc.Comparator(property="rank", is_ascending=False).to_dict()
    assert set(comparator) > {"property", "isAscending"}
    expected = (await client.call("Note/query", {"sort": [{"property": "rank", "isAscending": False}]}))["ids"]
    assert (await client.call("Note/query", {"sort": [comparator]}))["ids"] == expected
    result = await client.call("Note/query", {"sort": [{**comparator, "keyword": "x", "x-vendor": [1]}]})
    assert result["ids"] == expected
    for bad in [{**comparator, "isAscending": "no"}, {**comparator, "collation": 1}, {"isAscending": True}]:
        error = await client.error("Note/query", {"accountId": client.account_id, "sort": [bad]})
        assert error["type"] == "invalidArguments", bad
