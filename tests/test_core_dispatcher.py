"""The API request (RFC 8620 §3): request-level and method-level errors, result references, createdIds."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from conftest import CORE, USING, add_user, basic, logged_in, share
from jmaple.app import DATABASE_FILE, make_app
from jmaple.config import Config
from jmaple.core.capability import Capability, Method, Plugin
from jmaple.keys import RUNTIME
from jmaple.store import changes
from jmaple.store.db import Database
from notes import NOTE, NOTES, PLUGIN as NOTES_PLUGIN

PROBLEM = "urn:ietf:params:jmap:error:"
BOOM = "https://jmaple.test/boom"


async def post(client, data: bytes, content_type: str | None = "application/json") -> Any:
    headers = client.headers({} if content_type is None else {"Content-Type": content_type})
    return await client.post("/jmap/api", data=data, headers=headers)


async def problem(client, data: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    """POST a raw body that must be refused as a whole; returns the problem details."""
    resp = await post(client, data, content_type)
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["status"] == 400
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def request_problem(client, body: Any) -> dict[str, Any]:
    return await problem(client, orjson.dumps(body))


async def create_notes(client, *objects: dict[str, Any]) -> list[str]:
    result = await client.call("Note/set", {"create": {f"c{n}": o for n, o in enumerate(objects)}})
    assert result["notCreated"] is None, result["notCreated"]
    return [result["created"][f"c{n}"]["id"] for n in range(len(objects))]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return value


# Request-level errors (RFC 8620 §3.6.1)

async def test_an_unknown_capability_in_using_refuses_the_whole_request(client):
    """RFC 8620 §3.6.1: a capability the server does not support is unknownCapability."""
    body = await request_problem(client, {"using": [CORE, "urn:example:nope"],
                                          "methodCalls": [["Core/echo", {}, "c0"]]})
    assert body["type"] == PROBLEM + "unknownCapability"
    assert "urn:example:nope" in body["detail"]


@pytest.mark.parametrize("data", [
    b"{",
    b'{"using": [], "methodCalls": []',
    b"",
    b"nul",
    b'{"using": ["\xff\xfe"], "methodCalls": []}',          # not UTF-8
    b'{"using": ["\\ud800"], "methodCalls": []}',           # a lone surrogate: not I-JSON
    b'{"using": [], "methodCalls": [], "n": 1e400}',        # not representable as a double
    b"[" * 5000 + b"]" * 5000,                               # nested far beyond any parser's limit
    b'\xef\xbb\xbf{"using": [], "methodCalls": []}',        # a byte-order mark
], ids=["truncated", "unterminated", "empty", "bad-literal", "bad-utf8", "lone-surrogate", "huge-number",
        "deep-nesting", "bom"])
async def test_a_body_that_is_not_i_json_is_not_json(client, data):
    """RFC 8620 §3.6.1: a request that does not parse as I-JSON is notJSON (never a 500)."""
    assert (await problem(client, data))["type"] == PROBLEM + "notJSON"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/jmap+json", None])
async def test_a_content_type_other_than_application_json_is_not_json(client, content_type):
    """RFC 8620 §3.6.1: "The content type of the request was not application/json" is notJSON."""
    data = orjson.dumps({"using": [CORE], "methodCalls": [["Core/echo", {}, "c0"]]})
    assert (await problem(client, data, content_type))["type"] == PROBLEM + "notJSON"


async def test_application_json_with_a_charset_parameter_is_accepted(client):
    data = orjson.dumps({"using": [CORE], "methodCalls": [["Core/echo", {"a": 1}, "c0"]]})
    resp = await post(client, data, "application/json; charset=utf-8")
    assert resp.status == 200
    assert (await resp.json())["methodResponses"] == [["Core/echo", {"a": 1}, "c0"]]


@pytest.mark.parametrize("body", [
    [],
    "request",
    42,
    None,
    {},
    {"methodCalls": []},
    {"using": [CORE]},
    {"using": CORE, "methodCalls": []},
    {"using": [CORE, 5], "methodCalls": []},
    {"using": None, "methodCalls": []},
    {"using": [CORE], "methodCalls": {}},
    {"using": [CORE], "methodCalls": "Core/echo"},
    {"using": [CORE], "methodCalls": [["Core/echo", {}]]},
    {"using": [CORE], "methodCalls": [["Core/echo", {}, "c0", "extra"]]},
    {"using": [CORE], "methodCalls": [{"name": "Core/echo"}]},
    {"using": [CORE], "methodCalls": [[5, {}, "c0"]]},
    {"using": [CORE], "methodCalls": [["Core/echo", [], "c0"]]},
    {"using": [CORE], "methodCalls": [["Core/echo", None, "c0"]]},
    {"using": [CORE], "methodCalls": [["Core/echo", {}, 0]]},
    {"using": [CORE], "methodCalls": [["Core/echo", {}, "c0"], "junk"]},
    {"using": [CORE], "methodCalls": [], "createdIds": []},
    {"using": [CORE], "methodCalls": [], "createdIds": {"a": 5}},
    {"using": [CORE], "methodCalls": [], "createdIds": {"a": "not an id"}},
    {"using": [CORE], "methodCalls": [], "createdIds": {"not an id": "N1"}},
], ids=lambda b: orjson.dumps(b).decode()[:60])
async def test_json_that_is_not_a_request_object_is_not_request(client, body):
    """RFC 8620 §3.6.1: JSON that does not match the Request type signature (§3.3) is notRequest."""
    assert (await request_problem(client, body))["type"] == PROBLEM + "notRequest"


async def test_unknown_request_properties_are_ignored(client):
    """RFC 8620 §3.3: the server MUST ignore Request properties it does not understand."""
    result = await client.request_json({"using": [CORE], "methodCalls": [["Core/echo", {}, "c0"]],
                                        "futureExtension": {"x": 1}})
    assert result["methodResponses"] == [["Core/echo", {}, "c0"]]


@pytest.fixture
async def small(aiohttp_client, tmp_path):
    """An app with small limits, alice logged in."""
    config = Config.for_tests(tmp_path / "small", limits={
        "max_calls_in_request": 3, "max_size_request": 10_000, "max_objects_in_get": 3,
        "max_objects_in_set": 3, "max_query_limit": 4})
    return await logged_in(aiohttp_client, config)


async def test_more_calls_than_max_calls_in_request_is_a_limit_error(small):
    """RFC 8620 §3.6.1: over maxCallsInRequest the request is refused with limit naming the limit."""
    calls = [["Core/echo", {}, f"c{n}"] for n in range(4)]
    body = await request_problem(small, {"using": [CORE], "methodCalls": calls})
    assert body["type"] == PROBLEM + "limit"
    assert body["limit"] == "maxCallsInRequest"
    result = await small.request_json({"using": [CORE], "methodCalls": calls[:3]})
    assert len(result["methodResponses"]) == 3


async def test_a_body_over_max_size_request_is_a_limit_error(small):
    """RFC 8620 §3.6.1: a body over maxSizeRequest is refused with limit: maxSizeRequest."""
    data = orjson.dumps({"using": [CORE], "methodCalls": [["Core/echo", {"pad": "x" * 10_000}, "c0"]]})
    body = await problem(small, data)
    assert body["type"] == PROBLEM + "limit"
    assert body["limit"] == "maxSizeRequest"


async def test_a_body_just_under_max_size_request_is_processed(small):
    envelope = orjson.dumps({"using": [CORE], "methodCalls": [["Core/echo", {"pad": ""}, "c0"]]})
    data = orjson.dumps({"using": [CORE], "methodCalls": [["Core/echo", {"pad": "x" * (10_000 - len(envelope))},
                                                           "c0"]]})
    assert len(data) == 10_000
    resp = await post(small, data)
    assert resp.status == 200


async def test_an_empty_using_is_valid_and_every_call_is_an_unknown_method(client):
    """An empty `using` is a valid request; no method is available without its capability."""
    result = await client.request_json({"using": [], "methodCalls": [
        ["Core/echo", {}, "c0"], ["Note/get", {"accountId": client.account_id}, "c1"]]})
    assert result["methodResponses"] == [
        ["error", {"type": "unknownMethod", "description": "Core/echo is not a method of the capabilities in using"},
         "c0"],
        ["error", {"type": "unknownMethod", "description": "Note/get is not a method of the capabilities in using"},
         "c1"],
    ]
    assert isinstance(result["sessionState"], str)


async def test_the_response_carries_the_session_state(client):
    """RFC 8620 §3.4: sessionState is the Session's current state."""
    resp = await client.get("/jmap/session", headers=client.headers())
    session = await resp.json()
    result = await client.request_json({"using": [CORE], "methodCalls": []})
    assert result == {"methodResponses": [], "sessionState": session["state"]}


