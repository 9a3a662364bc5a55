"""HTTP plumbing shared by the transports: JSON and problem responses, bounded bodies, the front wrapper."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import sys
import time as _time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

from jmaple.config import ServerConfig
from jmaple.core.errors import RequestError
from jmaple.store.db import Busy

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BUSY_RETRY_AFTER = "2"        # seconds a client is asked to wait when the database stayed locked
GZIP_MIN = 1024               # smaller JSON bodies are sent as they are
GZIP_FAST_MIN = 64 * 1024     # from here on gzip level 1 (~2x faster than 6 on JSON, ~10% larger)
GZIP_OFFLOAD_MIN = 64 * 1024  # from here on encoded_reply compresses on a worker thread


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding value allows gzip (by name or "*"), honouring q=0 (RFC 9110 §12.5.3)."""
    allowed: dict[str, bool] = {}
    for item in header.lower().split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip", "*"):
            allowed[coding] = q > 0
    if "gzip" in allowed or "x-gzip" in allowed:
        return allowed.get("gzip", False) or allowed.get("x-gzip", False)
    return allowed.get("*", False)


def _gzip_wanted(request: web.Request, data: bytes) -> bool | None:
    """None: too small to be worth compressing; else whether the client accepts gzip."""
    if len(data) < GZIP_MIN:
        return None
    return accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))


def _gzip(data: bytes) -> bytes:
    # Level 6 costs twice level 1 for a few per cent less: worth it only while it takes little time.
    return zlib.compress(data, 6 if len(data) < GZIP_FAST_MIN else 1, wbits=31)


def _json(data: bytes, status: int, gzip: bool | None) -> web.Response:
    response = web.Response(body=data, status=status, content_type="application/json")
    if gzip is not None:
        response.headers[hdrs.VARY] = hdrs.ACCEPT_ENCODING
        if gzip:
            response.headers[hdrs.CONTENT_ENCODING] = "gzip"
    return response


def encoded_response(request: web.Request, data: bytes, status: int = 200) -> web.Response:
    """JSON already encoded, gzip-compressed when the client accepts it and it is worth it.

    It compresses on the event loop: for bodies under GZIP_OFFLOAD_MIN; encoded_reply takes any size.
    """
    gzip = _gzip_wanted(request, data)
    return _json(_gzip(data) if gzip else data, status, gzip)


def json_response(request: web.Request, body: Any, status: int = 200) -> web.Response:
    """encoded_response of body, orjson-encoded."""
    return encoded_response(request, orjson.dumps(body), status)


async def encoded_reply(request: web.Request, data: bytes, status: int = 200) -> web.Response:
    """encoded_response for bodies of any size: a large one is compressed on a worker thread (zlib lets
    go of the GIL), so the event loop keeps serving other requests meanwhile."""
    if len(data) < GZIP_OFFLOAD_MIN or not _gzip_wanted(request, data):
        return encoded_response(request, data, status)
    return _json(await asyncio.get_running_loop().run_in_executor(None, _gzip, data), status, True)


def problem(status: int, type: str, detail: str, **extra: Any) -> web.Response:
    """An RFC 7807 problem details response."""
    body = {"type": type, "status": status, "detail": detail, **extra}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/problem+json")


async def read_body(request: web.Request, limit: int, limit_name: str) -> bytes:
    """The whole body, refused as soon as it passes `limit` bytes (a request-level limit error)."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise RequestError("limit", 400, f"the body is larger than {limit_name} ({limit} bytes)",
                               limit=limit_name)
        if hdrs.CONTENT_ENCODING not in request.headers:
            return await request.read()   # the usual case: one read of a known, acceptable length
    chunks = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise RequestError("limit", 400, f"the body is larger than {limit_name} ({limit} bytes)",
                               limit=limit_name)
        chunks.append(chunk)
    return b"".join(chunks)


class Limiter:
    """Per-user counters of requests and uploads in progress; over the limit the answer is immediate."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def in_progress(self, user_id: str, limit_name: str) -> int:
        """How many slots of limit_name the user holds right now."""
        return self._counts.get((user_id, limit_name), 0)

    def slot(self, user_id: str, limit_name: str, limit: int) -> contextlib.AbstractContextManager[None]:
        """Hold one of `limit` slots while inside; entering over the limit raises RequestError("limit")."""
        return _Slot(self, (user_id, limit_name), limit)

    def take(self, key: tuple[str, str], limit: int) -> None:
        """Take one of `limit` slots of key (user id, limit name), or raise RequestError("limit"); give
        it back with give_back(key). slot() is the same as a context manager."""
        count = self._counts.get(key, 0)
        if count >= limit:
            raise RequestError("limit", 400, f"already {count} in progress; {key[1]} is {limit}", limit=key[1])
        self._counts[key] = count + 1

    def give_back(self, key: tuple[str, str]) -> None:
        left = self._counts[key] - 1
        if left:
            self._counts[key] = left
        else:
            del self._counts[key]


class _Slot:
    """Limiter.slot()."""

    __slots__ = ("_limiter", "_key", "_limit")

    def __init__(self, limiter: Limiter, key: tuple[str, str], limit: int):
        self._limiter = limiter
        self._key = key
        self._limit = limit

    def __enter__(self) -> None:
        self._limiter.take(self._key, self._limit)

    def __exit__(self, *exc_info: object) -> None:
        self._limiter.give_back(self._key)


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Exact origins, "*", or a port wildcard such as http://localhost:*."""
    for pattern in allowed:
        if pattern == "*" or pattern == origin:
            return True
        if pattern.endswith(":*") and re.fullmatch(re.escape(pattern[:-2]) + r"(:\d{1,5})?", origin):
            return True
    return False


