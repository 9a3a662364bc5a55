"""GET /jmap/ws (RFC 8887) against the real app, with aiohttp's WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import struct
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from conftest import CORE, NOTES, PASSWORD, basic, logged_in
from jmaple.app import make_app
from jmaple.cli import make_runner
from jmaple.config import Config
from jmaple.keys import RUNTIME, SUPERVISOR
from jmaple.store import accounts
from jmaple.api.websocket import MESSAGE_CAP
from jmaple.users import create_credential, create_user
from notes import PLUGIN as NOTES_PLUGIN
from test_core_dispatcher import nested
from test_api_eventsource import HOSTILE_IDS, measure_grant_latencies, short

USING = [CORE, NOTES]


async def connect(client: Any, auth: str | None = None, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    return await client.ws_connect("/jmap/ws", protocols=("jmap",),
                                   headers={"Authorization": auth or client.auth}, **kwargs)


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


def request(calls: list[Any], request_id: str | None = "r1") -> dict[str, Any]:
    body: dict[str, Any] = {"@type": "Request", "using": USING, "methodCalls": calls}
    if request_id is not None:
        body["id"] = request_id
    return body


async def test_the_session_advertises_websocket_with_push(client):
    """RFC 8887 §3: urn:ietf:params:jmap:websocket with url and supportsPush."""
    session = await (await client.get("/jmap/session", headers={"Authorization": client.auth})).json()
    ws = session["capabilities"]["urn:ietf:params:jmap:websocket"]
    assert ws["supportsPush"] is True
    assert ws["url"].startswith("ws://") and ws["url"].endswith("/jmap/ws")


async def test_the_jmap_subprotocol_is_required(client):
    """RFC 8887 §4.2: the client must offer "jmap"."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
        await client.ws_connect("/jmap/ws", headers={"Authorization": client.auth})
    assert failure.value.status == 400


async def test_credentials_are_required(client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
        await client.ws_connect("/jmap/ws", protocols=("jmap",))
    assert failure.value.status == 401


async def test_a_disallowed_origin_is_refused(client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
        await connect(client, origin="https://evil.example")
    assert failure.value.status == 403


async def test_request_and_response_carry_the_request_id(client):
    """RFC 8887 §4.3.2-4.3.3: a Response echoes the Request's id as requestId."""
    ws = await connect(client)
    assert ws.protocol == "jmap"
    await ws.send_str(orjson.dumps(request([["Core/echo", {"hello": True}, "c1"]], "R1")).decode())
    reply = await receive(ws)
    assert reply["@type"] == "Response"
    assert reply["requestId"] == "R1"
    assert reply["methodResponses"] == [["Core/echo", {"hello": True}, "c1"]]
    assert "sessionState" in reply
    await ws.close()


async def test_deeply_nested_arguments_fail_that_call_alone_as_over_http(client):
    """The message's bracket count bounds its nesting; past 128 levels a call is invalidArguments."""
    ws = await connect(client)
    for depth in (129, 300):
        deep = "[" * (depth - 1) + '"leaf"' + "]" * (depth - 1)   # deeper than orjson writes
        calls = [["Core/echo", {"v": nested(100)}, "shallow"], ["Core/echo", {"v": "[[[[{{{{"}, "brackets-in-a-string"]]
        text = orjson.dumps(request(calls)).decode()
        await ws.send_str(text.replace('"methodCalls":[', '"methodCalls":[["Core/echo",{"v":' + deep + '},"deep"],'))
        reply = await receive(ws)
        assert reply["methodResponses"] == [
            ["error", {"type": "invalidArguments", "description": "the arguments nest deeper than 128 levels"},
             "deep"],
            ["Core/echo", {"v": nested(100)}, "shallow"],
            ["Core/echo", {"v": "[[[[{{{{"}, "brackets-in-a-string"]]
    await ws.close()


async def test_several_requests_in_flight_on_one_socket(client):
    ws = await connect(client)
    for n in range(3):
        await ws.send_str(orjson.dumps(request([["Core/echo", {"n": n}, "c"]], f"R{n}")).decode())
    replies = {(r := await receive(ws))["requestId"]: r for _ in range(3)}
    assert sorted(replies) == ["R0", "R1", "R2"]
    assert replies["R2"]["methodResponses"][0][1] == {"n": 2}
    await ws.close()


@pytest.mark.parametrize("frame, kind", [
    ("not json at all", "urn:ietf:params:jmap:error:notJSON"),
    ('{"@type": "Nonsense"}', "urn:ietf:params:jmap:error:notRequest"),
    ('[1, 2, 3]', "urn:ietf:params:jmap:error:notRequest"),
    ('{"@type": "Request", "using": "x", "methodCalls": []}', "urn:ietf:params:jmap:error:notRequest"),
    ('{"@type": "Request", "using": ["urn:x"], "methodCalls": []}', "urn:ietf:params:jmap:error:unknownCapability"),
    ('{"@type": "Request", "id": 5, "using": [], "methodCalls": []}', "urn:ietf:params:jmap:error:notRequest"),
    ('{"@type": "WebSocketPushEnable", "dataTypes": "Note"}', "urn:ietf:params:jmap:error:notRequest"),
])
async def test_malformed_frames_get_a_request_error_and_the_socket_stays_usable(client, frame, kind):
    """RFC 8887 §4.3.1, §4.3.4: a RequestError problem with @type; the connection stays open."""
    ws = await connect(client)
    await ws.send_str(frame)
    error = await receive(ws)
    assert error["@type"] == "RequestError"
    assert error["type"] == kind
    assert error["status"] == 400
    await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "after")).decode())
    assert (await receive(ws))["requestId"] == "after"
    await ws.close()