async def test_core_echo_returns_its_arguments_unchanged(client):
    """RFC 8620 §4: Core/echo returns exactly the arguments it was given."""
    args = {"hello": True, "list": [1, "two", None, 2.5], "nested": {"é": {"deep": []}}, "big": 2**53 - 1}
    assert await client.call("Core/echo", args) == args


def nested_json(depth: int) -> bytes:
    return b"[" * (depth - 1) + b'"leaf"' + b"]" * (depth - 1)


async def test_deeply_nested_arguments_are_invalid_arguments_not_a_server_error(client):
    """Arguments nested deeper than the server can write back fail that call alone (orjson writes 254 levels)."""
    for depth in (129, 300, 1000):
        data = (b'{"using": ["urn:ietf:params:jmap:core", "https://jmaple.test/notes"], "methodCalls": ['
                b'["Core/echo", {"v": ' + nested_json(depth) + b'}, "deep"], '
                b'["Note/set", {"accountId": "' + client.account_id.encode() + b'", "create": {"a": {"title": '
                + nested_json(depth) + b'}}}, "set"], '
                b'["Core/echo", {"v": ' + nested_json(100) + b'}, "shallow"]]}')
        resp = await post(client, data)
        assert resp.status == 200, depth
        responses = (await resp.json())["methodResponses"]
        assert responses[:2] == [
            ["error", {"type": "invalidArguments", "description": "the arguments nest deeper than 128 levels"},
             "deep"],
            ["error", {"type": "invalidArguments", "description": "the arguments nest deeper than 128 levels"},
             "set"]]
        assert responses[2] == ["Core/echo", {"v": nested(100)}, "shallow"]


