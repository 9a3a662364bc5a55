"""GET /jmap/ws (RFC 8887): JMAP Requests and push on one WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, hdrs, web

from jmaple.api.http import origin_allowed, problem
from jmaple.api.streams import Stream
from jmaple.core import push_state
from jmaple.core.errors import RequestError
from jmaple.keys import AUTH_HEADER, CONFIG, DISPATCHER, LIMITER, PUBLISHER, RUNTIME, SUPERVISOR, principal_of

log = logging.getLogger(__name__)

# aiohttp holds a whole message in memory before handing it over, and cannot skip the rest of one it
# refused: past its max_msg_size it fails the connection (1009). So we let it take messages well beyond
# maxSizeRequest and answer those over maxSizeRequest with a RequestError `limit`, the socket staying
# usable (RFC 8887 §4.3.4). Only beyond this bound, which caps what one connection can make us hold, do
# we close with 1009: a client sending that much has ignored the limit the session advertised.
MESSAGE_CAP = 64 * 1024 * 1024


def max_message_size(max_size_request: int) -> int:
    """The largest message aiohttp reads whole: MESSAGE_CAP, or twice maxSizeRequest if that is more."""
    return max(MESSAGE_CAP, 2 * max_size_request)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def state_change_text(changed: push_state.Changed, seq: int) -> str:
    """A StateChange message (RFC 8887 §4.3.5.1); encoded once for every socket that sends it."""
    return orjson.dumps(push_state.state_change(changed, push_state.encode(seq))).decode()


class Connection:
    """One JMAP WebSocket: its in-flight requests, its push subscription, and one lock for sending."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, stream: Stream):
        self.request = request
        self.app = request.app
        self.ws = ws
        self.stream = stream
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.pusher: asyncio.Task[None] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_text(orjson.dumps(message).decode())

    async def send_text(self, text: str) -> None:
        async with self.send_lock:
            if not self.ws.closed:
                await self.ws.send_str(text)

    async def request_error(self, exc: RequestError, request_id: Any = None) -> None:
        await self.send({"@type": "RequestError", "requestId": request_id, **exc.to_json()})

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def on_text(self, data: bytes) -> None:
        """One text message, as the UTF-8 bytes it came in (its size is then what maxSizeRequest counts)."""
        limit = self.app[CONFIG].limits.max_size_request
        if len(data) > limit:
            await self.request_error(RequestError("limit", 400, f"the message is larger than maxSizeRequest "
                                                  f"({limit} bytes)", limit="maxSizeRequest"))
            return
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if not is_utf8(data):
                # RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection (what aiohttp does when
                # it decodes text itself).
                await self.ws.close(code=WSCloseCode.INVALID_TEXT, message=b"Invalid UTF-8 text message")
                return
            await self.request_error(RequestError("notJSON", 400, f"the message is not valid I-JSON: {exc}"))
            return
        kind = message.get("@type") if isinstance(message, dict) else None
        request_id = message.get("id") if kind == "Request" else None
        if request_id is not None and not isinstance(request_id, str):
            await self.request_error(RequestError("notRequest", 400, "a Request's id must be a String"))
            return
        if kind == "Request":
            # As for HTTP (api/request.py): no value nests deeper than the message has brackets.
            self.start_request(message, request_id, data.count(b"[") + data.count(b"{"))
        elif kind == "WebSocketPushEnable":
            await self.push_enable(message)
        elif kind == "WebSocketPushDisable" and set(message) == {"@type"}:
            self.push_disable()
        else:
            await self.request_error(RequestError(
                "notRequest", 400, "a message must be a Request, WebSocketPushEnable or WebSocketPushDisable"))

    def start_request(self, message: dict[str, Any], request_id: Any, max_depth: int) -> None:
        principal = self.stream.principal
        limits = self.app[CONFIG].limits
        try:
            # RFC 8887 §4.3.2: maxConcurrentRequests counts WebSocket requests too.
            slot = self.app[LIMITER].slot(principal.user_id, "maxConcurrentRequests", limits.max_concurrent_requests)
            slot.__enter__()
        except RequestError as exc:
            self.spawn(self.request_error(exc, request_id))
            return
        body = {k: v for k, v in message.items() if k not in ("@type", "id")}
        self.spawn(self.run_request(body, request_id, slot, max_depth))

    async def run_request(self, body: dict[str, Any], request_id: Any,
                          slot: contextlib.AbstractContextManager[None], max_depth: int) -> None:
        try:
            try:
                response = await self.app[DISPATCHER].handle(self.stream.principal, body, max_depth=max_depth)
            finally:
                slot.__exit__(None, None, None)
        except RequestError as exc:
            await self.request_error(exc, request_id)
            return
        reply: dict[str, Any] = {"@type": "Response"}
        if request_id is not None:
            reply["requestId"] = request_id
        reply.update(response)
        await self.send(reply)

    async def push_enable(self, message: dict[str, Any]) -> None:
        runtime = self.app[RUNTIME]
        data_types = message.get("dataTypes")
        token = message.get("pushState")
        if set(message) - {"@type", "dataTypes", "pushState"} or not (
                data_types is None or (isinstance(data_types, list) and all(isinstance(t, str) for t in data_types))
        ) or not (token is None or isinstance(token, str)):
            await self.request_error(RequestError(
                "notRequest", 400, "WebSocketPushEnable takes dataTypes (String[]|null) and pushState (String)"))
            return
        types: frozenset[str] | None = None
        if data_types is not None:
            types = frozenset(t for t in data_types if t in runtime.registry.push_types)
        self.push_disable()
        sub = runtime.broker.subscribe(self.stream.principal.accounts, types)
        self.stream.subscription = sub
        initial: push_state.Changed = {}
        if token is not None:
            # RFC 8887 §4.3.5.2: send at once everything that changed since the client's pushState.
            async with runtime.db.read() as conn:
                initial = await push_state.changed_since(conn, self.stream.principal.accounts, token,
                                                         self.app[PUBLISHER].watermark, types)
        self.pusher = asyncio.ensure_future(self.push(sub, initial))

    def push_disable(self) -> None:
        if self.stream.subscription is not None:
            self.stream.subscription.close()
            self.stream.subscription = None
        if self.pusher is not None:
            self.pusher.cancel()
            self.pusher = None

    async def push(self, sub: Any, initial: push_state.Changed) -> None:
        publisher = self.app[PUBLISHER]
        encoded = self.app[SUPERVISOR].encoded
        changed = initial
        while True:
            if changed:
                await self.send_text(encoded.get(state_change_text, changed, publisher.watermark))
            changed = await sub.next()
            if sub.closed:
                return

    async def close(self) -> None:
        self.push_disable()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")]
    if "jmap" not in offered:
        return problem(400, "about:blank", 'the WebSocket handshake must offer the "jmap" subprotocol (RFC 8887 §4.2)')
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and not origin_allowed(origin, config.server.cors_origins):
        return problem(403, "about:blank", f"origin {origin} is not allowed ([server] cors_origins)")
    ws = web.WebSocketResponse(protocols=("jmap",), heartbeat=config.push.websocket_heartbeat,
                               max_msg_size=max_message_size(config.limits.max_size_request), compress=False,
                               decode_text=False)
    await ws.prepare(request)

    async def end(code: int, reason: str) -> None:
        await ws.close(code=code, message=reason.encode())

    stream = Stream(principal_of(request), request[AUTH_HEADER], end)
    conn = Connection(request, ws, stream)
    supervisor = request.app[SUPERVISOR]
    supervisor.add(stream)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await conn.on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                # RFC 8887 §4.3: data frames must be text; say so and keep the socket open.
                await conn.request_error(RequestError("notJSON", 400, "binary frames are not JMAP messages"))
            elif msg.type == WSMsgType.ERROR:
                log.debug("websocket error: %s", ws.exception())
                break
    finally:
        supervisor.discard(stream)
        stream.closed = True
        await conn.close()
    return ws