async def test_a_binary_frame_is_a_request_error(client):
    ws = await connect(client)
    await ws.send_bytes(b'{"@type": "Request"}')
    error = await receive(ws)
    assert (error["@type"], error["type"]) == ("RequestError", "urn:ietf:params:jmap:error:notJSON")
    await ws.close()


@pytest.fixture
async def small_client(aiohttp_client, tmp_path):
    config = Config.for_tests(data_dir=tmp_path / "d", limits={"max_size_request": 10_000,
                                                               "max_concurrent_requests": 1})
    return await logged_in(aiohttp_client, config)


async def test_a_message_over_max_size_request_is_a_limit_error(small_client):
    ws = await connect(small_client)
    await ws.send_str(orjson.dumps(request([["Core/echo", {"x": "y" * 12_000}, "c"]])).decode())
    error = await receive(ws)
    assert (error["type"], error["limit"]) == ("urn:ietf:params:jmap:error:limit", "maxSizeRequest")
    await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "ok")).decode())
    assert (await receive(ws))["requestId"] == "ok"
    await ws.close()


def frame(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """A client's masked frame (RFC 6455 §5.2); `length` may claim more than the payload sent."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def raw_socket(port: int, auth: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand, for frames aiohttp's client would not send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /jmap/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
                 f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jmap\r\n\r\n".encode())
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame (unmasked) as (opcode, payload)."""
    async with asyncio.timeout(5):
        first, second = await reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        return first & 0x0F, await reader.readexactly(n)


async def test_a_message_far_over_max_size_request_is_a_limit_error_too(small_client):
    """Issue 3 / RFC 8887 §4.3.4: however far over maxSizeRequest (here 100 times), a RequestError
    `limit`, and the socket stays usable; the old bound was twice the limit, past which it closed (1009)."""
    ws = await connect(small_client)
    for size in (2 * 10_000 + 1025, 1_000_000):
        await ws.send_str(orjson.dumps(request([["Core/echo", {"x": "y" * size}, "c"]], "big")).decode())
        error = await receive(ws)
        assert error["@type"] == "RequestError"
        assert (error["type"], error["limit"], error["status"]) == (
            "urn:ietf:params:jmap:error:limit", "maxSizeRequest", 400)
        await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "ok")).decode())
        assert (await receive(ws))["requestId"] == "ok"
    await ws.close()


async def test_a_fragmented_message_over_max_size_request_is_a_limit_error(small_client):
    """maxSizeRequest counts the whole message, however many frames carry it."""
    reader, writer = await raw_socket(small_client.server.port, small_client.auth)
    body = orjson.dumps(request([["Core/echo", {"x": "y" * 12_000}, "c"]]))
    writer.write(frame(0x1, body[:6000], fin=False) + frame(0x0, body[6000:]))
    opcode, payload = await read_frame(reader)
    assert opcode == 0x1
    assert orjson.loads(payload)["type"] == "urn:ietf:params:jmap:error:limit"
    writer.write(frame(0x1, orjson.dumps(request([["Core/echo", {}, "c"]], "ok"))))
    opcode, payload = await read_frame(reader)
    assert orjson.loads(payload)["requestId"] == "ok"
    writer.close()