async def test_tracing_never_fails_a_request_even_one_too_deep_to_print(aiohttp_client, tmp_path, capsys):
    """`jmapled dev --trace`: a body orjson cannot write (past 254 levels) is traced as a placeholder."""
    client = await aiohttp_client(make_app(Config.for_tests(tmp_path, trace=True), capabilities=[NOTES_PLUGIN]))
    await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    data = (b'{"using": ["urn:ietf:params:jmap:core"], "ignored": ' + nested_json(300) + b', "methodCalls": ['
            b'["Core/echo", {"v": 1}, "e"]]}')
    resp = await post(client, data)
    assert resp.status == 200
    assert (await resp.json())["methodResponses"] == [["Core/echo", {"v": 1}, "e"]]
    out = capsys.readouterr().out
    assert "--- request\n<not shown: " in out and '--- response\n{\n  "methodResponses"' in out


# Method-level errors (RFC 8620 §3.6.2)

async def test_an_unknown_method_fails_that_call_and_the_next_calls_still_run(client):
    """RFC 8620 §3.6.2: an error is inserted at its point; further calls are processed as normal."""
    responses = await client.calls(("Note/frobnicate", {}), ("Core/echo", {"x": 1}))
    assert responses == [
        ["error", {"type": "unknownMethod",
                   "description": "Note/frobnicate is not a method of the capabilities in using"}, "0"],
        ["Core/echo", {"x": 1}, "1"],
    ]


async def test_a_method_whose_capability_is_not_in_using_is_an_unknown_method(client):
    """`using` is enforced per method: Note/get needs the notes capability in `using`."""
    responses = await client.calls(("Note/get", {"accountId": client.account_id}), using=[CORE])
    assert responses[0][1]["type"] == "unknownMethod"
    responses = await client.calls(("Core/echo", {}), using=[NOTES])
    assert responses[0][1]["type"] == "unknownMethod"


STANDARD = ["Note/get", "Note/changes", "Note/set", "Note/copy", "Note/query", "Note/queryChanges"]
ARGS = {
    "Note/get": {},
    "Note/changes": {"sinceState": "0"},
    "Note/set": {},
    "Note/copy": {"fromAccountId": "Aother", "create": {}},
    "Note/query": {},
    "Note/queryChanges": {"sinceQueryState": "0"},
    "Blob/copy": {"fromAccountId": "Aother", "blobIds": []},
}


@pytest.mark.parametrize("method", [*STANDARD, "Blob/copy"])
async def test_a_missing_account_id_is_invalid_arguments_never_defaulted(client, method):
    """The accountId argument is required (RFC 8620 §5): it is never taken to be the personal account."""
    error = await client.error(method, ARGS[method])
    assert error == {"type": "invalidArguments", "description": "accountId is required"}


@pytest.mark.parametrize("method", [*STANDARD, "Blob/copy"])
@pytest.mark.parametrize("value", [5, ["A1"], {"id": "A1"}, True])
async def test_an_account_id_that_is_not_a_string_is_invalid_arguments(client, method, value):
    error = await client.error(method, {"accountId": value, **ARGS[method]})
    assert error == {"type": "invalidArguments", "description": "accountId must be an Id"}


@pytest.mark.parametrize("method", STANDARD)
async def test_an_unknown_argument_is_invalid_arguments(client, bob, method):
    args = {"accountId": client.account_id, **ARGS[method], "bogus": 1}
    if method == "Note/copy":
        await share(client, "alice@example.org", bob.account_id, False)
        args["fromAccountId"] = bob.account_id
    error = await client.error(method, args)
    assert error == {"type": "invalidArguments", "description": "unknown argument 'bogus'"}


