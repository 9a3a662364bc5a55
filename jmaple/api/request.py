"""POST /jmap/api (RFC 8620 §3): authenticate, bound, parse, dispatch, serialise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import hdrs, web

from jmaple.api.http import GZIP_OFFLOAD_MIN, encoded_reply, encoded_response, read_body
from jmaple.core.errors import RequestError
from jmaple.keys import CONFIG, DISPATCHER, LIMITER, principal_of


def parse_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError("notJSON", 400, f"the body is not valid I-JSON: {exc}") from None


def make_api(app: web.Application) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The POST /jmap/api handler of app; the parts it uses are looked up once (lifespan makes them)."""
    parts: tuple[Any, ...] | None = None

    async def api(request: web.Request) -> web.StreamResponse:
        nonlocal parts
        if parts is None:
            parts = (app[CONFIG].limits, app[LIMITER], app[DISPATCHER])
        limits, limiter, dispatcher = parts
        principal = principal_of(request)
        # RFC 8620 §3.6.1: a content type other than application/json is notJSON. (The usual header as
        # it is first: parsing it costs every request.)
        if request.headers.get(hdrs.CONTENT_TYPE) != "application/json" \
                and request.content_type != "application/json":
            raise RequestError("notJSON", 400, "the request's Content-Type must be application/json")
        raw = await read_body(request, limits.max_size_request, "maxSizeRequest")
        body = parse_json(raw)
        # No value nests deeper than the body has brackets: most requests need no walk of their arguments.
        depth = raw.count(b"[") + raw.count(b"{")
        slot = (principal.user_id, "maxConcurrentRequests")
        limiter.take(slot, limits.max_concurrent_requests)
        try:
            response = await dispatcher.handle(principal, body, max_depth=depth)
        finally:
            limiter.give_back(slot)
        data = orjson.dumps(response)
        if len(data) < GZIP_OFFLOAD_MIN:   # most answers: at once, without another coroutine
            return encoded_response(request, data)
        return await encoded_reply(request, data)

    return api
