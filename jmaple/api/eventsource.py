"""GET /jmap/eventsource (RFC 8620 §7.3): StateChanges as Server-Sent Events, resumable by Last-Event-ID."""

from __future__ import annotations

import asyncio
import functools
import logging
import re

import orjson
from aiohttp import hdrs, web

from jmaple.api.http import origin_allowed, problem
from jmaple.api.streams import Stream
from jmaple.core import push_state
from jmaple.core.context import Runtime
from jmaple.keys import AUTH_HEADER, CONFIG, PUBLISHER, RUNTIME, SUPERVISOR, principal_of
from jmaple.push.broker import Subscription

log = logging.getLogger(__name__)

TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")   # whole names only: fullmatch, as "$" lets "\n" through


def parse_types(value: str, known: set[str] | dict[str, str]) -> frozenset[str] | None | str:
    """None for "*", else the known names listed; names we do not know are ignored (a generic client
    keeps working). Returns an error message for an empty or malformed value."""
    # Spaces around names are tolerated; any other whitespace or control character (a "\n") is malformed.
    value = value.strip(" ")
    if value == "*":
        return None
    names = [n.strip(" ") for n in value.split(",")]
    if not value or not all(TYPE_NAME.fullmatch(n) for n in names):
        return "types must be * or a comma-separated list of type names"
    return frozenset(n for n in names if n in known)


def sse_event(event: str, data: object, event_id: str | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk: the event-stream response is chunked (we enable it), never compressed."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def state_chunk(changed: push_state.Changed, seq: int) -> bytes:
    """A "state" event whose id is the pushState (RFC 8620 §7.3), as one chunk; shared by every stream."""
    token = push_state.encode(seq)
    return chunk(sse_event("state", push_state.state_change(changed, token), token))


async def _nothing_to_say(code: int, reason: str) -> None:
    """SSE has no close frame: the handler notices the stream closed and ends the response."""


class EventWriter:
    """Writes one stream's events to its connection, each a whole chunk in one transport.write().

    As its subscription's sink, it writes a StateChange from the publishing code itself while the handler
    is idle and the connection has taken everything written so far: one encoding shared by all streams
    and one send() each, no task switch per stream. A connection that is backed up gets nothing more
    until it has drained; meanwhile its subscription coalesces, so a stalled reader costs at most one
    event in our buffers.
    """

    __slots__ = ("transport", "writer", "encoded", "publisher", "sub", "idle", "timed", "last_write", "loop")

    def __init__(self, request: web.Request, transport: asyncio.Transport, sub: Subscription, timed: bool) -> None:
        self.transport = transport
        self.writer = request.writer
        self.encoded = request.app[SUPERVISOR].encoded
        self.publisher = request.app[PUBLISHER]
        self.sub = sub
        self.idle = False        # the handler waits in sub.next() and writes nothing meanwhile
        self.timed = timed       # last_write matters (pings)
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()

    def offer(self, changed: push_state.Changed) -> bool:
        if not self.idle:
            return False
        transport = self.transport
        if transport.is_closing():
            self.sub.close()     # the client went away: the handler wakes, finds nothing and ends
            return True
        if transport.get_write_buffer_size():
            return False
        transport.write(self.encoded.get(state_chunk, changed, self.publisher.watermark))
        if self.timed:
            self.last_write = self.loop.time()
        return True

    async def write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.transport.write(data)
        self.last_write = self.loop.time()
        # With a high-water mark of 0 this waits until the connection has taken everything.
        await self.writer.drain()


async def eventsource(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    runtime = request.app[RUNTIME]
    push = request.app[CONFIG].push
    query = request.query
    types = parse_types(query.get("types", "*"), runtime.registry.push_types)
    if isinstance(types, str):
        return problem(400, "about:blank", types)
    closeafter = query.get("closeafter", "no")
    if closeafter not in ("state", "no"):
        return problem(400, "about:blank", "closeafter must be state or no")
    ping_text = query.get("ping", "0")
    # isascii(): isdigit() alone lets "²" through, which int() refuses.
    if not (ping_text.isascii() and ping_text.isdigit()) or len(ping_text) > 9:
        return problem(400, "about:blank", "ping must be a non-negative integer (seconds)")
    ping = int(ping_text)
    if ping:
        # RFC 8620 §7.3: the server may clamp the interval; the ping's data says what it used.
        ping = min(max(ping, push.ping_min), push.ping_max)

    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    origin = request.headers.get(hdrs.ORIGIN)
    if origin and origin_allowed(origin, request.app[CONFIG].server.cors_origins):
        headers.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin"})
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
    except ConnectionError:   # aiohttp's ClientConnectionResetError is one
        log.debug("event-source client left before the response began")
        return response
    transport = request.transport
    if request.method == "HEAD" or transport is None or transport.is_closing():
        return response   # HEAD: the headers a GET would have, and no stream
    assert isinstance(transport, asyncio.Transport)

    supervisor = request.app[SUPERVISOR]
    publisher = request.app[PUBLISHER]
    stream = Stream(principal, request[AUTH_HEADER], _nothing_to_say, transport)
    sub = runtime.broker.subscribe(principal.accounts, types)
    stream.subscription = sub
    out = EventWriter(request, transport, sub, bool(ping))
    if closeafter == "no":
        sub.sink = out.offer
    transport.set_write_buffer_limits(high=0)
    supervisor.add(stream)
    try:
        last_id = request.headers.get("Last-Event-ID")
        if last_id is not None:
            watermark = publisher.watermark
            seq = push_state.decode(last_id)
            # Keyed by what the id means, not its text: every unparsable id asks the same question.
            missed = await supervisor.reads.get(
                ("eventsource", sub.account_ids, types, seq, watermark), runtime.broker.generation,
                functools.partial(_changed_since, runtime, sub.account_ids, last_id, watermark, types))
            if missed or seq is None:
                await out.write(supervisor.encoded.get(state_chunk, missed, watermark))
                if closeafter == "state":
                    return response
        ping_chunk = chunk(sse_event("ping", {"interval": ping})) if ping else b""
        while not stream.closed:
            out.idle = True
            try:
                if ping:
                    async with asyncio.timeout_at(out.last_write + ping):
                        changed: push_state.Changed | None = await sub.next()
                else:
                    changed = await sub.next()
            except TimeoutError:
                changed = None
            finally:
                out.idle = False
            if changed is None:
                # RFC 8620 §7.3: a ping when the interval passed since the last event of any kind.
                if out.loop.time() >= out.last_write + ping:
                    await out.write(ping_chunk)
                continue
            if not changed or stream.closed:
                break
            await out.write(supervisor.encoded.get(state_chunk, changed, publisher.watermark))
            if closeafter == "state":
                break
    except ConnectionError:
        log.debug("event-source client went away")
    finally:
        sub.close()
        supervisor.discard(stream)
        if not transport.is_closing():
            transport.set_write_buffer_limits()   # the connection may serve further requests
    return response


async def _changed_since(runtime: Runtime, account_ids: frozenset[str], last_id: str, watermark: int,
                         types: frozenset[str] | None) -> push_state.Changed:
    async with runtime.db.read() as conn:
        return await push_state.changed_since(conn, account_ids, last_id, watermark, types)