# Every argument of every standard method, with values of the wrong type (RFC 8620 §5.1-§5.6).
BAD = {
    "Note/get": {
        "ids": ["N1", 5, {}, True, [5], ["not an id"], [""], ["x" * 256]],
        "properties": ["title", 5, {}, [5], [None]],
    },
    "Note/changes": {
        "sinceState": [None, 5, [], {}, True],
        "maxChanges": [0, -1, "5", 1.5, True, [], 2**53, 1e20],
    },
    "Note/set": {
        "ifInState": [5, [], {}, True],
        "create": [[], "x", 5, True],
        "update": [[], "x", 5, True],
        "destroy": ["N1", 5, {}, [5], ["not an id"], [None], True],
    },
    "Note/copy": {
        "fromAccountId": [None, 5, []],
        "ifFromInState": [5, [], True],
        "ifInState": [5, [], True],
        "create": [None, [], "x", 5],
        "onSuccessDestroyOriginal": ["yes", 1, None, []],
        "destroyFromIfInState": [5, [], True],
    },
    "Note/query": {
        "filter": ["x", 5, [], True, {"operator": "AND"}, {"operator": "AND", "conditions": "x"},
                   {"operator": "AND", "conditions": [5]}, {"operator": "AND", "conditions": [], "title": "x"},
                   {"title": 5}, {"title": None}, {"pinned": "yes"}, {"minRank": 1.5}, {"minRank": 2**53},
                   {"createdBefore": "yesterday"}],
        "sort": ["title", 5, {}, [5], [{}], [{"property": 5}], [{"property": "title", "isAscending": "yes"}],
                 [{"property": "title", "isAscending": None}], [{"property": "title", "collation": 5}]],
        "position": ["0", 1.5, None, True, [], 2**53, -(2**53), 1e20],
        "anchor": [5, "not an id", [], True],
        "anchorOffset": ["1", 1.5, None, 2**53, -(2**53)],
        "limit": [-1, "5", 1.5, True, 2**53],
        "calculateTotal": ["yes", 1, None, []],
    },
    "Note/queryChanges": {
        "filter": ["x", 5, {"title": 5}],
        "sort": ["title", [5], [{"property": "title", "isAscending": 1}]],
        "sinceQueryState": [None, 5, [], True],
        "maxChanges": [-1, "1", 1.5, True, 2**53],
        "upToId": [5, "not an id", []],
        "calculateTotal": ["yes", 1, None],
    },
}
CASES = [(m, arg, v) for m, table in BAD.items() for arg, values in table.items() for v in values]


@pytest.mark.parametrize("method,arg,value", CASES,
                         ids=[f"{m}-{a}-{orjson.dumps(v).decode()[:30]}" for m, a, v in CASES])
async def test_an_argument_of_the_wrong_type_is_invalid_arguments(client, bob, method, arg, value):
    """RFC 8620 §3.6.2: an argument of the wrong type (an Int outside ±2^53-1 included) is invalidArguments."""
    await share(client, "alice@example.org", bob.account_id, True)
    args = {"accountId": client.account_id, **ARGS[method]}
    if method == "Note/copy":
        args["fromAccountId"] = bob.account_id
    args[arg] = value
    error = await client.error(method, args)
    assert error["type"] == "invalidArguments", error
    assert isinstance(error.get("description"), str)


async def test_ints_at_the_edge_of_the_safe_range_are_accepted(client):
    """RFC 8620 §1.3: an Int is -2^53+1 <= value <= 2^53-1."""
    result = await client.call("Note/query", {"position": 2**53 - 1, "anchorOffset": -(2**53 - 1),
                                              "limit": 2**53 - 1})
    assert result["ids"] == []
    result = await client.call("Note/query", {"position": -(2**53 - 1)})
    assert result["position"] == 0


async def test_an_unknown_account_is_account_not_found(client):
    """RFC 8620 §3.6.2: accountNotFound."""
    for method in STANDARD:
        error = await client.error(method, {**ARGS[method], "accountId": "Anope"})
        assert error == {"type": "accountNotFound"}, method


async def test_another_users_account_without_a_grant_is_account_not_found(client, bob):
    """An account the principal may not use is indistinguishable from one that does not exist."""
    for method in STANDARD:
        error = await client.error(method, {**ARGS[method], "accountId": bob.account_id})
        assert error == {"type": "accountNotFound"}, method


async def test_a_read_only_grant_may_read_but_every_write_is_account_read_only(client, bob):
    """RFC 8620 §3.6.2: a method that modifies state in a read-only account is accountReadOnly."""
    [note] = await create_notes(client, {"title": "alice's"})
    await share(client, "bob@example.org", client.account_id, False)
    client.auth = basic("bob@example.org")
    got = await client.call("Note/get", {"accountId": client.account_id, "ids": [note], "properties": ["title"]})
    assert got["list"] == [{"id": note, "title": "alice's"}]
    state = got["state"]
    for args in ({"create": {"a": {"title": "bob's"}}}, {"update": {note: {"title": "bob's"}}},
                 {"destroy": [note]}, {}):
        error = await client.error("Note/set", {"accountId": client.account_id, **args})
        assert error == {"type": "accountReadOnly", "description": "this account is shared with you read-only"}
    error = await client.error("Note/copy", {"accountId": client.account_id, "fromAccountId": bob.account_id,
                                             "create": {}})
    assert error["type"] == "accountReadOnly"
    client.auth = basic("alice@example.org")
    got = await client.call("Note/get", {"ids": None})
    assert got["state"] == state
    assert [n["title"] for n in got["list"]] == ["alice's"]


