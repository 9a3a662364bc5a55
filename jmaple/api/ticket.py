"""POST /jmap/ticket: short-lived tickets for browsers, which cannot set Authorization on EventSource/WebSocket."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
from aiohttp import web

from jmaple.api.http import json_response, problem, read_body
from jmaple.keys import AUTH_HEADER, TICKETS, principal_of

ENDPOINTS = {"eventsource": "/jmap/eventsource", "websocket": "/jmap/ws"}
# A ticket opens its first connection within FIRST_USE_SECONDS of being issued; that stream's automatic
# reconnects may reuse it for RECONNECT_SECONDS after that first use. Both windows are fixed, never
# extended by a use: a ticket lives FIRST_USE_SECONDS + RECONNECT_SECONDS at most, however often it is
# used (a use that restarted the window would let a leaked ticket live for ever).
FIRST_USE_SECONDS = 60.0
RECONNECT_SECONDS = 300.0
MAX_TICKETS = 100_000
# Live tickets one user may hold (a browser asks for one per tab and stream). The cap bounds what a single
# user can make this process keep: past it, issuing one drops that user's oldest, whose stream (if any) then
# needs a fresh ticket at its next reconnect. Dropping rather than refusing keeps a new tab working.
MAX_TICKETS_PER_USER = 32
MAX_BODY = 1024               # bytes of a ticket request's body


@dataclass
class Ticket:
    header: str          # the credentials it stands for, kept only in memory
    path: str
    issued: float
    first_used: float | None = None

    def valid(self, now: float) -> bool:
        if self.first_used is None:
            return now - self.issued < FIRST_USE_SECONDS
        return now - self.first_used < RECONNECT_SECONDS


class Tickets:
    """The tickets issued by this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._tickets: dict[str, Ticket] = {}
        self._owned: dict[str, list[str]] = {}   # owner -> its tokens, oldest first (some maybe gone)

    def issue(self, header: str, path: str, owner: str | None = None) -> tuple[str, float]:
        """A new ticket for `header` on `path`, and how long it waits for its first use.

        `owner` (the user id; the header itself when not given) holds at most MAX_TICKETS_PER_USER live
        tickets: beyond that, its oldest is dropped.
        """
        now = self.clock()
        if len(self._tickets) >= MAX_TICKETS:
            self._tickets = {k: t for k, t in self._tickets.items() if t.valid(now)}
            self._owned = {o: live for o, tokens in self._owned.items()
                           if (live := [k for k in tokens if k in self._tickets])}
        owner = header if owner is None else owner
        owned = self._owned.setdefault(owner, [])
        live = []
        for k in owned:
            found = self._tickets.get(k)
            if found is not None and found.valid(now):
                live.append(k)
            elif found is not None:
                del self._tickets[k]
        while len(live) >= MAX_TICKETS_PER_USER:
            del self._tickets[live.pop(0)]
        token = secrets.token_urlsafe(24)
        self._tickets[token] = Ticket(header, path, now)
        live.append(token)
        self._owned[owner] = live
        return token, FIRST_USE_SECONDS

    def redeem(self, token: str, path: str) -> str | None:
        """The credentials behind a ticket valid for this endpoint, or None."""
        ticket = self._tickets.get(token)
        now = self.clock()
        if ticket is None or ticket.path != path:
            return None
        if not ticket.valid(now):
            del self._tickets[token]
            return None
        if ticket.first_used is None:
            ticket.first_used = now
        return ticket.header


async def ticket(request: web.Request) -> web.StreamResponse:
    """Issue a ticket bound to the caller's credentials and one endpoint ("eventsource" or "websocket").

    The endpoint comes from `?endpoint=` or a JSON object body `{"endpoint": ...}` (other keys ignored).
    """
    endpoint: object = request.query.get("endpoint")
    if endpoint is None and request.can_read_body:
        try:
            body = orjson.loads(await read_body(request, MAX_BODY, "maxSizeRequest") or b"{}")
        except orjson.JSONDecodeError:
            return problem(400, "urn:ietf:params:jmap:error:notJSON", "the body must be JSON")
        if not isinstance(body, dict):
            return problem(400, "about:blank", 'the body must be a JSON object such as {"endpoint": "eventsource"}')
        endpoint = body.get("endpoint")
    # Anything but one of the names (a list or an object too, which cannot even be looked up) is refused.
    if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
        return problem(400, "about:blank", 'endpoint must be "eventsource" or "websocket"')
    token, lifetime = request.app[TICKETS].issue(request[AUTH_HEADER], ENDPOINTS[endpoint],
                                                 owner=principal_of(request).user_id)
    expires = datetime.fromtimestamp(time.time() + lifetime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = json_response(request, {"ticket": token, "expires": expires, "endpoint": endpoint})
    response.headers["Cache-Control"] = "no-store"
    return response
