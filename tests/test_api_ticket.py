"""POST /jmap/ticket: hostile bodies, and how long a ticket lives (issue #3: 60 s to open the first
connection, then that stream's automatic reconnects for 5 minutes after it, never longer)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from jmaple.api.ticket import FIRST_USE_SECONDS, MAX_TICKETS_PER_USER, RECONNECT_SECONDS, Tickets
from jmaple.keys import TICKETS

EVENTSOURCE = "/jmap/eventsource"
WEBSOCKET = "/jmap/ws"


async def post(client, body: bytes | None, *, query: str = "", content_type: str = "application/json") -> Any:
    headers = {"Authorization": client.auth, "Content-Type": content_type}
    return await client.post("/jmap/ticket" + query, data=body, headers=headers)


async def assert_problem(resp, status: int, type: str) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/problem+json", text
    body = orjson.loads(text)
    assert body["type"] == type and body["status"] == status, body
    return body


ENDPOINT = 'endpoint must be "eventsource" or "websocket"'


@pytest.mark.parametrize("body", [
    {"endpoint": ["eventsource"]},          # unhashable: used to be a 500 (TypeError)
    {"endpoint": []},
    {"endpoint": {"eventsource": 1}},
    {"endpoint": {}},
    {"endpoint": None},
    {"endpoint": 1},
    {"endpoint": 1.5},
    {"endpoint": True},
    {"endpoint": ""},
    {"endpoint": "EventSource"},
    {"endpoint": "eventsource\n"},
    {"endpoint": "eventsource\u0000"},
    {"endpoint": "x" * 1000},
    {"endpoint": "/jmap/eventsource"},
    {"Endpoint": "eventsource"},
    {},
], ids=repr)
async def test_an_endpoint_that_is_not_one_of_the_names_is_a_400_problem(client, body):
    resp = await post(client, orjson.dumps(body))
    assert (await assert_problem(resp, 400, "about:blank"))["detail"] == ENDPOINT


@pytest.mark.parametrize("body", [b"[]", b'["eventsource"]', b'"eventsource"', b"1", b"null", b"true",
                                  b"[" * 500 + b"]" * 500], ids=lambda b: b[:20].decode())
async def test_a_body_that_is_not_a_json_object_is_a_400_problem(client, body):
    resp = await post(client, body)
    detail = (await assert_problem(resp, 400, "about:blank"))["detail"]
    assert "JSON object" in detail


@pytest.mark.parametrize("body", [b"{", b"{'endpoint': 'eventsource'}", b'{"endpoint": "eventsource",}',
                                  b'{"endpoint": "\xff\xfe"}', b'{"endpoint": "\\ud800"}', b"\x00",
                                  b"[" * 600 + b"]" * 400, b"endpoint=eventsource"],
                         ids=lambda b: b[:20].decode("ascii", "replace"))
async def test_a_body_that_is_not_json_is_not_json(client, body):
    resp = await post(client, body)
    await assert_problem(resp, 400, "urn:ietf:params:jmap:error:notJSON")


async def test_a_body_over_the_size_limit_is_refused_before_parsing(client):
    resp = await post(client, orjson.dumps({"endpoint": "eventsource", "pad": "x" * 5000}))
    await assert_problem(resp, 400, "urn:ietf:params:jmap:error:limit")
    # Without a Content-Length too (chunked): the limit holds while reading.
    async def chunks():
        yield b'{"endpoint": "eventsource", "pad": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'
    resp = await client.post("/jmap/ticket", data=chunks(), headers={"Authorization": client.auth})
    await assert_problem(resp, 400, "urn:ietf:params:jmap:error:limit")


async def test_extra_keys_are_ignored(client):
    resp = await post(client, orjson.dumps({"endpoint": "websocket", "types": ["Email"], "x": {"y": [1]}}))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["endpoint"] == "websocket" and set(body) == {"ticket", "expires", "endpoint"}
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("query", ["?endpoint=", "?endpoint=nope", "?endpoint=eventsource%00",
                                   "?endpoint=%FF%FE", "?endpoint=" + "e" * 4000])
async def test_a_bad_endpoint_in_the_query_is_a_400_problem(client, query):
    resp = await post(client, None, query=query)
    assert (await assert_problem(resp, 400, "about:blank"))["detail"] == ENDPOINT


async def test_the_query_takes_precedence_and_any_content_type_is_read_as_json(client):
    resp = await post(client, b"not json at all", query="?endpoint=eventsource")
    assert resp.status == 200 and (await resp.json())["endpoint"] == "eventsource"
    resp = await post(client, b'{"endpoint": "eventsource"}', content_type="text/plain")
    assert resp.status == 200 and (await resp.json())["endpoint"] == "eventsource"


async def test_an_empty_body_is_no_endpoint(client):
    resp = await post(client, b"")
    assert (await assert_problem(resp, 400, "about:blank"))["detail"] == ENDPOINT


# --- lifetime ------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_not_used_within_a_minute_expires():
    clock = Clock()
    tickets = Tickets(clock)
    token, lifetime = tickets.issue("Basic x", EVENTSOURCE)
    assert lifetime == FIRST_USE_SECONDS == 60.0
    clock.now += 60.0
    assert tickets.redeem(token, EVENTSOURCE) is None
    assert tickets.redeem(token, EVENTSOURCE) is None   # and it is gone


def test_reconnects_may_reuse_a_ticket_for_five_minutes_after_its_first_use_but_no_longer():
    """Each use used to restart the 300 s window, so a ticket used every few minutes lived for ever."""
    clock = Clock()
    tickets = Tickets(clock)
    token, _ = tickets.issue("Basic x", EVENTSOURCE)
    clock.now += 30.0
    assert tickets.redeem(token, EVENTSOURCE) == "Basic x"          # the first connection
    first_use = clock.now
    for step in (100.0, 100.0, 99.0):                                 # reconnects within the window
        clock.now += step
        assert tickets.redeem(token, EVENTSOURCE) == "Basic x"
    clock.now = first_use + RECONNECT_SECONDS
    assert RECONNECT_SECONDS == 300.0
    assert tickets.redeem(token, EVENTSOURCE) is None


def test_a_ticket_is_bound_to_its_endpoint():
    clock = Clock()
    tickets = Tickets(clock)
    token, _ = tickets.issue("Bearer t", WEBSOCKET)
    assert tickets.redeem(token, EVENTSOURCE) is None
    assert tickets.redeem(token, WEBSOCKET) == "Bearer t"
    assert tickets.redeem("nope", WEBSOCKET) is None


def test_no_ticket_outlives_six_minutes_however_it_is_used():
    clock = Clock()
    tickets = Tickets(clock)
    token, _ = tickets.issue("Basic x", EVENTSOURCE)
    alive = 0.0
    while tickets.redeem(token, EVENTSOURCE) is not None:
        clock.now += 10.0
        alive += 10.0
        assert alive <= FIRST_USE_SECONDS + RECONNECT_SECONDS


def test_past_32_live_tickets_a_user_loses_its_oldest_and_no_one_else_does():
    """Only invalid tickets were pruned, so one user could fill memory with valid ones."""
    clock = Clock()
    tickets = Tickets(clock)
    other, _ = tickets.issue("Basic y", EVENTSOURCE, owner="u2")
    mine = [tickets.issue("Basic x", EVENTSOURCE, owner="u1")[0] for _ in range(MAX_TICKETS_PER_USER + 3)]
    assert MAX_TICKETS_PER_USER == 32
    assert [tickets.redeem(t, EVENTSOURCE) for t in mine[:3]] == [None] * 3
    assert all(tickets.redeem(t, EVENTSOURCE) == "Basic x" for t in mine[3:])
    assert tickets.redeem(other, EVENTSOURCE) == "Basic y"
    # The cap counts live tickets only: once the old ones expired, new ones displace nothing.
    clock.now += FIRST_USE_SECONDS + RECONNECT_SECONDS
    fresh = [tickets.issue("Basic x", WEBSOCKET, owner="u1")[0] for _ in range(MAX_TICKETS_PER_USER)]
    assert all(tickets.redeem(t, WEBSOCKET) == "Basic x" for t in fresh)


async def test_the_ticket_endpoint_caps_live_tickets_per_user(client):
    issued = []
    for _ in range(MAX_TICKETS_PER_USER + 1):
        resp = await post(client, b'{"endpoint": "eventsource"}')
        assert resp.status == 200
        issued.append((await resp.json())["ticket"])
    tickets = client.app[TICKETS]
    assert tickets.redeem(issued[0], EVENTSOURCE) is None
    assert tickets.redeem(issued[-1], EVENTSOURCE) == client.auth