async def test_more_ids_than_max_objects_in_get_is_request_too_large(small):
    """RFC 8620 §5.1: requestTooLarge when the ids exceed maxObjectsInGet."""
    error = await small.error("Note/get", {"accountId": small.account_id, "ids": ["N1", "N2", "N3", "N4"]})
    assert error["type"] == "requestTooLarge"
    result = await small.call("Note/get", {"ids": ["N1", "N2", "N3"]})
    assert result["notFound"] == ["N1", "N2", "N3"]


async def test_ids_null_over_max_objects_in_get_is_request_too_large(small):
    """RFC 8620 §5.1: ids null returns every object only up to maxObjectsInGet."""
    await create_notes(small, {}, {}, {})
    result = await small.call("Note/get", {"ids": None})
    assert len(result["list"]) == 3
    await create_notes(small, {})
    error = await small.error("Note/get", {"accountId": small.account_id, "ids": None})
    assert error["type"] == "requestTooLarge"


async def test_more_objects_than_max_objects_in_set_is_request_too_large(small):
    """RFC 8620 §5.3: requestTooLarge counts creates, updates and destroys together."""
    [a] = await create_notes(small, {})
    error = await small.error("Note/set", {"accountId": small.account_id, "create": {"x": {}, "y": {}},
                                           "update": {a: {}}, "destroy": ["N1"]})
    assert error["type"] == "requestTooLarge"
    got = await small.call("Note/get", {"ids": None})
    assert [n["id"] for n in got["list"]] == [a]


async def test_a_write_while_another_process_holds_the_lock_is_server_unavailable(aiohttp_client, tmp_path):
    """RFC 8620 §3.6.2: serverUnavailable when the database stays locked past the busy timeout; reads go on."""
    config = Config.for_tests(tmp_path / "data", storage={"busy_timeout": 0.1})
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))
    user = await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    client.account_id = user.account_id
    async with Database.open(config.data_dir / DATABASE_FILE, config.storage) as other:
        async with other.write():
            responses = await client.calls(
                ("Note/set", {"accountId": user.account_id, "create": {"a": {}}}),
                ("Note/get", {"accountId": user.account_id}))
    assert responses[0][1] == {"type": "serverUnavailable",
                               "description": "the database is busy; try again shortly"}
    assert responses[1][0] == "Note/get"
    assert list((await client.call("Note/set", {"create": {"a": {}}}))["created"]) == ["a"]


# A plugin whose method writes and then fails: serverFail, nothing committed, nothing published.

async def explode(ctx, args):
    """Boom/explode: write a note, then fail with an internal error."""
    note = {"id": "Nboom", "title": "half-written"}
    await NOTE.store.insert(ctx.conn, ctx.account_id, [note])
    await changes.record(ctx.conn, ctx.account_id, "Note", created=["Nboom"])
    raise RuntimeError("secret internal detail in /var/lib/jmaple")


BOOM_PLUGIN = Plugin(name="boom", capabilities=(
    Capability(BOOM, methods={"Boom/explode": Method(explode, writes=True)}),))


@pytest.fixture
async def boom(aiohttp_client, config):
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN, BOOM_PLUGIN]))
    user = await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    client.account_id = user.account_id
    return client


async def test_an_internal_error_is_server_fail_without_internals_and_is_rolled_back(boom, caplog):
    """RFC 8620 §3.6.2: serverFail; the method made no change. The traceback is logged with the call id."""
    runtime = boom.app[RUNTIME]
    with runtime.broker.subscribe([boom.account_id], {"Note"}) as sub:
        with caplog.at_level(logging.ERROR, logger="jmaple.core.dispatcher"):
            responses = await boom.calls(("Boom/explode", {"accountId": boom.account_id}, "kaboom"),
                                         ("Note/get", {"accountId": boom.account_id, "ids": None}, "after"),
                                         using=[CORE, NOTES, BOOM])
        assert sub.take() == {}
    assert responses[0] == ["error", {"type": "serverFail",
                                      "description": "an internal error occurred; it has been logged"}, "kaboom"]
    assert "secret" not in orjson.dumps(responses).decode()
    assert responses[1][1]["list"] == []
    assert responses[1][1]["state"] == "0"
    [record] = [r for r in caplog.records if "kaboom" in r.getMessage()]
    assert "Boom/explode" in record.getMessage()
    assert record.exc_info is not None and "secret internal detail" in str(record.exc_info[1])


async def test_an_internal_error_during_set_rolls_back_the_whole_call(client):
    """A /set that fails part-way with an internal error commits none of its creations."""
    responses = await client.calls(
        ("Note/set", {"accountId": client.account_id, "create": {"a": {"title": "fine"}, "b": {"title": "crash"}}}),
        ("Note/get", {"accountId": client.account_id, "ids": None}),
        createdIds={})
    assert responses[0][1] == {"type": "serverFail", "description": "an internal error occurred; it has been logged"}
    assert responses[1][1]["list"] == []
    assert responses[1][1]["state"] == "0"