Gate = Callable[[web.Request], "Awaitable[web.StreamResponse | None] | None"]


def front(server: ServerConfig, gate: Gate) -> Callable[[Handler], Handler]:
    """The wrapper every route's handler gets: CORS, problem responses and authentication.

    A wrapper rather than aiohttp middlewares: each middleware layer costs every request, and every
    path (the unknown ones included, see add_routes) has a route. In order, outermost first:
    - CORS for browser clients: a preflight is answered without credentials, allowed origins echoed;
    - problems: RequestError -> problem+json; aiohttp's own HTTP errors keep their status; a database
      busy past its timeout is 503 with Retry-After; anything else is a logged 500;
    - `gate` (auth.auth_gate): None once the request carries its Principal, else an awaitable of None
      or of the 401 to send.
    """
    allowed = server.cors_origins

    def wrap(handler: Handler) -> Handler:
        async def fronted(request: web.Request) -> web.StreamResponse:
            origin = request.headers.get(hdrs.ORIGIN)
            cors = origin is not None and bool(allowed) and origin_allowed(origin, allowed)
            if request.method == "OPTIONS":
                return _preflight(request, origin if cors else None)
            try:
                pending = gate(request)
                refused = None if pending is None else await pending
                response = await handler(request) if refused is None else refused
            except RequestError as exc:
                response = problem(exc.status, exc.type, exc.detail, **exc.extra)
            except web.HTTPException as exc:
                if exc.status < 400 or exc.content_type == "application/problem+json":
                    if cors and not exc.prepared:
                        _cors_headers(exc, origin)
                    raise
                response = problem(exc.status, "about:blank", exc.reason, title=exc.reason)
                if hdrs.ALLOW in exc.headers:
                    response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
            except Busy:
                # Another process held the database past [storage] busy_timeout: a condition, not a bug,
                # so the client is told to come back and nothing is logged with a traceback.
                log.warning("%s %s: database busy", request.method, request.path)
                response = problem(503, "about:blank", "the database is busy; try again shortly",
                                   title="Service Unavailable")
                response.headers[hdrs.RETRY_AFTER] = BUSY_RETRY_AFTER
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.path)
                response = problem(500, "about:blank", "an internal error occurred; it has been logged")
            if cors and not response.prepared:
                _cors_headers(response, origin)
            return response

        return fronted

    return wrap


def _preflight(request: web.Request, origin: str | None) -> web.Response:
    """A CORS preflight (OPTIONS): answered without credentials; an allowed origin is echoed."""
    response = web.Response(status=204, headers={"Vary": "Origin"})
    if origin is not None:
        response.headers.update({
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type, Accept, Last-Event-ID"),
            "Access-Control-Max-Age": "86400",
        })
    return response


def _cors_headers(response: web.StreamResponse, origin: str | None) -> None:
    assert origin is not None
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = "Content-Disposition, Content-Length, WWW-Authenticate"
    response.headers.add("Vary", "Origin")


class _Lines:
    """The access log's buffer, one per process (aiohttp makes an AccessLogger per connection)."""

    def __init__(self) -> None:
        self.lines: list[tuple[Any, ...]] = []
        self.scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._second = -1
        self._stamp = ""
        # Under systemd the journal stamps each line itself.
        self.timestamps = not os.environ.get("JOURNAL_STREAM")
        atexit.register(self.flush)

    def schedule(self) -> None:
        self.scheduled = True
        self.loop = asyncio.get_running_loop()
        self.loop.call_later(AccessLogger.FLUSH_SECONDS, self.flush)

    def _stamp_of(self, second: int) -> str:
        if not self.timestamps:
            return ""
        if second != self._second:
            self._second = second
            self._stamp = _time.strftime("%Y-%m-%d %H:%M:%S ", _time.localtime(second))
        return self._stamp

    def flush(self) -> None:
        self.scheduled = False
        if self.lines:
            text = "".join(["%saccess %s %s %s %d %d %.1fms\n" % (self._stamp_of(line[0]), *line[1:])
                            for line in self.lines])
            self.lines.clear()
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(text)
                sys.stderr.flush()


_LINES: _Lines | None = None


class AccessLogger(AbstractAccessLogger):
    """One short line per request on stderr, written in batches.

    The path is logged as the client sent it (percent-escapes kept, so a "%0A" cannot start a line of
    its own) and without its query string, so a ?ticket= never reaches a log; credentials live only in
    headers, which are not logged. Lines are buffered and written at most every FLUSH_SECONDS (or every
    FLUSH_LINES lines), formatted together: Python's logging costs a record, a format and a write per
    request, a quarter of a small request's whole cost.
    """

    FLUSH_SECONDS = 0.5
    FLUSH_LINES = 256

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        global _LINES
        if _LINES is None:
            _LINES = _Lines()
        elif _LINES.scheduled and _LINES.loop is not None and _LINES.loop.is_closed():
            _LINES.flush()   # the loop that was to flush is gone (a process may run one after another)
        self._out = _LINES

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        out = self._out
        lines = out.lines
        # The fields only: they are formatted together at the flush.
        lines.append((int(_time.time()) if out.timestamps else 0, request.remote, request.method,
                      request.raw_path.partition("?")[0], response.status, response.body_length, time * 1000))
        if len(lines) >= self.FLUSH_LINES:
            out.flush()
        elif not out.scheduled:
            out.schedule()

    def flush(self) -> None:
        self._out.flush()

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
