"""GET /jmap/eventsource (RFC 8620 §7.3): StateChanges as Server-Sent Events, resumable by Last-Event-ID."""

from __future__ import annotations

import asyncio
import re
import time

import orjson
from aiohttp import hdrs, web

from jmaple.api.http import origin_allowed, problem
from jmaple.api.streams import Stream
from jmaple.core import push_state
from jmaple.keys import AUTH_HEADER, CONFIG, PUBLISHER, RUNTIME, SUPERVISOR, principal_of

TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def parse_types(value: str, known: set[str] | dict[str, str]) -> frozenset[str] | None | str:
    """None for "*", else the known names listed; names we do not know are ignored (a generic client
    keeps working). Returns an error message for an empty or malformed value."""
    value = value.strip()
    if value == "*":
        return None
    names = [n.strip() for n in value.split(",")]
    if not value or not all(TYPE_NAME.match(n) for n in names):
        return "types must be * or a comma-separated list of type names"
    return frozenset(n for n in names if n in known)


def sse_event(event: str, data: object, event_id: str | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


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
    if not ping_text.isdigit() or len(ping_text) > 9:
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
    await response.prepare(request)

    async def end(code: int, reason: str) -> None:
        pass   # the writer loop below notices stream.closed and returns, which ends the response

    stream = Stream(principal, request[AUTH_HEADER], end)
    supervisor = request.app[SUPERVISOR]
    publisher = request.app[PUBLISHER]
    sub = runtime.broker.subscribe(principal.accounts, types)
    stream.subscription = sub
    supervisor.add(stream)
    try:
        last_id = request.headers.get("Last-Event-ID")
        if last_id is not None:
            token = publisher.watermark
            async with runtime.db.read() as conn:
                missed = await push_state.changed_since(conn, principal.accounts, last_id, token, types)
            if missed or push_state.decode(last_id) is None:
                await response.write(sse_event("state", push_state.state_change(missed, push_state.encode(token)),
                                               push_state.encode(token)))
                if closeafter == "state":
                    return response
        last_write = time.monotonic()
        while not stream.closed:
            wait = None if not ping else max(0.0, ping - (time.monotonic() - last_write))
            try:
                async with asyncio.timeout(wait):
                    changed = await sub.next()
            except TimeoutError:
                await response.write(sse_event("ping", {"interval": ping}))
                last_write = time.monotonic()
                continue
            if stream.closed:
                break
            token = push_state.encode(publisher.watermark)
            await response.write(sse_event("state", push_state.state_change(changed, token), token))
            last_write = time.monotonic()
            if closeafter == "state":
                break
    except ConnectionResetError:
        pass   # the client went away
    finally:
        sub.close()
        supervisor.discard(stream)
    return response