async def test_a_failed_call_leaves_no_creation_ids_behind(client):
    """RFC 8620 §3.6.2: a method that fails changes nothing, not even the createdIds map."""
    result = await client.request_json({"using": USING, "createdIds": {}, "methodCalls": [
        ["Note/set", {"accountId": client.account_id, "create": {"a": {"title": "fine"}, "b": {"title": "crash"}}},
         "c0"],
        ["Note/get", {"accountId": client.account_id, "ids": ["#a"]}, "c1"],
    ]})
    assert result["createdIds"] == {}
    assert result["methodResponses"][1][1]["notFound"] == ["#a"]


# Result references (RFC 8620 §3.7)

async def test_a_result_reference_takes_an_argument_from_an_earlier_response(client):
    """RFC 8620 §3.7: the example of Foo/changes then Foo/get with #ids."""
    ids = await create_notes(client, {"title": "one"}, {"title": "two"})
    responses = await client.calls(
        ("Note/changes", {"accountId": client.account_id, "sinceState": "0"}, "t0"),
        ("Note/get", {"accountId": client.account_id, "properties": ["title"],
                      "#ids": {"resultOf": "t0", "name": "Note/changes", "path": "/created"}}, "t1"))
    assert responses[1][1]["list"] == [{"id": ids[0], "title": "one"}, {"id": ids[1], "title": "two"}]


async def test_a_star_in_a_path_maps_over_an_array_and_flattens(client):
    """RFC 8620 §3.7: "*" applies the rest of the pointer to every item and flattens arrays it yields."""
    [p1, p2] = await create_notes(client, {"title": "p1", "tags": {"a": True}}, {"title": "p2"})
    [c1, c2] = await create_notes(client, {"parentId": p1}, {"parentId": p2})
    responses = await client.calls(
        ("Note/query", {"accountId": client.account_id, "filter": {"title": "p"}, "sort": [{"property": "title"}]},
         "q"),
        ("Note/get", {"accountId": client.account_id, "properties": ["title", "tags"],
                      "#ids": {"resultOf": "q", "name": "Note/query", "path": "/ids"}}, "g"),
        ("Core/echo", {"#ids": {"resultOf": "g", "name": "Note/get", "path": "/list/*/id"},
                       "#titles": {"resultOf": "g", "name": "Note/get", "path": "/list/*/title"},
                       "#tags": {"resultOf": "g", "name": "Note/get", "path": "/list/*/tags"},
                       "#first": {"resultOf": "g", "name": "Note/get", "path": "/list/0/title"}}, "e"),
        ("Core/echo", {"a/b": {"~c": [["x", "y"], ["z"], "w"]}}, "x"),
        ("Core/echo", {"#flat": {"resultOf": "x", "name": "Core/echo", "path": "/a~1b/~0c/*"},
                       "#whole": {"resultOf": "x", "name": "Core/echo", "path": ""}}, "e1"),
        ("Note/get", {"accountId": client.account_id, "ids": [c1, c2]}, "g2"),
        ("Core/echo", {"#parents": {"resultOf": "g2", "name": "Note/get", "path": "/list/*/parentId"},
                       "#none": {"resultOf": "g2", "name": "Note/get", "path": "/notFound/*"}}, "e2"))
    assert responses[2] == ["Core/echo", {"ids": [p1, p2], "titles": ["p1", "p2"], "tags": [{"a": True}, {}],
                                          "first": "p1"}, "e"]
    assert responses[4] == ["Core/echo", {"flat": ["x", "y", "z", "w"],
                                          "whole": {"a/b": {"~c": [["x", "y"], ["z"], "w"]}}}, "e1"]
    assert responses[6] == ["Core/echo", {"parents": [p1, p2], "none": []}, "e2"]


async def test_a_reference_to_a_later_call_does_not_resolve(client):
    """RFC 8620 §3.7: only previously processed calls are searched."""
    responses = await client.calls(
        ("Core/echo", {"#v": {"resultOf": "later", "name": "Core/echo", "path": "/v"}}, "now"),
        ("Core/echo", {"v": 1}, "later"))
    assert responses[0][1]["type"] == "invalidResultReference"


async def test_the_same_argument_plain_and_referenced_is_invalid_arguments(client):
    """RFC 8620 §3.7: "foo" and "#foo" together MUST be invalidArguments."""
    responses = await client.calls(
        ("Note/query", {"accountId": client.account_id}, "q"),
        ("Note/get", {"accountId": client.account_id, "ids": [],
                      "#ids": {"resultOf": "q", "name": "Note/query", "path": "/ids"}}, "g"))
    assert responses[1] == ["error", {"type": "invalidArguments",
                                      "description": "both 'ids' and '#ids' are given"}, "g"]