async def test_a_message_beyond_the_hard_cap_closes_with_1009(small_client, caplog):
    """Past MESSAGE_CAP aiohttp refuses the frame from its header, before buffering it, and cannot skip it:
    the connection closes with 1009 (Message Too Big), its subscription released, nothing logged as an error."""
    reader, writer = await raw_socket(small_client.server.port, small_client.auth)
    writer.write(frame(0x1, orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": None})))
    writer.write(frame(0x1, b"{", length=MESSAGE_CAP + 1))
    opcode, payload = await read_frame(reader)
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1009)
    writer.close()
    async with asyncio.timeout(5):
        while small_client.app[RUNTIME].broker.subscriber_count() or small_client.app[SUPERVISOR].streams:
            await asyncio.sleep(0.02)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_text_frame_that_is_not_utf8_fails_the_connection_with_1007(client):
    """RFC 6455 §8.1: a text frame must be UTF-8 (we read frames as bytes, so we check it ourselves)."""
    reader, writer = await raw_socket(client.server.port, client.auth)
    writer.write(frame(0x1, b'{"@type": "Request", "id": "\xff"}'))
    opcode, payload = await read_frame(reader)
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1007)
    writer.close()


async def test_push_enable_sends_state_changes_with_push_state(client):
    """RFC 8887 §4.3.5: StateChange messages carry a pushState."""
    ws = await connect(client)
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": None}).decode())
    result = await client.call("Note/set", {"create": {"a": {"title": "x"}}})
    change = await receive(ws)
    assert change["@type"] == "StateChange"
    assert change["changed"] == {client.account_id: {"Note": result["newState"]}}
    assert isinstance(change["pushState"], str)
    await ws.close()


async def test_data_types_filter_and_disable(client):
    ws = await connect(client)
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": ["Mailbox"]}).decode())
    await client.call("Note/set", {"create": {"a": {"title": "x"}}})
    await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "marker")).decode())
    assert (await receive(ws))["requestId"] == "marker"   # no StateChange for Note came first
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": ["Note"]}).decode())
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushDisable"}).decode())
    await client.call("Note/set", {"create": {"b": {"title": "y"}}})
    await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "marker2")).decode())
    assert (await receive(ws))["requestId"] == "marker2"
    await ws.close()


async def test_an_old_push_state_gets_what_changed_since_at_once(client):
    """RFC 8887 §4.3.5.2: on a pushState the server sends all changes since that state immediately."""
    ws = await connect(client)
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": None}).decode())
    await client.call("Note/set", {"create": {"a": {"title": "x"}}})
    token = (await receive(ws))["pushState"]
    await ws.close()
    result = await client.call("Note/set", {"create": {"b": {"title": "away"}}})
    ws = await connect(client)
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": None,
                                    "pushState": token}).decode())
    change = await receive(ws)
    assert change["changed"][client.account_id]["Note"] == result["newState"]
    await ws.close()


@pytest.mark.parametrize("token", HOSTILE_IDS, ids=short)
async def test_a_hostile_push_state_is_an_unknown_one(client, token):
    """RFC 8887 §4.3.5.2: a pushState we cannot use is treated as unknown: one StateChange with every
    current state (as for an unparsable Last-Event-ID), and the socket stays usable."""
    state = (await client.call("Note/set", {"create": {"a": {"title": "x"}}}))["newState"]
    ws = await connect(client)
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": ["Note"],
                                    "pushState": token}).decode())
    change = await receive(ws)
    assert change["@type"] == "StateChange"
    assert change["changed"] == {client.account_id: {"Note": state}}
    await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "after")).decode())
    assert (await receive(ws))["requestId"] == "after"
    state = (await client.call("Note/set", {"create": {"b": {"title": "y"}}}))["newState"]
    assert (await receive(ws))["changed"] == {client.account_id: {"Note": state}}
    await ws.close()


async def test_max_concurrent_requests_counts_websocket_requests(small_client):
    ws = await connect(small_client)
    body = orjson.dumps(request([["Core/echo", {}, "c"]], "x")).decode()
    for _ in range(5):
        await ws.send_str(body)
    replies = [await receive(ws) for _ in range(5)]
    assert all(r["@type"] in ("Response", "RequestError") for r in replies)
    assert all(r["type"] == "urn:ietf:params:jmap:error:limit" for r in replies if r["@type"] == "RequestError")
    await ws.close()


async def test_a_revoked_credential_closes_the_socket_with_1008(client):
    """RFC 8887 §4.2: when credentials expire the server may close with 1008 (Policy Violation)."""
    runtime = client.app[RUNTIME]
    credential_id, token = await create_credential(runtime, "alice@example.org", "token", "ws")
    ws = await connect(client, auth=f"Bearer {token}")
    async with runtime.db.write() as tx:
        user = await accounts.user_by_login(tx, "alice@example.org")
        await accounts.revoke_credential(tx, user.id, credential_id)
    async with asyncio.timeout(5):
        msg = await ws.receive()
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert ws.close_code == 1008