@pytest.mark.parametrize("ref", [
    {"resultOf": "nope", "name": "Note/query", "path": "/ids"},           # no such call
    {"resultOf": "q", "name": "Note/get", "path": "/ids"},                # the call answered another name
    {"resultOf": "q", "name": "Note/query", "path": "/nothing"},          # no such property
    {"resultOf": "q", "name": "Note/query", "path": "ids"},               # not a JSON pointer
    {"resultOf": "q", "name": "Note/query", "path": "/ids/0"},            # out of range
    {"resultOf": "q", "name": "Note/query", "path": "/ids/-"},            # "-" is past the end
    {"resultOf": "q", "name": "Note/query", "path": "/position/x"},       # descends into a number
    {"resultOf": "q", "name": "Note/query", "path": "/ids/~2"},           # a bad escape
    {"resultOf": "q", "name": "Note/query", "path": "/accountId/*"},      # "*" on a string
    {"resultOf": "q", "name": "Note/query"},                               # no path
    {"resultOf": "q", "name": "Note/query", "path": 5},                   # path not a string
    {"resultOf": "q", "name": "Note/query", "path": "/ids", "extra": 1},  # not a ResultReference
    "q",
    None,
], ids=lambda r: orjson.dumps(r).decode())
async def test_a_reference_that_does_not_resolve_is_invalid_result_reference(client, ref):
    """RFC 8620 §3.7: if any result reference fails to resolve, the method is invalidResultReference."""
    responses = await client.calls(
        ("Note/query", {"accountId": client.account_id}, "q"),
        ("Note/get", {"accountId": client.account_id, "#ids": ref}, "g"),
        ("Core/echo", {"still": "runs"}, "e"))
    assert responses[1][0] == "error"
    assert responses[1][1]["type"] == "invalidResultReference"
    assert responses[2] == ["Core/echo", {"still": "runs"}, "e"]


async def test_a_reference_to_a_failed_call_is_invalid_result_reference(client):
    responses = await client.calls(
        ("Note/query", {"accountId": "Anope"}, "q"),
        ("Note/get", {"accountId": client.account_id,
                      "#ids": {"resultOf": "q", "name": "Note/query", "path": "/ids"}}, "g"))
    assert responses[1][1]["type"] == "invalidResultReference"


async def test_a_reference_resolves_against_the_first_response_with_that_call_id(client):
    """RFC 8620 §3.7 step 1: the first response with the call id is the one used."""
    responses = await client.calls(
        ("Core/echo", {"v": "first"}, "same"),
        ("Core/echo", {"v": "second"}, "same"),
        ("Core/echo", {"#v": {"resultOf": "same", "name": "Core/echo", "path": "/v"}}, "e"))
    assert responses[2] == ["Core/echo", {"v": "first"}, "e"]


async def test_a_reference_can_supply_the_account_id(client):
    responses = await client.calls(
        ("Note/query", {"accountId": client.account_id}, "q"),
        ("Note/get", {"#accountId": {"resultOf": "q", "name": "Note/query", "path": "/accountId"}}, "g"))
    assert responses[1][0] == "Note/get"
    assert responses[1][1]["accountId"] == client.account_id


# createdIds (RFC 8620 §3.3, §3.4) and creation ids in later calls (§5.3)

async def test_created_ids_are_returned_only_when_given(client):
    """RFC 8620 §3.4: createdIds is "only returned if given in the request"."""
    body = {"using": USING, "methodCalls": [
        ["Note/set", {"accountId": client.account_id, "create": {"a": {}}}, "c0"]]}
    assert "createdIds" not in await client.request_json(body)
    result = await client.request_json({**body, "createdIds": {}})
    assert result["createdIds"] == {"a": result["methodResponses"][0][1]["created"]["a"]["id"]}


async def test_created_ids_given_are_returned_with_the_new_ones_and_resolve(client):
    """RFC 8620 §3.4: the response includes every creation id passed in, plus the new ones."""
    [existing] = await create_notes(client, {"title": "made earlier"})
    result = await client.request_json({"using": USING, "createdIds": {"old": existing, "other": "Nelsewhere"},
                                        "methodCalls": [
        ["Note/set", {"accountId": client.account_id, "create": {"new": {"parentId": "#old"}}}, "c0"],
        ["Note/get", {"accountId": client.account_id, "ids": ["#old", "#new"], "properties": ["parentId"]}, "c1"],
    ]})
    new = result["methodResponses"][0][1]["created"]["new"]["id"]
    assert result["createdIds"] == {"old": existing, "other": "Nelsewhere", "new": new}
    assert result["methodResponses"][1][1]["list"] == [{"id": existing, "parentId": None},
                                                        {"id": new, "parentId": existing}]