async def test_a_grant_given_or_revoked_reaches_an_open_socket_within_a_second(client, bob):
    """Issue 3: a new grant or a revoked one reaches open WebSockets within 1 s (measured several times)."""
    ws = await connect(client, auth=basic("bob@example.org"))
    await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": ["Note"]}).decode())
    await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "ready")).decode())
    assert (await receive(ws))["requestId"] == "ready"

    async def changes() -> Any:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive(ws, timeout=30)
            if message["@type"] == "StateChange":
                yield loop.time(), message["changed"]

    granted, revoked = await measure_grant_latencies(client, changes(), rounds=2)
    assert max(granted) < 1.0, granted
    assert max(revoked) < 1.0, revoked
    await ws.close()


async def test_no_stream_leaks_after_many_connections(client):
    for _ in range(50):
        ws = await connect(client)
        await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": None}).decode())
        await ws.close()
    async with asyncio.timeout(5):
        while client.app[RUNTIME].broker.subscriber_count() or client.app[SUPERVISOR].streams:
            await asyncio.sleep(0.02)


@pytest.fixture
async def served(tmp_path):
    """The app under the runner `jmapled serve` uses (no handler cancellation on disconnect)."""
    config = Config.for_tests(data_dir=tmp_path / "served")
    app = make_app(config, capabilities=[NOTES_PLUGIN])
    runner = make_runner(app, config)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    await create_user(app[RUNTIME], "alice@example.org", "Alice", PASSWORD)
    try:
        yield SimpleNamespace(app=app, runner=runner, port=runner.addresses[0][1], auth=basic("alice@example.org"))
    finally:
        await runner.cleanup()


def masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame (RFC 6455 §5.2), short payloads only."""
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_sockets_of_clients_that_vanished_are_released(served):
    """A client that resets or half-closes without a Close frame: its push subscription goes at once."""
    broker, supervisor = served.app[RUNTIME].broker, served.app[SUPERVISOR]
    enable = masked_text_frame(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": None}))
    clients = []
    for _ in range(40):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /jmap/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {served.auth}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jmap\r\n\r\n".encode() + enable)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        clients.append(writer)
    async with asyncio.timeout(5):
        while broker.subscriber_count() < 40:
            await asyncio.sleep(0.02)
    for n, writer in enumerate(clients):
        if n % 2:
            writer.transport.abort()
        else:
            writer.close()
    async with asyncio.timeout(2):
        while broker.subscriber_count() or supervisor.streams or served.runner.server.connections:
            await asyncio.sleep(0.02)


@pytest.fixture
async def heartbeat_client(aiohttp_client, tmp_path):
    config = Config.for_tests(data_dir=tmp_path / "d", push={"websocket_heartbeat": 1})
    return await logged_in(aiohttp_client, config)


async def test_the_server_pings_idle_sockets_and_drops_a_peer_that_stops_answering(heartbeat_client):
    """Issue 3: server pings keep proxies from closing idle sockets; a peer that does not answer one
    within half the interval is dropped, its subscription released. One that answers stays."""
    client = heartbeat_client
    broker = client.app[RUNTIME].broker
    live = await connect(client)
    dead = await connect(client, autoping=False)
    for ws in (live, dead):
        await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": ["Note"]}).decode())
        await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "ready")).decode())
        assert (await receive(ws))["requestId"] == "ready"
    assert broker.subscriber_count() == 2
    received: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()

    async def read_live() -> None:   # aiohttp's client answers pings while it is receiving
        async for msg in live:
            received.put_nowait(msg)

    reader = asyncio.create_task(read_live())
    async with asyncio.timeout(1 + 2):
        ping = await dead.receive()
    assert ping.type == aiohttp.WSMsgType.PING
    async with asyncio.timeout(0.5 + 2):
        msg = await dead.receive()   # no pong from us
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED), msg
    async with asyncio.timeout(5):
        while broker.subscriber_count() != 1 or len(client.app[SUPERVISOR].streams) != 1:
            await asyncio.sleep(0.02)
    state = (await client.call("Note/set", {"create": {"a": {"title": "x"}}}))["newState"]
    async with asyncio.timeout(5):
        msg = await received.get()
    assert orjson.loads(msg.data)["changed"] == {client.account_id: {"Note": state}}
    reader.cancel()
    await live.close()