async def test_a_creation_id_resolves_in_later_calls_wherever_an_id_is_expected(client):
    """RFC 8620 §5.3: #creationId in /get ids, /set update and destroy, Id properties and Id[Boolean] keys."""
    responses = await client.calls(
        ("Note/set", {"accountId": client.account_id, "create": {"p": {"title": "parent"}, "q": {"title": "q"}}}),
        ("Note/set", {"accountId": client.account_id,
                      "create": {"c": {"title": "child", "parentId": "#p", "linkedIds": {"#p": True, "#q": True}}},
                      "update": {"#q": {"title": "renamed"}}}),
        ("Note/get", {"accountId": client.account_id, "ids": ["#c", "#q", "#p", "#unknown"],
                      "properties": ["title", "parentId", "linkedIds"]}),
        ("Note/set", {"accountId": client.account_id, "destroy": ["#c"]}))
    p = responses[0][1]["created"]["p"]["id"]
    q = responses[0][1]["created"]["q"]["id"]
    c = responses[1][1]["created"]["c"]["id"]
    assert responses[1][1]["updated"] == {q: None}
    assert responses[2][1]["list"] == [
        {"id": c, "title": "child", "parentId": p, "linkedIds": {p: True, q: True}},
        {"id": q, "title": "renamed", "parentId": None, "linkedIds": {}},
        {"id": p, "title": "parent", "parentId": None, "linkedIds": {}},
    ]
    assert responses[2][1]["notFound"] == ["#unknown"]
    assert responses[3][1]["destroyed"] == [c]


async def test_an_unknown_creation_id_in_a_property_is_invalid_properties(client):
    result = await client.call("Note/set", {"create": {"a": {"parentId": "#nope"}, "b": {"linkedIds": {"#nope": True}}}})
    assert result["notCreated"] == {
        "a": {"type": "invalidProperties", "description": "invalid properties: parentId", "properties": ["parentId"]},
        "b": {"type": "invalidProperties", "description": "invalid properties: linkedIds",
              "properties": ["linkedIds"]},
    }


async def test_creations_are_ordered_so_referenced_ones_exist_first(client):
    """RFC 8620 §5.3: creates in one call are ordered so a referenced creation exists before its referrer."""
    result = await client.call("Note/set", {"create": {
        "grandchild": {"title": "3", "parentId": "#child"},
        "child": {"title": "2", "parentId": "#root", "linkedIds": {"#sibling": True}},
        "sibling": {"title": "s"},
        "root": {"title": "1"},
    }})
    assert result["notCreated"] is None
    ids = {cid: obj["id"] for cid, obj in result["created"].items()}
    got = await client.call("Note/get", {"ids": list(ids.values()), "properties": ["parentId", "linkedIds"]})
    by_id = {o["id"]: o for o in got["list"]}
    assert by_id[ids["grandchild"]]["parentId"] == ids["child"]
    assert by_id[ids["child"]] == {"id": ids["child"], "parentId": ids["root"], "linkedIds": {ids["sibling"]: True}}
    assert by_id[ids["root"]]["parentId"] is None


async def test_creations_that_refer_to_each_other_in_a_cycle_are_rejected(client):
    result = await client.call("Note/set", {"create": {
        "a": {"parentId": "#b"}, "b": {"parentId": "#a"}, "self": {"parentId": "#self"},
        "c": {"linkedIds": {"#d": True}}, "d": {"parentId": "#c"}, "fine": {"parentId": "#ok"}, "ok": {}}})
    assert sorted(result["notCreated"]) == ["a", "b", "c", "d", "self"]
    for error in result["notCreated"].values():
        assert error["type"] == "invalidProperties"
    assert sorted(result["created"]) == ["fine", "ok"]
    got = await client.call("Note/get", {"ids": None, "properties": ["parentId"]})
    assert len(got["list"]) == 2


async def test_a_creation_that_refers_to_a_failed_creation_fails_too(client):
    result = await client.call("Note/set", {"create": {"bad": {"title": "forbidden"}, "child": {"parentId": "#bad"}}})
    assert result["created"] is None
    assert result["notCreated"]["bad"]["type"] == "forbidden"
    assert result["notCreated"]["child"]["type"] == "invalidProperties"


async def test_a_reused_creation_id_maps_to_the_most_recent_creation(client):
    """RFC 8620 §5.3: a reused creation id maps to the most recently created item."""
    result = await client.request_json({"using": USING, "createdIds": {}, "methodCalls": [
        ["Note/set", {"accountId": client.account_id, "create": {"x": {"title": "first"}}}, "c0"],
        ["Note/set", {"accountId": client.account_id, "create": {"x": {"title": "second"}}}, "c1"],
        ["Note/get", {"accountId": client.account_id, "ids": ["#x"], "properties": ["title"]}, "c2"],
    ]})
    second = result["methodResponses"][1][1]["created"]["x"]["id"]
    assert result["createdIds"] == {"x": second}
    assert result["methodResponses"][2][1]["list"] == [{"id": second, "title": "second"}]
